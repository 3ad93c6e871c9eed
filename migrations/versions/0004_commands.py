"""Commands: issue, claim, apply worker events, re-notify, cancel and finalize executions.

Revision ID: 0004_commands
Revises: 0003_projection
"""

from migrations.sqlfiles import apply

revision = "0004_commands"
down_revision = "0003_projection"
branch_labels = None
depends_on = None

# file name -> sha256 at the time this revision was written (see tests/test_migrations.py)
SQL_FILES: dict[str, str] = {
    "commands.sql": "6b4c4ae814d4c8c60843dc3b1df937cee6c05a59602c43dd43c76c5b5c817f0d"
}
DOWNGRADE_SQL_FILES: dict[str, str] = {
    "downgrade_commands.sql": "00dc1f2395ed3e9c19d00af5c11ebceadb3b8f81b2280bea01dfbb5b8c790000"
}


def upgrade() -> None:
    apply(*SQL_FILES)


def downgrade() -> None:
    apply(*DOWNGRADE_SQL_FILES)
