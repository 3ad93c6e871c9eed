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
    "projection.sql": "0f38736986ec3e30474b40265d337a85f33720643057978b8a8d0f6a7ae6763b"
}
DOWNGRADE_SQL_FILES: dict[str, str] = {
    "downgrade_projection.sql": "b057acaafb4f4b72261ec24c5ed0d67ad6d34f089e43a7c52e766ab8278d58cf"
}


def upgrade() -> None:
    apply(*SQL_FILES)


def downgrade() -> None:
    apply(*DOWNGRADE_SQL_FILES)
