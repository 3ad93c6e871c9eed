"""Migrations: upgrade/downgrade/upgrade, the schema snapshot, and sql/ frozen per revision."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
from pathlib import Path

import psycopg

from core.embedded import pg_binary
from core.migrate import downgrade, upgrade
from core.paths import MIGRATIONS_DIR, SQL_DIR
from core.schema import database_revision, package_revision
from migrations.sqlfiles import file_sha256

SNAPSHOT = Path(__file__).parent / "schema_snapshot.sql"
# monthly partitions depend on the day the schema was built, so they stay out of the snapshot
_MONTHLY = re.compile(r"event_\d{4}_\d{2}")


def _noetl_objects(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            """SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'noetl' AND c.relname NOT LIKE 'alembic_version%%')
                    + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                       WHERE n.nspname = 'noetl')"""
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    created = _noetl_objects(empty_db_url)
    assert created > 20
    downgrade(empty_db_url, "base")
    assert _noetl_objects(empty_db_url) == 0
    with psycopg.connect(empty_db_url) as conn:
        assert database_revision(conn) is None
    upgrade(empty_db_url)
    assert _noetl_objects(empty_db_url) == created
    with psycopg.connect(empty_db_url) as conn:
        assert database_revision(conn) == package_revision()


def normalised_schema(url: str) -> str:
    dump = subprocess.run(
        [
            pg_binary("pg_dump"),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--schema=noetl",
            "--dbname",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    statements = []
    for block in re.split(r"\n\n+", dump):
        lines = [
            line
            for line in block.splitlines()
            if line.strip()
            and not line.startswith(
                ("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict")
            )
        ]
        text = "\n".join(lines)
        if text and not _MONTHLY.search(text):
            statements.append(text)
    return "\n\n".join(statements) + "\n"


def test_schema_matches_snapshot(db_url: str) -> None:
    actual = normalised_schema(db_url)
    if os.environ.get("UPDATE_SCHEMA_SNAPSHOT") == "1":
        SNAPSHOT.write_text(actual)
    assert SNAPSHOT.exists(), "run with UPDATE_SCHEMA_SNAPSHOT=1 once to create the snapshot"
    assert actual == SNAPSHOT.read_text(), (
        "the migrated schema differs from tests/schema_snapshot.sql: add a revision for the "
        "change, then refresh the snapshot with UPDATE_SCHEMA_SNAPSHOT=1"
    )


def _revisions() -> list:
    modules = []
    for path in sorted((MIGRATIONS_DIR / "versions").glob("[0-9]*.py")):
        modules.append(importlib.import_module(f"migrations.versions.{path.stem}"))
    return modules


def test_sql_files_are_frozen_by_their_latest_revision() -> None:
    latest: dict[str, tuple[str, str]] = {}
    for module in _revisions():
        recorded = {**module.SQL_FILES, **getattr(module, "DOWNGRADE_SQL_FILES", {})}
        for name, sha in recorded.items():
            latest[name] = (module.revision, sha)
    on_disk = {path.name for path in SQL_DIR.glob("*.sql")}
    assert on_disk == set(latest), "every sql/ file must be applied by a revision"
    changed = [
        f"{name} (last applied by {rev})"
        for name, (rev, sha) in sorted(latest.items())
        if file_sha256(name) != sha
    ]
    assert not changed, (
        "sql/ files changed without a new revision: "
        + ", ".join(changed)
        + ". Add a revision that applies them and records their sha256."
    )
