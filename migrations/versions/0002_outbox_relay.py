"""Outbox relay: outbox_claim, outbox_complete, outbox_requeue_dead, outbox_stats.

Revision ID: 0002_outbox_relay
Revises: 0001_foundation
"""

from migrations.sqlfiles import apply

revision = "0002_outbox_relay"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

# file name -> sha256 at the time this revision was written (see tests/test_migrations.py)
SQL_FILES: dict[str, str] = {
    "outbox.sql": "bfbe74a9e2abaab62077018d1c40dd68613809eb22c97847694ae9cab2f3fb6c"
}
DOWNGRADE_SQL_FILES: dict[str, str] = {
    "downgrade_outbox.sql": "6646003acbea4a08d476a0353be72e88d4a627dbb43870a0841408dd9e9a27f4"
}


def upgrade() -> None:
    apply(*SQL_FILES)


def downgrade() -> None:
    apply(*DOWNGRADE_SQL_FILES)
