"""noetl.project_events and noetl.playbook_report at the SQL level (envelope.md §4.4, §7.3)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import psycopg
import pytest

from bench.eventgen import event_stream
from core.ids import make_id
from core.projection import HttpProjection, ProjectRequestError, project_http

EXECUTION = make_id(1_780_000_000_000, 3, 1)
CATALOG = make_id(1_780_000_000_000, 3, 2)
OTHER_CATALOG = make_id(1_780_000_000_000, 3, 3)
COMMAND = make_id(1_780_000_000_000, 3, 4)


def envelope(seq: int, event_type: str, **fields: Any) -> dict[str, Any]:
    base = {
        "event_id": str(EXECUTION + 100 + seq),
        "execution_id": str(EXECUTION),
        "catalog_id": str(CATALOG),
        "event_type": event_type,
        "status": "RUNNING",
        "created_at": f"2026-06-01T00:00:{seq:02d}.000000Z",
        "meta": {},
    }
    base.update(fields)
    return base


def project(conn: psycopg.Connection, events: list[Any]) -> tuple[int, int, list]:
    row = conn.execute(
        "SELECT inserted, duplicate, rejected FROM noetl.project_events(%s::jsonb)",
        (json.dumps(events),),
    ).fetchone()
    assert row is not None
    return row["inserted"], row["duplicate"], row["rejected"]


def test_invalid_elements_are_listed_and_skipped(conn: psycopg.Connection) -> None:
    good = envelope(1, "playbook.started")
    bad = [
        5,
        {k: v for k, v in good.items() if k != "event_id"},
        {**good, "event_id": "0"},
        {**good, "event_id": "9223372036854775808"},
        {**good, "catalog_id": True},
        {**good, "parent_event_id": "x"},
        {**good, "event_type": ""},
        {**good, "node_name": "n" * 513},
        {**good, "status": {"a": 1}},
        {**good, "context": [1]},
        {**good, "meta": "m"},
        {**good, "duration": -1},
        {**good, "created_at": "2026-06-01 00:00:00"},
        {**good, "tenant_id": 7},
    ]
    inserted, duplicate, rejected = project(conn, [good, *bad])
    assert (inserted, duplicate) == (1, 0)
    assert [r["index"] for r in rejected] == list(range(1, len(bad) + 1))
    fields = [r["reason"].split(":")[0] for r in rejected]
    assert fields == [
        "event",
        "event_id",
        "event_id",
        "event_id",
        "catalog_id",
        "parent_event_id",
        "event_type",
        "node_name",
        "status",
        "context",
        "meta",
        "duration",
        "created_at",
        "tenant_id",
    ]
    assert project(conn, [good]) == (0, 1, [])


def test_projected_rows_never_enter_the_outbox(conn: psycopg.Connection) -> None:
    with conn.transaction():
        project(conn, [envelope(1, "playbook.started")])
        conn.execute(
            "INSERT INTO noetl.event (event_id, execution_id, catalog_id, event_type, status)"
            " VALUES (%s, %s, %s, 'x.y', 'RUNNING')",
            (EXECUTION + 1, EXECUTION, CATALOG),
        )
    assert conn.execute("SELECT count(*) AS n FROM noetl.event_outbox").fetchone() == {"n": 0}
    # the suppression ends with the transaction
    conn.execute(
        "INSERT INTO noetl.event (event_id, execution_id, catalog_id, event_type, status)"
        " VALUES (%s, %s, %s, 'x.y', 'RUNNING')",
        (EXECUTION + 2, EXECUTION, CATALOG),
    )
    assert conn.execute("SELECT count(*) AS n FROM noetl.event_outbox").fetchone() == {"n": 1}


def summary(conn: psycopg.Connection) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM noetl.execution_summary").fetchone()
    assert row is not None
    return row


def test_summary_terminal_lowest_id_wins_in_any_order(conn: psycopg.Connection) -> None:
    events = [
        envelope(1, "playbook.started", node_name="start"),
        envelope(5, "playbook.failed", status="FAILED", error="e" * 5000),
        envelope(7, "execution.cancelled", status="CANCELLED"),
        envelope(9, "step.exit", node_name="late"),
    ]
    results = set()
    for order in itertools.permutations(events):
        conn.execute("TRUNCATE noetl.event, noetl.execution_summary, noetl.playbook_stats")
        for event in order:
            project(conn, [event])
        row = summary(conn)
        results.add(tuple(row.values()))
    assert len(results) == 1
    row = summary(conn)
    assert row["status"] == "FAILED"
    assert row["terminal_event_id"] == EXECUTION + 105
    assert row["duration_ms"] == 4000
    assert len(row["error"]) == 4096
    assert row["last_event_type"] == "step.exit" and row["last_node_name"] == "late"
    stats = conn.execute(
        "SELECT runs, failed, duration_ms_sum FROM noetl.playbook_stats"
    ).fetchall()
    assert stats == [{"runs": 1, "failed": 1, "duration_ms_sum": 4000}]


def test_parent_and_catalog_come_from_the_lowest_event(conn: psycopg.Connection) -> None:
    late = envelope(8, "step.enter", parent_execution_id="222", catalog_id=str(OTHER_CATALOG))
    project(conn, [late])
    assert conn.execute("SELECT catalog_id, runs FROM noetl.playbook_stats").fetchall() == [
        {"catalog_id": OTHER_CATALOG, "runs": 1}
    ]
    project(conn, [envelope(2, "playbook.started", parent_execution_id="111")])
    row = summary(conn)
    assert (row["catalog_id"], row["parent_execution_id"]) == (CATALOG, 111)
    # the stats row of the catalog the execution left is gone, as in the GROUP BY
    assert conn.execute("SELECT catalog_id, runs FROM noetl.playbook_stats").fetchall() == [
        {"catalog_id": CATALOG, "runs": 1}
    ]
    project(conn, [envelope(9, "step.exit", parent_execution_id="333")])
    assert summary(conn)["parent_execution_id"] == 111


def test_step_run_ranks_and_terminal(conn: psycopg.Connection) -> None:
    cmd = {"command_id": str(COMMAND)}
    events = [
        envelope(1, "command.issued", node_name="fetch", node_type="http", meta=cmd),
        envelope(2, "command.claimed", worker_id="w1", meta={**cmd, "attempts": 1}),
        envelope(3, "command.started", meta=cmd),
        envelope(4, "command.claimed", worker_id="w2", meta={**cmd, "attempts": 2}),
        envelope(5, "command.heartbeat", meta=cmd),
        envelope(6, "call.done", status="FAILED", error="bad", meta=cmd),
        envelope(8, "command.completed", status="COMPLETED", meta=cmd),
    ]
    for event in reversed(events):
        project(conn, [event])
    row = conn.execute("SELECT * FROM noetl.step_run").fetchone()
    assert row is not None
    assert row["status"] == "FAILED" and row["status_event_id"] == EXECUTION + 106
    assert (row["step_name"], row["tool_kind"]) == ("fetch", "http")
    assert (row["worker_id"], row["attempt"]) == ("w2", 2)
    assert row["duration_ms"] == 3000 and row["error"] == "bad"
    assert row["last_event_id"] == EXECUTION + 108

    conn.execute("TRUNCATE noetl.step_run, noetl.event")
    project(conn, events[:3])
    row = conn.execute("SELECT status, status_event_id FROM noetl.step_run").fetchone()
    assert row == {"status": "RUNNING", "status_event_id": EXECUTION + 103}


def test_playbook_report_sums_versions_of_a_path(conn: psycopg.Connection) -> None:
    events = event_stream(400, seed=2, catalogs=2, days=2)
    project(conn, events)
    catalogs = sorted({int(e["catalog_id"]) for e in events})
    for version, catalog_id in enumerate(catalogs, start=1):
        conn.execute(
            "INSERT INTO noetl.catalog (catalog_id, path, version, kind)"
            " VALUES (%s, 'p', %s, 'playbook')",
            (catalog_id, version),
        )
    rows = conn.execute(
        "SELECT * FROM noetl.playbook_report('2000-01-01', '2100-01-01')"
    ).fetchall()
    assert len(rows) == 1
    report = rows[0]
    totals = conn.execute(
        "SELECT count(*) AS runs,"
        " count(*) FILTER (WHERE status = 'COMPLETED') AS completed,"
        " count(*) FILTER (WHERE status = 'RUNNING') AS running,"
        " avg(duration_ms) FILTER (WHERE status <> 'RUNNING') AS mean"
        " FROM noetl.execution_summary"
    ).fetchone()
    assert totals is not None
    assert report["path"] == "p" and report["catalog_ids"] == catalogs
    assert (report["runs"], report["completed"], report["running"]) == (
        totals["runs"],
        totals["completed"],
        totals["running"],
    )
    assert report["mean_ms"] == pytest.approx(float(totals["mean"]))
    assert report["p50_ms"] <= report["p95_ms"]
    finished = report["completed"] + report["failed"] + report["cancelled"]
    assert report["success_rate"] == pytest.approx(report["completed"] / finished)
    empty = conn.execute("SELECT * FROM noetl.playbook_report('1999-01-01', '1999-01-02')")
    assert empty.fetchall() == []


async def test_http_door_parks_what_it_cannot_project(db_url: str) -> None:
    good = envelope(1, "playbook.started")
    items = [
        good,
        {**envelope(2, "step.enter"), "duration": "slow"},  # the normaliser refuses it
        {**envelope(3, "step.enter"), "catalog_id": None},  # project_events refuses it
    ]
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
        with pytest.raises(ProjectRequestError) as refused:
            await project_http(aconn, [good, {"execution_id": "1"}])
        assert refused.value.index == 1 and refused.value.field == "event_id"
        assert await project_http(aconn, items) == HttpProjection(1, 0, 2)
        assert await project_http(aconn, items) == HttpProjection(0, 1, 2)
        cur = await aconn.execute(
            "SELECT stream, reason, event_id FROM noetl.projector_reject ORDER BY event_id"
        )
        rows = await cur.fetchall()
    assert [(r[0], r[1]) for r in rows] == [("http", "invalid")] * 4
