"""Projection: project_events, read-model folds, playbook_report.

Revision ID: 0003_projection
Revises: 0002_outbox_relay
"""

from migrations.sqlfiles import apply

revision = "0003_projection"
down_revision = "0002_outbox_relay"
branch_labels = None
depends_on = None

# file name -> sha256 at the time this revision was written (see tests/test_migrations.py)
SQL_FILES: dict[str, str] = {
    "projection.sql": "7f87ef458ebabc8eedb98c49e2400b201979897275417571dce74b96ffcca64c"
}
DOWNGRADE_SQL_FILES: dict[str, str] = {
    "downgrade_projection.sql": "06fcac1e62bc5488d30689208886c902346e4996aff10ba4223b222ebab490d7"
}


def upgrade() -> None:
    apply(*SQL_FILES)


def downgrade() -> None:
    apply(*DOWNGRADE_SQL_FILES)
