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
    "ids.sql": "115e0245da9c05bc76f8cac9778308b1b4544e3fc1f6a691631dd60edd3fd4cd",
    "tables.sql": "af6869cf1ad3d50ecbacc5f72843a35c761f179b10e2d5b36f186dbfffefc383",
    "histogram.sql": "e174a4ee704e65004a7c899cff3dea6f1112904d44ff5905c677dcf9a15c8ab0",
    "catalog.sql": "d15bef00c91d03450e2d658f454c61dda5533595f262d7c437a40c87d4dfb828",
    "events.sql": "238124186511126fda116c9d7a777e842047f13c88ce10a405b2f5f258368aca",
    "execution.sql": "3fb7d31950e40006a27f656e732fb4a8b3dfdad86c8e4352ac42c8d1955ebb0f",
    "partitions.sql": "142eee62a7b40505e4bfa6bec64aff650356d4320fcafa1b7be2f7020d96ab96",
    "views.sql": "7e45b0d7ca1ac110e155871aad2f3d32969c7b8d3fa50e1ea436af0e2bae737d",
}


def upgrade() -> None:
    apply(*SQL_FILES)


DOWNGRADE_SQL_FILES: dict[str, str] = {
    "downgrade_foundation.sql": "12c252188a3d759963bbfd8d3768223410c941b2e101d2b748b4a06c3f0ced6c"
}


def downgrade() -> None:
    apply(*DOWNGRADE_SQL_FILES)
