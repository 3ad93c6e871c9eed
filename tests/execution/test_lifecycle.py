"""Dead workers and the reaper, cancellation with cascade, error routing, finalize, cleanup."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from tests.execution.conftest import (
    event_log,
    execute,
    register_playbook,
    running_worker,
    wait_status,
)
from tests.execution.test_claims import claim, pending_commands, post_event, worker_event
from tests.server.conftest import Client

UNHANDLED = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: unhandled, path: tests/unhandled}
workflow:
  - step: start
    tool: {kind: python, code: "raise ValueError('value out of range')"}
    next: after
  - step: after
"""


async def test_a_dead_workers_command_is_renotified_and_completed_by_another(
    make_client: Any, db_url: str
) -> None:
    settings = {
        "NOETL_COMMAND_CLAIM_LEASE_SECONDS": "1",
        "NOETL_COMMAND_WORKER_HEARTBEAT_STALE_SECONDS": "1",
    }
    async with make_client(**settings) as api:
        await register_playbook(api, "two_step")
        started = await execute(api, "tests/two_step")
        execution_id = started["execution_id"]
        registered = await api.post(
            "/api/worker/pool/register", json={"name": "w-dead", "capacity": 1}
        )
        assert registered.status_code == 200
        [command] = pending_commands(db_url, execution_id)
        claimed = (await claim(api, command["event_id"], "w-dead")).json
        answer = await post_event(api, worker_event(claimed, "command.started", "STARTED", "77"))
        assert answer.status_code == 200
        with psycopg.connect(db_url, autocommit=True) as conn:
            # the publisher took the first notification long ago
            conn.execute("DELETE FROM noetl.event_outbox WHERE kind = 'command'")

        # w-dead stops: no heartbeat, no events. Once its lease and its registry heartbeat
        # are stale, the reaper re-notifies (wait on that effect, bounded)
        reaper = api.state.execution.reaper
        deadline = time.monotonic() + 15
        while not await reaper.run_once():
            assert time.monotonic() < deadline, "the reaper never re-notified"
            await asyncio.sleep(0.1)
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(
                "SELECT msg_id, payload FROM noetl.event_outbox WHERE kind = 'command'"
            ).fetchall()
        assert [r[0] for r in rows] == [f"command:{command['event_id']}:1"]
        assert rows[0][1]["event_id"] == command["event_id"]
        assert rows[0][1]["execution_id"] == int(execution_id)

        async with running_worker(api, db_url, worker_id="w-alive"):
            status = await wait_status(api, execution_id)
        assert status["status"] == "COMPLETED"
        claims = [
            r for r in event_log(db_url, execution_id) if r["event_type"] == "command.claimed"
        ]
        reclaim = claims[1]["meta"]
        assert reclaim["worker_id"] == "w-alive" and reclaim["reclaimed"] is True
        assert reclaim["reclaimed_from_worker"] == "w-dead"
        assert reclaim["reclaimed_reason"] in ("worker_heartbeat_stale", "worker_inactive")
        assert reclaim["attempts"] == 2


async def test_cancel_with_cascade_stops_parent_and_running_child(api: Client, db_url: str) -> None:
    await register_playbook(api, "two_step")
    parent = await execute(api, "tests/two_step")
    [parent_command] = pending_commands(db_url, parent["execution_id"])
    claimed = (await claim(api, parent_command["event_id"], "w-1")).json
    await post_event(api, worker_event(claimed, "command.started", "STARTED", "11"))
    # the parent's step starts a child, as the playbook tool does
    child = await execute(api, "tests/two_step", parent_execution_id=parent["execution_id"])
    detail = (await api.get(f"/api/executions/{child['execution_id']}")).json
    assert detail["parent_execution_id"] == parent["execution_id"]

    answer = await api.post(
        f"/api/executions/{parent['execution_id']}/cancel", json={"reason": "stop it"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json["status"] == "cancelled"
    assert answer.json["cancelled_executions"] == [parent["execution_id"], child["execution_id"]]
    for execution in (parent, child):
        rows = pending_commands(db_url, execution["execution_id"])
        assert {r["status"] for r in rows} == {"CANCELLED"}
        check = await api.get(f"/api/executions/{execution['execution_id']}/cancellation-check")
        assert check.json["cancelled"] is True and check.json["status"] == "CANCELLED"
        status = (await api.get(f"/api/executions/{execution['execution_id']}/status")).json
        assert status["status"] == "CANCELLED" and status["completed"] is True
    child_log = event_log(db_url, child["execution_id"])
    cancelled = [r for r in child_log if r["event_type"] == "execution.cancelled"][0]
    assert cancelled["meta"]["parent_cancel_id"] == parent["execution_id"]
    assert cancelled["meta"]["reason"] == "stop it"

    # claims are refused, a late result is stored and ignored, a second cancel is a no-op
    [child_command] = pending_commands(db_url, child["execution_id"])
    refused = await claim(api, child_command["event_id"], "w-2")
    assert refused.status_code == 409 and refused.json["code"] == "already_terminal"
    late = await post_event(
        api,
        worker_event(
            claimed,
            "call.done",
            "COMPLETED",
            "12",
            call_index=0,
            result={"status": "success", "context": {"data": {"y": 1}}},
        ),
    )
    assert late.status_code == 200 and late.json["commands_generated"] == 0
    again = await api.post(f"/api/executions/{parent['execution_id']}/cancel", json={})
    assert again.json["status"] == "already_completed"
    assert again.json["cancelled_executions"] == []
    assert (await api.post("/api/executions/99999999/cancel", json={})).status_code == 404


async def test_error_routing_end_to_end(api: Client, db_url: str) -> None:
    await register_playbook(api, "error_to_end")
    await register_playbook(api, "unhandled", UNHANDLED)
    async with running_worker(api, db_url):
        handled = await execute(api, "tests/error_to_end")
        unhandled = await execute(api, "tests/unhandled")
        ok = await wait_status(api, handled["execution_id"])
        failed = await wait_status(api, unhandled["execution_id"])
    assert ok["status"] == "COMPLETED", ok
    assert failed["status"] == "FAILED" and failed["failed"] is True
    log = event_log(db_url, unhandled["execution_id"])
    final = [r for r in log if r["event_type"] == "playbook.failed"][0]
    assert final["context"]["failed_steps"] == ["start"]
    assert "start" in final["error"]
    assert "value out of range" in final["context"]["errors"]["start"]
    assert not [r for r in log if r["node_name"] == "after" and r["event_type"] == "step.enter"]
    detail = (await api.get(f"/api/executions/{unhandled['execution_id']}")).json
    assert detail["status"] == "FAILED" and "start" in detail["error"]
    assert {r["status"] for r in pending_commands(db_url, unhandled["execution_id"])} == {"FAILED"}


async def test_finalize_and_cleanup(api: Client, db_url: str) -> None:
    await register_playbook(api, "two_step")
    first = await execute(api, "tests/two_step")
    answer = await api.post(f"/api/executions/{first['execution_id']}/finalize", json={})
    assert answer.json["status"] == "finalized"
    status = (await api.get(f"/api/executions/{first['execution_id']}/status")).json
    assert status["status"] == "FAILED"
    again = await api.post(f"/api/executions/{first['execution_id']}/finalize", json={})
    assert again.json["status"] == "already_completed"
    unknown = await api.post("/api/executions/123456/finalize", json={})
    assert unknown.status_code == 200 and unknown.json["status"] == "not_found"

    second = await execute(api, "tests/two_step")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE noetl.execution SET start_time = now() - interval '1 hour'"
            " WHERE execution_id = %s",
            (int(second["execution_id"]),),
        )
    dry = await api.post(
        "/api/executions/cleanup", json={"older_than_minutes": 30, "dry_run": True}
    )
    assert dry.json["execution_ids"] == [second["execution_id"]]
    assert (await api.get(f"/api/executions/{second['execution_id']}/status")).json[
        "status"
    ] == "RUNNING"
    done = await api.post("/api/executions/cleanup", json={"older_than_minutes": 30})
    assert done.json["cancelled_count"] == 1
    check = (await api.get(f"/api/executions/{second['execution_id']}/cancellation-check")).json
    assert check["cancelled"] is True
    bad = await api.post("/api/executions/cleanup", json={"older_than_minutes": 0})
    assert bad.status_code == 422
