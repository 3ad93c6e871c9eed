"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from migrations.sqlfiles import apply

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None

# file name -> sha256 at the time this revision was written (see tests/test_migrations.py)
SQL_FILES: dict[str, str] = {}


def upgrade() -> None:
    apply(*SQL_FILES)


DOWNGRADE_SQL_FILES: dict[str, str] = {}


def downgrade() -> None:
    apply(*DOWNGRADE_SQL_FILES)
