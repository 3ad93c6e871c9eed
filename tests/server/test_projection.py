"""`POST /api/internal/events/project` (api.md §11): the projector's fold over HTTP."""

from __future__ import annotations

import psycopg

from core.ids import new_id
from tests.server.conftest import INTERNAL, Client

PATH = "/api/internal/events/project"


def _event(execution_id: int, event_type: str = "playbook.started", **extra) -> dict:
    return {
        "event_id": new_id(),
        "execution_id": str(execution_id),
        "catalog_id": "1",
        "event_type": event_type,
        "node_name": "start",
        "created_at": "2026-03-15T12:34:56.789Z",
        **extra,
    }


async def test_project_duplicates_and_parked(client: Client, conn: psycopg.Connection) -> None:
    execution_id = new_id()
    events = [
        _event(execution_id),
        _event(execution_id, "playbook.completed", status="completed"),
    ]
    first = await client.post(PATH, json={"events": events}, headers=INTERNAL)
    assert first.status_code == 200, first.text
    assert first.json == {"projected": 2, "duplicates": 0, "parked": 0}
    stored = conn.execute(
        "SELECT event_type, status FROM noetl.event WHERE execution_id = %s ORDER BY event_id",
        (execution_id,),
    ).fetchall()
    assert [(r["event_type"], r["status"]) for r in stored] == [
        ("playbook.started", "RUNNING"),
        ("playbook.completed", "COMPLETED"),
    ]
    summary = conn.execute(
        "SELECT status FROM noetl.execution_summary WHERE execution_id = %s", (execution_id,)
    ).fetchone()
    assert summary["status"] == "COMPLETED"
    outbox = conn.execute("SELECT count(*) AS n FROM noetl.event_outbox").fetchone()
    assert outbox["n"] == 0  # projected rows never re-enter the outbox

    again = await client.post(PATH, json={"events": events}, headers=INTERNAL)
    assert again.json == {"projected": 0, "duplicates": 2, "parked": 0}

    bad = [
        _event(execution_id, "bad type!"),  # the normaliser refuses it
        {**_event(execution_id), "catalog_id": None},  # project_events refuses it
        _event(execution_id, "call.done"),
    ]
    mixed = await client.post(PATH, json={"events": bad}, headers=INTERNAL)
    assert mixed.json == {"projected": 1, "duplicates": 0, "parked": 2}
    rejects = conn.execute(
        "SELECT stream, reason, event_id, execution_id, body FROM noetl.projector_reject"
        " ORDER BY stream_seq"
    ).fetchall()
    assert [r["stream"] for r in rejects] == ["http", "http"]
    assert {r["execution_id"] for r in rejects} == {execution_id}
    assert {r["event_id"] for r in rejects} == {bad[0]["event_id"], bad[1]["event_id"]}
    assert all(r["reason"] == "invalid" for r in rejects)
    assert b"bad type!" in bytes(rejects[0]["body"])


async def test_project_validation(client: Client) -> None:
    cases = [
        ({}, ["body", "events"]),
        ({"events": []}, ["body", "events"]),
        ({"events": "x"}, ["body", "events"]),
        ({"events": [1]}, ["body", "events", 0]),
        ({"events": [_event(1), {"execution_id": "5"}]}, ["body", "events", 1, "event_id"]),
        ({"events": [{"event_id": 1, "execution_id": "x"}]}, ["body", "events", 0, "execution_id"]),
        ({"events": [_event(1)] * 1001}, ["body", "events"]),
    ]
    for body, loc in cases:
        response = await client.post(PATH, json=body, headers=INTERNAL)
        assert response.status_code == 422, body
        assert response.json["detail"][0]["loc"] == loc
