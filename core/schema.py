"""The schema revision this package was built for, and the start-up check every role runs."""

from __future__ import annotations

import functools
import logging

import psycopg

from core.paths import MIGRATIONS_DIR

log = logging.getLogger(__name__)
EXIT_SCHEMA_MISMATCH = 3


class SchemaMismatch(RuntimeError):
    def __init__(self, database: str | None, package: str) -> None:
        super().__init__(
            f"schema_revision_mismatch: database is at {database or 'no revision'}, "
            f"this package needs {package}; run `noetl-server migrate`"
        )
        self.database = database
        self.package = package


@functools.cache
def package_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    heads = ScriptDirectory.from_config(config).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {heads}")
    return heads[0]


def database_revision(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT to_regclass('noetl.alembic_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute("SELECT version_num FROM noetl.alembic_version").fetchone()
    return found[0] if found else None


async def database_revision_async(conn: psycopg.AsyncConnection) -> str | None:
    cur = await conn.execute("SELECT to_regclass('noetl.alembic_version') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute("SELECT version_num FROM noetl.alembic_version")
    found = await cur.fetchone()
    return found[0] if found else None


def check_schema(url: str) -> str:
    """Raise SchemaMismatch unless the database is at the package's revision."""
    with psycopg.connect(url, connect_timeout=10) as conn:
        found = database_revision(conn)
    expected = package_revision()
    if found != expected:
        raise SchemaMismatch(found, expected)
    return found
