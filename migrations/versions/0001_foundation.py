"""Foundation: ids, tables, catalog, event append and outbox triggers, partitions, views.

Revision ID: 0001_foundation
Revises:
"""

from migrations.sqlfiles import apply

revision = "0001_foundation"
down_revision = None
branch_labels = None
depends_on = None

# file name -> sha256 at the time this revision was written (see tests/test_migrations.py)
SQL_FILES: dict[str, str] = {
    "ids.sql": "",
    "tables.sql": "",
    "histogram.sql": "",
    "catalog.sql": "",
    "events.sql": "",
    "execution.sql": "",
    "partitions.sql": "",
    "views.sql": "",
}


def upgrade() -> None:
    apply(*SQL_FILES)


DOWNGRADE_SQL_FILES: dict[str, str] = {"downgrade_foundation.sql": ""}


def downgrade() -> None:
    apply(*DOWNGRADE_SQL_FILES)
