"""Catalog functions (envelope.md §4.1): versioning under concurrency and archive semantics."""

from __future__ import annotations

import json
import threading

import psycopg
from psycopg.types.json import Jsonb

REGISTER = "SELECT * FROM noetl.catalog_register(%s, %s, %s, %s, %s, %s)"


def _register(conn: psycopg.Connection, path: str, kind: str = "playbook") -> dict:
    return conn.execute(
        REGISTER, (path, kind, "name: x\n", Jsonb({"name": "x"}), None, Jsonb({"by": "test"}))
    ).fetchone()


def test_concurrent_registers_get_consecutive_versions(db_url: str) -> None:
    threads = 20
    barrier = threading.Barrier(threads)
    versions: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def register() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                barrier.wait(timeout=30)
                row = c.execute(
                    REGISTER, ("race/path", "playbook", "a: 1\n", Jsonb({"a": 1}), None, None)
                ).fetchone()
                with lock:
                    versions.append(row[1])
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=register) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    assert sorted(versions) == list(range(1, threads + 1))

    with psycopg.connect(db_url) as c:
        stored = [
            r[0]
            for r in c.execute(
                "SELECT version FROM noetl.catalog WHERE path = 'race/path' ORDER BY version"
            )
        ]
    assert stored == list(range(1, threads + 1))


def test_register_adds_unknown_kind_and_notifies(conn: psycopg.Connection, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN noetl_catalog")
        row = _register(conn, "tools/thing", kind="widget")
        assert row["version"] == 1
        notes = list(listener.notifies(timeout=2.0, stop_after=1))
    assert [json.loads(n.payload) for n in notes] == [{"path": "tools/thing"}]
    kinds = {r["name"] for r in conn.execute("SELECT name FROM noetl.resource")}
    assert {"playbook", "agent", "credential", "mcp", "memory", "subscription", "widget"} <= kinds


def test_latest_version_archive_restore(conn: psycopg.Connection) -> None:
    ids = [_register(conn, "demo/flow")["catalog_id"] for _ in range(3)]

    def latest() -> int | None:
        row = conn.execute(
            "SELECT version FROM noetl.catalog_latest(%s)", ("demo/flow",)
        ).fetchone()
        return row["version"] if row else None

    assert latest() == 3
    assert conn.execute("SELECT noetl.catalog_archive('demo/flow', 3) AS n").fetchone()["n"] == 1
    # archiving twice changes nothing
    assert conn.execute("SELECT noetl.catalog_archive('demo/flow', 3) AS n").fetchone()["n"] == 0
    assert latest() == 2

    # an archived version keeps its number: the next register is 4, not 3
    assert _register(conn, "demo/flow")["version"] == 4
    assert latest() == 4

    # by id and by version, archived rows are still readable
    row = conn.execute("SELECT * FROM noetl.catalog_get(%s)", (ids[2],)).fetchone()
    assert row["version"] == 3 and row["archived_at"] is not None
    row = conn.execute("SELECT * FROM noetl.catalog_version('demo/flow', 3)").fetchone()
    assert row["catalog_id"] == ids[2] and row["archived_at"] is not None
    assert conn.execute("SELECT * FROM noetl.catalog_version('demo/flow', 9)").fetchone() is None

    # null version = every version
    assert conn.execute("SELECT noetl.catalog_archive('demo/flow', NULL) AS n").fetchone()["n"] == 3
    assert latest() is None
    assert conn.execute("SELECT noetl.catalog_restore('demo/flow', 2) AS n").fetchone()["n"] == 1
    assert latest() == 2
    assert conn.execute("SELECT noetl.catalog_restore('demo/flow', NULL) AS n").fetchone()["n"] == 3
    assert latest() == 4
    assert conn.execute("SELECT noetl.catalog_restore('demo/flow', NULL) AS n").fetchone()["n"] == 0
