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
    "outbox.sql": "b4213ed9cf2233f281cfc165084a654993e5f24bcfc2fb7082b0ce46459e9ecc"
}
DOWNGRADE_SQL_FILES: dict[str, str] = {
    "downgrade_outbox.sql": "c8de474391a8f7bcee062e8b1de8cc714d1d22d4fd737109a47dba3c138f6995"
}


def upgrade() -> None:
    apply(*SQL_FILES)


def downgrade() -> None:
    apply(*DOWNGRADE_SQL_FILES)
