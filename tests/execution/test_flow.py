"""Register, execute, and let the test worker claim and report over HTTP until COMPLETED."""

from __future__ import annotations

from tests.execution.conftest import (
    event_log,
    execute,
    register_playbook,
    running_worker,
    types,
    wait_status,
)
from tests.server.conftest import Client


async def test_two_step_playbook_completes_with_the_event_log_of_the_spec(
    api: Client, db_url: str
) -> None:
    await register_playbook(api, "two_step")
    started = await execute(api, "tests/two_step", payload={"x": 5})
    assert started["status"] == "started"
    assert started["commands_generated"] == 1
    async with running_worker(api, db_url):
        status = await wait_status(api, started["execution_id"])
    assert status["status"] == "COMPLETED", status
    assert status["completed"] is True and status["failed"] is False
    assert status["variables"]["start"] == {"y": 10}
    assert status["variables"]["finish"] == {"z": 11}
    assert status["completed_steps"] == ["start", "finish"]

    log = event_log(db_url, started["execution_id"])
    engine_side = [r for r in log if r["meta"].get("source") == "engine"]
    assert types(engine_side) == [
        ("playbook.started", "tests/two_step"),
        ("step.enter", "start"),
        ("command.issued", "start"),
        ("step.exit", "start"),
        ("step.enter", "finish"),
        ("command.issued", "finish"),
        ("step.exit", "finish"),
        ("playbook.completed", "tests/two_step"),
    ]
    for name in ("start", "finish"):
        worker_side = [
            r["event_type"]
            for r in log
            if r["node_name"] == name and r["meta"].get("source") != "engine"
        ]
        assert worker_side == [
            "command.claimed",
            "command.started",
            "call.done",
            "command.completed",
        ]
    position = {(r["event_type"], r["node_name"]): i for i, r in enumerate(log)}
    # the pass runs in call.done's transaction: its decisions follow it directly
    done = position[("call.done", "start")]
    assert [r["event_type"] for r in log[done + 1 : done + 4]] == [
        "step.exit",
        "step.enter",
        "command.issued",
    ]
    ids = [r["event_id"] for r in log]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # the worker's own ids are kept as producer ids; the server assigned the stored ones
    worker_events = [r for r in log if r["event_type"].startswith(("call.", "command.started"))]
    assert all(r["producer_event_id"] is not None for r in worker_events)
    # call.done's parent is its command.issued
    issued = {r["command_id"]: r["event_id"] for r in log if r["event_type"] == "command.issued"}
    for row in log:
        if row["event_type"] == "call.done":
            assert row["parent_event_id"] == issued[row["command_id"]]

    detail = await api.get(f"/api/executions/{started['execution_id']}")
    assert detail.status_code == 200
    body = detail.json
    assert body["status"] == "COMPLETED" and body["progress"] == 100
    assert body["path"] == "tests/two_step" and body["version"] == 1
    assert body["pagination"]["total_events"] == len(log)
    assert [e["event_id"] for e in body["events"]] == sorted(
        (r["event_id"] for r in log), reverse=True
    )
    assert isinstance(body["events"][0]["event_id"], int)
