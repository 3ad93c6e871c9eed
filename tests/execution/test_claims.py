"""Claims (api.md §8.3, worker-protocol.md §5) and the idempotency of worker events."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from tests.execution.conftest import event_log, execute, register_playbook, wait_status
from tests.server.conftest import Client


def pending_commands(db_url: str, execution_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT event_id, command_id, step_name, status, worker_id, attempts"
            "  FROM noetl.command WHERE execution_id = %s ORDER BY event_id",
            (int(execution_id),),
        ).fetchall()
    keys = ("event_id", "command_id", "step", "status", "worker_id", "attempts")
    return [dict(zip(keys, r, strict=True)) for r in rows]


async def claim(api: Client, event_id: int, worker_id: str) -> Any:
    """A claim as a worker makes it: a 503 (pool saturated) is retried."""
    for _ in range(100):
        result = await api.post(f"/api/commands/{event_id}/claim", json={"worker_id": worker_id})
        if result.status_code != 503:
            return result
        await asyncio.sleep(0.05)
    return result


async def post_event(api: Client, body: dict[str, Any]) -> Any:
    result = await api.post("/api/events", json=body)
    return result


def worker_event(
    claimed: dict[str, Any], event_type: str, event_status: str, producer_id: str, **context: Any
) -> dict[str, Any]:
    return {
        "execution_id": str(claimed["execution_id"]),
        "event_id": producer_id,
        "event_type": event_type,
        "step": claimed["node_name"],
        "status": event_status,
        "worker_id": "w-1",
        "meta": {"attempts": claimed["meta"]["attempts"]},
        "context": {"command_id": claimed["meta"]["command_id"], **context},
    }


def done_result(data: Any) -> dict[str, Any]:
    return {"status": "success", "context": {"status": "success", "data": data, "error": None}}


async def test_fifty_concurrent_claims_one_wins(make_client: Any, db_url: str) -> None:
    async with make_client(NOETL_DB_POOL_MAX="8") as api:
        await register_playbook(api, "two_step")
        started = await execute(api, "tests/two_step")
        [command] = pending_commands(db_url, started["execution_id"])
        results = await asyncio.gather(
            *(claim(api, command["event_id"], f"w-{i}") for i in range(50))
        )
        codes = sorted(r.status_code for r in results)
        assert codes == [200] + [409] * 49, codes
        winner = next(r for r in results if r.status_code == 200)
        losers = [r for r in results if r.status_code == 409]
        holder = winner.json["meta"]
        assert all(r.json["code"] == "active_claim" for r in losers)
        assert all(r.json["detail"]["code"] == "active_claim" for r in losers)
        assert all(r.headers["Retry-After"] == "2" for r in losers)
        winner_id = [r for r in pending_commands(db_url, started["execution_id"])][0]["worker_id"]
        assert {r.json["detail"]["worker_id"] for r in losers} == {winner_id}
        # one command.claimed event, attempts 1
        log = event_log(db_url, started["execution_id"])
        assert [r["event_type"] for r in log].count("command.claimed") == 1
        assert holder["attempts"] == 1

        # the winner claiming again gets the same payload and writes nothing
        again = await claim(api, command["event_id"], winner_id)
        assert again.status_code == 200
        assert again.json == winner.json
        assert isinstance(again.json["event_id"], int)
        assert isinstance(again.json["execution_id"], int)
        assert again.json["context"]["tool_config"]["code"]
        assert len(event_log(db_url, started["execution_id"])) == len(log)

        # GET returns the same body without claiming
        seen = await api.get(f"/api/commands/{command['event_id']}")
        assert seen.status_code == 200
        assert seen.json["node_name"] == "start" and seen.json["action"] == "python"


async def test_duplicate_terminal_posts_have_one_effect(api: Client, db_url: str) -> None:
    await register_playbook(api, "two_step")
    started = await execute(api, "tests/two_step", payload={"x": 3})
    execution_id = started["execution_id"]
    [command] = pending_commands(db_url, execution_id)
    claimed = (await claim(api, command["event_id"], "w-1")).json

    result = done_result({"y": 6})
    first = await post_event(
        api, worker_event(claimed, "call.done", "COMPLETED", "1001", call_index=0, result=result)
    )
    assert first.status_code == 200, first.text
    assert first.json["commands_generated"] == 1
    # the same POST retried, and the same outcome under a new producer id
    retry = await post_event(
        api, worker_event(claimed, "call.done", "COMPLETED", "1001", call_index=0, result=result)
    )
    other = await post_event(
        api, worker_event(claimed, "call.done", "COMPLETED", "1002", call_index=0, result=result)
    )
    for answer in (retry, other):
        assert answer.status_code == 200
        assert answer.json == {
            "status": "ok",
            "event_id": first.json["event_id"],
            "commands_generated": 0,
        }
    completed = [
        await post_event(
            api, worker_event(claimed, "command.completed", "COMPLETED", pid, status="success")
        )
        for pid in ("1003", "1003", "1004")
    ]
    assert {c.json["event_id"] for c in completed} == {completed[0].json["event_id"]}
    assert all(c.json["commands_generated"] == 0 for c in completed)

    log = event_log(db_url, execution_id)
    kinds = [r["event_type"] for r in log]
    assert kinds.count("call.done") == 1
    assert kinds.count("command.completed") == 1
    assert kinds.count("command.issued") == 2  # start, then finish: once
    rows = pending_commands(db_url, execution_id)
    assert [(r["step"], r["status"]) for r in rows] == [
        ("start", "COMPLETED"),
        ("finish", "PENDING"),
    ]

    # a late call.error of the finished command is stored with meta.ignored and changes nothing
    late = await post_event(
        api,
        worker_event(
            claimed,
            "call.error",
            "FAILED",
            "1005",
            call_index=0,
            error={"kind": "exception", "message": "late"},
        ),
    )
    assert late.status_code == 200 and late.json["commands_generated"] == 0
    stored = [r for r in event_log(db_url, execution_id) if r["event_type"] == "call.error"]
    assert stored[0]["meta"]["ignored"] == "duplicate_terminal"
    assert pending_commands(db_url, execution_id)[0]["status"] == "COMPLETED"

    # a claim of the completed command is refused
    refused = await claim(api, command["event_id"], "w-2")
    assert refused.status_code == 409
    assert refused.json["code"] == "already_terminal"
    assert refused.json["detail"]["reason"] == "command_completed"


async def test_claim_errors(api: Client, db_url: str) -> None:
    unknown = await api.post("/api/commands/123456789/claim", json={"worker_id": "w"})
    assert unknown.status_code == 404 and unknown.json["code"] == "command_not_found"
    bad = await api.post("/api/commands/abc/claim", json={"worker_id": "w"})
    assert bad.status_code == 422 and bad.json["detail"][0]["loc"] == ["path", "event_id"]
    missing = await api.post("/api/commands/1/claim", json={})
    assert missing.status_code == 422 and missing.json["detail"][0]["loc"] == ["body", "worker_id"]
    assert (await api.get("/api/commands/42")).status_code == 404


async def test_posted_command_claimed_is_a_claim(api: Client, db_url: str) -> None:
    await register_playbook(api, "two_step")
    started = await execute(api, "tests/two_step")
    [command] = pending_commands(db_url, started["execution_id"])
    body = {
        "execution_id": started["execution_id"],
        "event_type": "command.claimed",
        "step": "start",
        "worker_id": "w-9",
        "payload": {"command_id": str(command["command_id"])},
    }
    first = await post_event(api, body)
    assert first.status_code == 200, first.text
    assert pending_commands(db_url, started["execution_id"])[0]["worker_id"] == "w-9"
    conflict = await post_event(api, {**body, "worker_id": "w-10"})
    assert conflict.status_code == 409 and conflict.json["code"] == "active_claim"
    await wait_status(api, started["execution_id"], ("RUNNING",))
