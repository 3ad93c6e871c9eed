"""Route shapes and error codes: execute (+batch, dedup), reads, events, batches, dashboard."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.execution.conftest import event_log, execute, register_playbook, running_worker
from tests.execution.test_claims import claim, pending_commands
from tests.server.conftest import Client


async def test_execute_errors(api: Client) -> None:
    await register_playbook(api, "two_step")
    missing = await api.post("/api/execute", json={"payload": {}})
    assert missing.status_code == 422 and missing.json["code"] == "validation_error"
    assert missing.json["detail"][0]["loc"] == ["body", "path"]
    unknown = await api.post("/api/execute", json={"path": "tests/nope"})
    assert unknown.status_code == 404
    assert unknown.json == {
        "detail": "Executable catalog entry not found: tests/nope",
        "code": "catalog_entry_not_found",
    }
    kind = await api.post("/api/execute", json={"path": "tests/two_step", "resource_kind": "mcp"})
    assert kind.status_code == 422 and kind.json["code"] == "not_executable"
    bad_ids = await api.post("/api/execute", json={"catalog_id": "x1", "parent_execution_id": -1})
    assert bad_ids.status_code == 422
    assert {tuple(p["loc"]) for p in bad_ids.json["detail"]} == {
        ("body", "catalog_id"),
        ("body", "parent_execution_id"),
    }
    pool = await api.post("/api/execute", json={"path": "tests/two_step", "execution_pool": "A B"})
    assert pool.status_code == 422
    parent = await api.post(
        "/api/execute", json={"path": "tests/two_step", "parent_execution_id": "12345"}
    )
    assert parent.status_code == 422 and parent.json["code"] == "parent_not_found"
    assert (
        await api.post(
            "/api/execute", body=b'{"path": ', headers={"Content-Type": "application/json"}
        )
    ).status_code == 400
    credential = await api.post(
        "/api/catalog/register",
        json={"content": "kind: Credential\nname: c1\ndata: {a: 1}\n"},
    )
    assert credential.status_code == 200
    not_executable = await api.post("/api/execute", json={"path": "c1"})
    assert not_executable.status_code == 422 and not_executable.json["code"] == "not_executable"


async def test_execute_by_catalog_id_pool_dedup_and_batch(api: Client, db_url: str) -> None:
    registered = await register_playbook(api, "two_step")
    first = await api.post(
        "/api/execute",
        json={
            "catalog_id": registered["catalog_id"],
            "execution_pool": "fast-lane",
            "workload": {"x": 1},
            "payload": {"x": 7},
            "trace": {"traceparent": "00-abc-def-01"},
            "dedup": {"key": "k1"},
        },
    )
    assert first.status_code == 200, first.text
    started = first.json
    again = (
        await api.post(
            "/api/execute",
            json={"catalog_id": int(registered["catalog_id"]), "dedup": {"key": "k1"}},
        )
    ).json
    assert again == {
        "execution_id": started["execution_id"],
        "status": "duplicate",
        "commands_generated": 0,
    }
    [command] = pending_commands(db_url, started["execution_id"])
    with psycopg.connect(db_url) as conn:
        subject, body = conn.execute(
            "SELECT subject, payload FROM noetl.event_outbox WHERE kind = 'command'"
        ).fetchone()
    assert subject == f"noetl.commands.fast-lane.{started['execution_id']}"
    assert body["pool"] == "fast-lane" and body["event_id"] == command["event_id"]
    log = event_log(db_url, started["execution_id"])
    assert log[0]["context"]["workload"] == {"x": 7}
    assert all(r["meta"]["trace"] == {"traceparent": "00-abc-def-01"} for r in log)

    batch = await api.post(
        "/api/execute/batch",
        json={"executions": [{"path": "tests/two_step"}, {"path": "tests/none"}, {"nope": 1}]},
    )
    assert batch.status_code == 200
    body = batch.json
    assert (body["count"], body["started"], body["duplicates"], body["failed"]) == (3, 1, 0, 2)
    assert [r["status"] for r in body["results"]] == ["started", "error", "error"]
    assert body["results"][1]["code"] == "catalog_entry_not_found"
    assert body["results"][2]["code"] == "validation_error"
    empty = await api.post("/api/execute/batch", json={"executions": []})
    assert empty.status_code == 422


async def test_read_routes(api: Client, db_url: str) -> None:
    await register_playbook(api, "two_step")
    unknown = "100000000000000009"
    for path in ("", "/events", "/status", "/cancellation-check"):
        answer = await api.get(f"/api/executions/{unknown}{path}")
        assert answer.status_code == 404, path
        assert answer.json == {
            "detail": f"Execution {unknown} not found",
            "code": "execution_not_found",
        }
        bad = await api.get(f"/api/executions/not-a-number{path}")
        assert bad.status_code == 422 and bad.json["detail"][0]["loc"] == ["path", "id"]

    started = await execute(api, "tests/two_step")
    execution_id = started["execution_id"]
    detail = (await api.get(f"/api/executions/{execution_id}?page_size=10&page=1")).json
    assert detail["status"] == "RUNNING" and detail["end_time"] is None
    assert detail["progress"] == 0 and detail["result"] is None
    assert detail["pagination"] == {
        "page": 1,
        "page_size": 10,
        "total_events": 3,
        "total_pages": 1,
        "has_next": False,
        "has_prev": False,
    }
    row = detail["events"][-1]
    assert set(row) == {
        "execution_id",
        "event_id",
        "event_type",
        "node_id",
        "node_name",
        "status",
        "created_at",
        "timestamp",
        "context",
        "result",
        "error",
        "catalog_id",
        "parent_execution_id",
        "parent_event_id",
        "duration",
    }
    assert row["event_type"] == "playbook.started" and row["timestamp"] == row["created_at"]
    assert row["created_at"].endswith("Z")
    filtered = (
        await api.get(f"/api/executions/{execution_id}/events?event_type=command.issued")
    ).json
    assert [e["event_type"] for e in filtered["events"]] == ["command.issued"]
    assert filtered["pagination"]["total_events"] == 1
    since = (
        await api.get(f"/api/executions/{execution_id}/events?since_event_id={row['event_id']}")
    ).json
    assert since["pagination"]["total_events"] == 2
    without = (await api.get(f"/api/executions/{execution_id}?include_events=false")).json
    assert without["events"] == [] and without["pagination"] is None
    status = (await api.get(f"/api/executions/{execution_id}/status")).json
    assert status["status"] == "RUNNING" and status["current_step"] == "start"
    assert status["variables"]["x"] == 2 and "source" not in status
    bad_page = await api.get(f"/api/executions/{execution_id}?page=x")
    assert bad_page.status_code == 422

    # the list reads the projector's read model: fold the events as the projector does
    with psycopg.connect(db_url, autocommit=True) as conn:
        envelopes = [
            r[0]
            for r in conn.execute(
                "SELECT noetl.event_envelope(e) FROM noetl.event e ORDER BY e.event_id"
            ).fetchall()
        ]
        conn.execute("SELECT * FROM noetl.project_events(%s)", (Jsonb(envelopes),))
    listed = (await api.get("/api/executions?page_size=500")).json
    assert [e["execution_id"] for e in listed] == [execution_id]
    assert listed[0]["path"] == "tests/two_step" and listed[0]["status"] == "RUNNING"
    deep = await api.get("/api/executions?page=100&page_size=100")
    assert deep.status_code == 422 and deep.json["code"] == "offset_too_deep"
    stats = (await api.get("/api/dashboard/stats")).json
    assert stats["status"] == "ok" and stats["stats"]["active_workflows"] == 1
    assert stats["total_executions"] == 1 and stats["total_playbooks"] == 1
    widgets = (await api.get("/api/dashboard/widgets")).json["widgets"]
    assert [w["id"] for w in widgets][0] == "execution_stats"


async def test_post_event_validation(api: Client, db_url: str) -> None:
    await register_playbook(api, "two_step")
    started = await execute(api, "tests/two_step")
    base = {"execution_id": started["execution_id"], "name": "step.enter", "step": "start"}
    unknown = await api.post("/api/events", json={**base, "execution_id": "424242"})
    assert unknown.status_code == 404 and unknown.json["code"] == "execution_not_found"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"execution_id": "abc"}, "validation_error"),
        ({"name": None, "event_type": None}, "invalid_event_payload"),
        ({"payload": {"result": {"status": "ok", "data": 1}}}, "invalid_event_payload"),
        ({"payload": {"_internal_data": 1}}, "invalid_event_payload"),
        ({"event_type": "other"}, "invalid_event_payload"),
        ({"name": "bad type!"}, "validation_error"),
        ({"created_at": "yesterday"}, "validation_error"),
    ]
    for change, code in cases:
        answer = await api.post("/api/events", json={**base, **change})
        assert answer.status_code == 422, (change, answer.text)
        assert answer.json["code"] == code, (change, answer.json)
    ok = await api.post("/api/events", json={**base, "status": "success", "event_id": 5})
    assert ok.status_code == 200 and isinstance(ok.json["event_id"], int)
    stored = [r for r in event_log(db_url, started["execution_id"]) if r["producer_event_id"]]
    assert stored[0]["status"] == "COMPLETED"
    assert stored[0]["meta"]["producer_status"] == "success"


async def test_event_batch_drives_the_engine(api: Client, db_url: str) -> None:
    await register_playbook(api, "two_step")
    started = await execute(api, "tests/two_step")
    execution_id = started["execution_id"]
    [command] = pending_commands(db_url, execution_id)
    claimed = (await claim(api, command["event_id"], "legacy-worker")).json
    command_id = int(claimed["meta"]["command_id"])
    body = {
        "execution_id": execution_id,
        "worker_id": "legacy-worker",
        "events": [
            {
                "step": "start",
                "name": "call.done",
                "actionable": True,
                "payload": {
                    "command_id": command_id,
                    "response": {"y": 4},
                    "result": {"status": "COMPLETED", "context": {"y": 4}},
                },
                "meta": {"command_id": command_id},
            },
            {
                "step": "start",
                "name": "step.exit",
                "payload": {"status": "COMPLETED", "command_id": command_id},
            },
            {
                "step": "start",
                "name": "command.completed",
                "payload": {"command_id": command_id, "worker_id": "legacy-worker"},
            },
        ],
    }
    headers = {"Idempotency-Key": "legacy-worker:1:abc"}
    accepted = await api.post("/api/events/batch", json=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    answer = accepted.json
    assert answer["status"] == "accepted" and answer["duplicate"] is False
    assert len(answer["event_ids"]) == 3 and answer["idempotency_key"] == headers["Idempotency-Key"]
    repeat = await api.post("/api/events/batch", json=body, headers=headers)
    assert repeat.status_code == 202 and repeat.json["duplicate"] is True
    assert repeat.json["request_id"] == answer["request_id"]
    conflict = await api.post(
        "/api/events/batch", json={**body, "events": body["events"][:1]}, headers=headers
    )
    assert conflict.status_code == 409 and conflict.json["code"] == "idempotency_key_conflict"

    deadline = time.monotonic() + 10
    while True:
        status = (await api.get(f"/api/events/batch/{answer['request_id']}/status")).json
        if status["state"] == "completed":
            break
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.02)
    assert status["commands_generated"] == 1 and status["status"] == "COMPLETED"
    rows = pending_commands(db_url, execution_id)
    assert [(r["step"], r["status"]) for r in rows] == [
        ("start", "COMPLETED"),
        ("finish", "PENDING"),
    ]
    kinds = [r["event_type"] for r in event_log(db_url, execution_id)]
    assert [k for k in kinds if k in ("batch.accepted", "batch.processing")] == [
        "batch.accepted",
        "batch.processing",
    ]
    assert "batch.completed" in kinds
    missing = await api.get("/api/events/batch/77/status")
    assert missing.status_code == 404 and missing.json["code"] == "batch_not_found"
    unknown = await api.post("/api/events/batch", json={**body, "execution_id": "9191"})
    assert unknown.status_code == 404
    too_big = await api.post("/api/events/batch", json={**body, "events": []})
    assert too_big.status_code == 422 and too_big.json["code"] == "batch_too_large"

    async with running_worker(api, db_url):
        pass  # the worker must not trip over the remaining notification


async def test_loop_and_set_through_the_api(api: Client, db_url: str) -> None:
    await register_playbook(api, "loop_parallel")
    started = await execute(api, "tests/loop_parallel")
    async with running_worker(api, db_url):
        deadline = time.monotonic() + 30
        while True:
            status = (await api.get(f"/api/executions/{started['execution_id']}/status")).json
            if status["status"] != "RUNNING":
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert status["status"] in ("COMPLETED", "FAILED")
    kinds = [r["event_type"] for r in event_log(db_url, started["execution_id"])]
    assert "loop.done" in kinds
