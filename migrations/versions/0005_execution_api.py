"""Execution API: event ingest, engine decisions, execute, event batches, execute dedup.

Revision ID: 0005_execution_api
Revises: 0004_commands
"""

from migrations.sqlfiles import apply

revision = "0005_execution_api"
down_revision = "0004_commands"
branch_labels = None
depends_on = None

# file name -> sha256 at the time this revision was written (see tests/test_migrations.py)
SQL_FILES: dict[str, str] = {
    "execution_api.sql": "5275d09459699e22f397f3d1148d84769b8fc073c7e084331362dac9b325dc2b"
}
DOWNGRADE_SQL_FILES: dict[str, str] = {
    "downgrade_execution_api.sql": "d057a21aacc28c31ff4441e974206a0d88bb027c8d91047887946b3519f1cc67"
}


def upgrade() -> None:
    apply(*SQL_FILES)


def downgrade() -> None:
    apply(*DOWNGRADE_SQL_FILES)
