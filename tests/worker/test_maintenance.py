"""System playbooks: registered by `migrate` (cli/system_playbooks.py) with their credential,
and started by the maintenance lease holder (app/maintenance.py) every interval unless the
previous run is open, on the system pool, with the settings as workload."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from app.crypto import Sealer
from app.maintenance import Maintenance, system_workloads
from app.state import State
from cli.system_playbooks import (
    SYSTEM_CREDENTIAL,
    register_document,
    register_system_playbooks,
)
from core.paths import SYSTEM_PLAYBOOKS_DIR
from core.settings import Settings

KEY = base64.b64encode(b"m" * 32).decode()
OTHER_KEY = base64.b64encode(b"o" * 32).decode()
PATHS = ["system/cleanup", "system/finalize_abandoned", "system/partitions"]


def settings_for(db_url: str, tmp_path: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "database_url": db_url,
        "encryption_key": KEY,
        "data_dir": str(tmp_path),
        "db_pool_max": 2,
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


def credential_row(conn: psycopg.Connection) -> dict | None:
    return conn.execute(
        "SELECT name, type, data_encrypted FROM noetl.credential WHERE name = %s",
        (SYSTEM_CREDENTIAL,),
    ).fetchone()


def versions(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute(
        "SELECT path, max(version) AS v FROM noetl.catalog WHERE path LIKE 'system/%%' GROUP BY 1"
    ).fetchall()
    return {r["path"]: r["v"] for r in rows}


def test_migrate_registers_system_playbooks_and_credential_once(
    db_url: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    settings = settings_for(db_url, tmp_path)
    first = register_system_playbooks(db_url, settings)
    assert sorted(r.path for r in first) == PATHS and all(r.changed for r in first)
    assert versions(conn) == dict.fromkeys(PATHS, 1)
    row = credential_row(conn)
    assert row is not None and row["type"] == "postgres"
    data, legacy = Sealer(base64.b64decode(KEY), "v1").open(row["data_encrypted"])
    assert data == {"dsn": db_url} and not legacy

    again = register_system_playbooks(db_url, settings)  # an unchanged file: no new version
    assert not any(r.changed for r in again)
    assert versions(conn) == dict.fromkeys(PATHS, 1)
    assert credential_row(conn)["data_encrypted"] == row["data_encrypted"]  # left as it was

    text = (SYSTEM_PLAYBOOKS_DIR / "cleanup.yaml").read_text() + "\n# changed\n"
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        changed = register_document(c, text, settings.catalog_max_content_bytes)
    assert (changed.path, changed.version, changed.changed) == ("system/cleanup", 2, True)


def test_migrate_without_a_key_registers_the_playbooks_only(
    db_url: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    settings = settings_for(db_url, tmp_path, encryption_key=None, allow_insecure_default_key=False)
    register_system_playbooks(db_url, settings)
    assert versions(conn) == dict.fromkeys(PATHS, 1)
    assert credential_row(conn) is None


def test_system_playbooks_are_valid_and_target_the_system_pool() -> None:
    from engine.validate import validate_playbook

    for path in sorted(SYSTEM_PLAYBOOKS_DIR.glob("*.yaml")):
        document, problems = validate_playbook(path.read_text())
        assert problems == [], path
        assert document["executor"]["pool"] == "system"
        workload_keys = set(system_workloads(Settings())[document["metadata"]["path"]])
        assert set(document["workload"]) == workload_keys, path


@pytest.fixture
async def state(db_url: str, tmp_path: Path) -> AsyncIterator[State]:
    register_system_playbooks(db_url, settings_for(db_url, tmp_path))
    settings = settings_for(
        db_url,
        tmp_path,
        system_playbook_interval_seconds=3600,
        event_partition_months_ahead=5,
        system_playbook_dead_letter_days=7,
        system_playbook_abandoned_seconds=600,
    )
    built = State.build(settings)
    await built.db.open()
    try:
        yield built
    finally:
        await built.db.close()


def _runs(conn: psycopg.Connection) -> list[dict]:
    return conn.execute(
        "SELECT c.path, x.execution_id, x.status, x.pool FROM noetl.execution x"
        "  JOIN noetl.catalog c USING (catalog_id) WHERE c.path LIKE 'system/%%'"
        " ORDER BY x.execution_id"
    ).fetchall()


async def test_the_lease_holder_starts_each_playbook_once_per_interval(
    state: State, conn: psycopg.Connection
) -> None:
    holder = Maintenance.from_state(state)
    started = await holder.run_once()
    assert started is not None and len(started) == 3
    runs = _runs(conn)
    assert sorted(r["path"] for r in runs) == PATHS
    assert {r["pool"] for r in runs} == {"system"}
    workloads = {
        r["path"]: r["context"]["workload"]
        for r in conn.execute(
            "SELECT c.path, e.context FROM noetl.event e JOIN noetl.catalog c USING (catalog_id)"
            " WHERE e.event_type = 'playbook.started' AND c.path LIKE 'system/%%'"
        ).fetchall()
    }
    assert workloads["system/partitions"] == {"months_ahead": 5, "retention_days": 0}
    assert workloads["system/cleanup"] == {"dead_letter_days": 7}
    assert workloads["system/finalize_abandoned"] == {"abandoned_seconds": 600}

    # another server process does nothing while this one holds the lease
    other = Maintenance(state.db, holder.executions, state.sealer, state.settings, "other-holder")
    assert await other.run_once() is None

    # still open: skipped; finished but started within the interval: skipped too
    assert await holder.run_once() == []
    conn.execute("UPDATE noetl.execution SET status = 'COMPLETED' WHERE status = 'RUNNING'")
    assert await holder.run_once() == []
    # an interval later (the runs moved an hour back), due again
    conn.execute("UPDATE noetl.execution SET start_time = start_time - interval '2 hours'")
    assert len(await holder.run_once() or []) == 3
    assert len(_runs(conn)) == 6


async def test_the_system_credential_is_resealed_when_it_does_not_open(
    state: State, conn: psycopg.Connection
) -> None:
    holder = Maintenance.from_state(state)
    foreign = Sealer(base64.b64decode(OTHER_KEY), "v1").seal({"dsn": "postgresql://elsewhere/x"})
    conn.execute(
        "UPDATE noetl.credential SET data_encrypted = %s WHERE name = %s",
        (foreign, SYSTEM_CREDENTIAL),
    )
    await holder.ensure_credential()
    data, _ = state.sealer.open(credential_row(conn)["data_encrypted"])
    assert data == {"dsn": state.settings.database_url}

    # one that opens is the operator's choice: never overwritten
    chosen = state.sealer.seal({"dsn": "postgresql://maintenance_role@db/noetl"})
    conn.execute(
        "UPDATE noetl.credential SET data_encrypted = %s WHERE name = %s",
        (chosen, SYSTEM_CREDENTIAL),
    )
    await holder.ensure_credential()
    assert credential_row(conn)["data_encrypted"] == chosen

    conn.execute("DELETE FROM noetl.credential WHERE name = %s", (SYSTEM_CREDENTIAL,))
    await holder.ensure_credential()
    assert credential_row(conn) is not None


async def test_without_system_playbooks_the_loop_does_nothing(
    db_url: str, tmp_path: Path, conn: psycopg.Connection
) -> None:
    built = State.build(settings_for(db_url, tmp_path))
    await built.db.open()
    try:
        assert await Maintenance.from_state(built).run_once() == []
    finally:
        await built.db.close()
    assert _runs(conn) == []
    assert credential_row(conn) is None  # nothing to run: no credential written either
