"""The system pool against real NATS and a scripted server (worker-protocol.md §3, §4, §7, §8,
§10): what it claims, acks, naks and terms, the events it posts and their order, its slots,
its registry calls and its shutdown."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from core.ids import parse_id
from tests.worker.conftest import Bus, eventually, wait_until
from tests.worker.fake_server import FakeServer, Reply, claim_body
from workers.system import consumer
from workers.system import pool as pool_module
from workers.system.pool import Slots, SlotsClosed

EXECUTION = 612345678901234567


def python(code: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "python", "code": code, **extra}


async def _none_pending(bus: Bus, pool: str) -> bool:
    return await bus.ack_pending(pool) == 0


def command(fake: FakeServer, event_id: int, tool_config: Any, **kw: Any) -> dict[str, Any]:
    body = claim_body(event_id, EXECUTION + event_id, tool_config, **kw)
    fake.commands[event_id] = body
    return body


async def test_claims_acks_runs_and_reports_in_order(fake: FakeServer, bus: Bus, start_pool):
    pool = await start_pool(bus.url)
    registered = fake.requests("/register")[0]
    assert registered.body["component_type"] == "worker_pool"
    assert registered.body["runtime"]["pools"] == ["system", "default"]
    assert registered.body["capacity"] == 4
    assert registered.headers["authorization"] == "Bearer internal-token-0123456789abcdef"
    worker_id = registered.body["name"]

    command(fake, 1001, python("print('hi')\nresult = {'x': x}", input={"x": 7}))
    await bus.notify(1001, EXECUTION + 1001)
    execution = EXECUTION + 1001
    await fake.wait_for(lambda: "command.completed" in fake.event_types(execution))

    claim = fake.claims(1001)[0]
    assert claim.body == {"worker_id": worker_id}
    assert fake.event_types(execution) == ["command.started", "call.done", "command.completed"]
    started, done, completed = fake.events(execution)
    assert claim.at < fake.requests("/api/events")[0].at
    for body in (started, done, completed):
        assert body["execution_id"] == str(execution)
        assert body["step"] == "start"
        assert body["worker_id"] == worker_id
        assert body["meta"] == {"attempts": 1}
        assert body["context"]["command_id"] == "1000"
        assert body["created_at"].endswith("Z") and len(body["created_at"]) == 27
        parse_id(body["event_id"])
    assert len({b["event_id"] for b in (started, done, completed)}) == 3
    assert (started["status"], done["status"], completed["status"]) == (
        "STARTED",
        "COMPLETED",
        "COMPLETED",
    )
    result = done["context"]["result"]
    assert done["context"]["call_index"] == 0
    assert result["status"] == "success"
    assert result["context"]["data"] == {"x": 7}
    assert result["context"]["stdout"].strip() == "hi"
    assert result["context"]["error"] is None
    assert completed["context"] == {"command_id": "1000", "status": "success"}

    await eventually(lambda: _none_pending(bus, "default"))
    metrics = await pool.metrics()
    assert 'noetl_worker_commands_total{outcome="completed",pool="default"} 1.0' in metrics
    assert 'noetl_worker_commands_total{outcome="failed",pool="system"} 0.0' in metrics
    assert 'noetl_worker_events_reported_total{outcome="ok",pool="default"} 3.0' in metrics
    assert "noetl_worker_claim_duration_seconds_count" in metrics
    assert await pool.stop() == 0
    assert fake.requests("/deregister")[0].body == {
        "name": worker_id,
        "component_type": "worker_pool",
    }


async def test_a_tool_error_is_call_error_then_command_failed(
    fake: FakeServer, bus: Bus, start_pool
):
    await start_pool(bus.url)
    command(fake, 2001, python("def f():\n    raise ValueError('bad input')\nf()"))
    await bus.notify(2001, EXECUTION + 2001)
    execution = EXECUTION + 2001
    await fake.wait_for(lambda: "command.failed" in fake.event_types(execution))
    assert fake.event_types(execution) == ["command.started", "call.error", "command.failed"]
    _, call_error, failed = fake.events(execution)
    error = call_error["context"]["error"]
    assert (error["kind"], error["type"]) == ("exception", "ValueError")
    assert "bad input" in error["message"]
    assert "raise ValueError" in error["traceback"]
    assert call_error["status"] == "FAILED"
    assert call_error["context"]["result"]["status"] == "error"
    assert call_error["context"]["result"]["context"]["error"] == error
    assert failed["context"] == {"command_id": "2000", "error": error}
    assert failed["status"] == "FAILED"


@pytest.mark.parametrize(
    ("reply", "settled"),
    [
        (Reply(409, {"detail": {"code": "active_claim"}, "code": "active_claim"}), "ack"),
        (Reply(409, {"detail": {"code": "already_terminal"}, "code": "already_terminal"}), "ack"),
        (Reply(404, {"detail": "no", "code": "command_not_found"}), "term"),
        (Reply(422, {"detail": [], "code": "validation_error"}), "term"),
        (Reply(400, {"detail": "bad", "code": "invalid_json"}), "term"),
        (Reply(409, {"detail": {"code": "other"}, "code": "other"}, {"Retry-After": "0.5"}), "nak"),
        (Reply(503, {"code": "db_unavailable"}, {"Retry-After": "0.2"}), "nak"),
        (Reply(429, {"code": "slow_down"}, {"Retry-After": "0.1"}), "nak"),
        (Reply(500, {"code": "internal_error"}), "nak"),
    ],
)
async def test_claim_answers_settle_the_message(
    fake: FakeServer, bus: Bus, start_pool, reply: Reply, settled: str
):
    await start_pool(bus.url)
    command(fake, 3001, {"kind": "noop"})
    fake.claim_replies[3001] = [reply]
    await bus.notify(3001, EXECUTION + 3001)
    execution = EXECUTION + 3001
    if settled == "nak":
        # redelivered after the delay; the second claim succeeds and the command runs
        await fake.wait_for(lambda: "command.completed" in fake.event_types(execution), 15)
        assert len(fake.claims(3001)) == 2
        gap = fake.claims(3001)[1].at - fake.claims(3001)[0].at
        expected = float(reply.headers.get("Retry-After", "1"))
        assert gap >= min(expected, 0.5) * 0.8  # clamped to 0.5..30 s
        return
    await fake.wait_for(lambda: fake.claims(3001))
    await eventually(lambda: _none_pending(bus, "default"))
    await bus.nc.flush()  # any advisory of a term has arrived by now
    if settled == "term":
        await wait_until(lambda: bus.advisories, 5)
    else:
        assert bus.advisories == []
    assert fake.events(execution) == []
    assert len(fake.claims(3001)) == 1


async def test_unreadable_and_foreign_notifications_are_never_claimed(
    fake: FakeServer, bus: Bus, start_pool
):
    await start_pool(bus.url)
    await bus.notify(1, EXECUTION, raw=b"not json")
    await bus.notify(1, EXECUTION, raw=json.dumps({"execution_id": EXECUTION}).encode())
    await bus.notify(4001, EXECUTION, raw=json.dumps({"event_id": "x", "execution_id": 1}).encode())
    await wait_until(lambda: len(bus.advisories) == 3, 5)
    # routed to this worker's subject but meant for another pool: acked, left to the reaper
    command(fake, 4002, {"kind": "noop"})
    await bus.notify(4002, EXECUTION, pool="gpu", subject_pool="default")
    command(fake, 4003, {"kind": "noop"})
    await bus.notify(4003, EXECUTION + 4003)
    await fake.wait_for(lambda: "command.completed" in fake.event_types(EXECUTION + 4003))
    await eventually(lambda: _none_pending(bus, "default"))
    assert [c.path for c in fake.claims()] == ["/api/commands/4003/claim"]
    assert len(bus.advisories) == 3


async def test_a_duplicate_notification_is_not_claimed_twice(
    fake: FakeServer, bus: Bus, start_pool
):
    await start_pool(bus.url)
    command(fake, 5001, python("import time; time.sleep(0.6)"))
    await bus.notify(5001, EXECUTION + 5001)
    await fake.wait_for(lambda: fake.event_types(EXECUTION + 5001))
    await bus.notify(5001, EXECUTION + 5001)  # a re-notification while it runs
    await fake.wait_for(lambda: "command.completed" in fake.event_types(EXECUTION + 5001))
    assert len(fake.claims(5001)) == 1
    assert fake.event_types(EXECUTION + 5001).count("call.done") == 1


async def test_event_posts_are_retried_with_the_same_body(fake: FakeServer, bus: Bus, start_pool):
    pool = await start_pool(bus.url)
    fake.event_replies["call.done"] = [
        Reply(503, {"code": "db_unavailable"}, {"Retry-After": "0"}),
        Reply(502, {}),
    ]
    command(fake, 6001, {"kind": "noop"})
    await bus.notify(6001, EXECUTION + 6001)
    execution = EXECUTION + 6001
    await fake.wait_for(lambda: "command.completed" in fake.event_types(execution))
    types = fake.event_types(execution)
    assert types == ["command.started", "call.done", "call.done", "call.done", "command.completed"]
    tries = [b for b in fake.events(execution) if b["event_type"] == "call.done"]
    assert tries[0] == tries[1] == tries[2]  # one event_id, one body
    metrics = await pool.metrics()
    assert 'noetl_worker_events_reported_total{outcome="retried",pool="default"} 2.0' in metrics


async def test_a_refused_event_is_not_retried(fake: FakeServer, bus: Bus, start_pool):
    await start_pool(bus.url)
    fake.event_replies["call.done"] = [Reply(422, {"code": "invalid_event_payload"})]
    command(fake, 6101, {"kind": "noop"})
    await bus.notify(6101, EXECUTION + 6101)
    execution = EXECUTION + 6101
    await fake.wait_for(lambda: "command.completed" in fake.event_types(execution))
    assert fake.event_types(execution) == ["command.started", "call.done", "command.completed"]


async def test_heartbeats_while_the_tool_runs(fake: FakeServer, bus: Bus, start_pool):
    await start_pool(bus.url, command_heartbeat_seconds=0.2)
    command(fake, 7001, python("import time; time.sleep(1.0)"))
    await bus.notify(7001, EXECUTION + 7001)
    execution = EXECUTION + 7001
    await fake.wait_for(lambda: "command.completed" in fake.event_types(execution))
    types = fake.event_types(execution)
    assert types[0] == "command.started" and types[-2:] == ["call.done", "command.completed"]
    beats = [b for b in fake.events(execution) if b["event_type"] == "command.heartbeat"]
    assert len(beats) >= 3 and types[1 : 1 + len(beats)] == ["command.heartbeat"] * len(beats)
    assert all(b["status"] == "RUNNING" for b in beats)
    assert len({b["event_id"] for b in beats}) == len(beats)


async def test_at_most_concurrency_commands_run_at_once(fake: FakeServer, bus: Bus, start_pool):
    await start_pool(bus.url, system_concurrency=2)
    ids = list(range(8001, 8007))
    for event_id in ids:
        command(fake, event_id, python("import time; time.sleep(0.3)"))
        await bus.notify(
            event_id, EXECUTION + event_id, pool="system" if event_id % 2 else "default"
        )
    await fake.wait_for(lambda: fake.event_types().count("command.completed") == len(ids), 30)
    running = 0
    peak = 0
    for body in fake.events():
        if body["event_type"] == "command.started":
            running += 1
        elif body["event_type"] == "command.completed":
            running -= 1
        peak = max(peak, running)
    assert peak == 2


async def test_a_waiting_playbook_tool_gives_its_slot_back(fake: FakeServer, bus: Bus, start_pool):
    await start_pool(bus.url, system_concurrency=1)
    command(fake, 9001, {"kind": "playbook", "path": "examples/child"})
    await bus.notify(9001, EXECUTION + 9001)
    await fake.wait_for(lambda: fake.children)
    # the only slot is free while the child runs: another command gets through
    command(fake, 9002, {"kind": "noop"})
    await bus.notify(9002, EXECUTION + 9002)
    await fake.wait_for(lambda: "command.completed" in fake.event_types(EXECUTION + 9002))
    assert "call.done" not in fake.event_types(EXECUTION + 9001)
    (child,) = fake.children
    assert fake.requests("/api/execute")[0].body["parent_execution_id"] == str(EXECUTION + 9001)
    fake.children[child].set()
    await fake.wait_for(lambda: "command.completed" in fake.event_types(EXECUTION + 9001))
    done = next(b for b in fake.events(EXECUTION + 9001) if b["event_type"] == "call.done")
    assert done["context"]["result"]["context"]["data"]["status"] == "COMPLETED"


async def test_sigterm_finishes_running_and_naks_waiting(fake: FakeServer, bus: Bus, start_pool):
    # one slot, two pools: each fetch loop takes one message, one runs and one waits
    sleeper = python("import time; time.sleep(1.5); result = 'done'")
    command(fake, 10001, sleeper, pool="system")
    command(fake, 10002, sleeper)
    pool = await start_pool(bus.url, system_concurrency=1)
    await eventually(lambda: _both_polling(bus))
    await bus.notify(10001, EXECUTION + 10001, pool="system")
    await bus.notify(10002, EXECUTION + 10002)
    await fake.wait_for(lambda: fake.claims())
    await eventually(lambda: _one_waiting(bus))
    assert await pool.stop() == 0
    (first,) = fake.claims()
    ran = int(first.path.split("/")[3])
    waited = 10001 if ran == 10002 else 10002
    assert fake.event_types(EXECUTION + ran) == [
        "command.started",
        "call.done",
        "command.completed",
    ]
    assert fake.claims(waited) == []  # never claimed: nak'd for another worker
    last_event = max(s.at for s in fake.requests("/api/events"))
    assert fake.requests("/deregister")[0].at > last_event
    # the nak'd notification is still there for the next worker
    await start_pool(bus.url)
    await fake.wait_for(lambda: "command.completed" in fake.event_types(EXECUTION + waited))


async def _both_polling(bus: Bus) -> bool:
    for pool in ("system", "default"):
        info = await bus.js.consumer_info("NOETL_COMMANDS", consumer.durable_name(pool))
        if not info.num_waiting:
            return False
    return True


async def _one_waiting(bus: Bus) -> bool:
    """One message claimed and acked, the other fetched and held unacked for a slot."""
    return await bus.ack_pending("system") + await bus.ack_pending("default") == 1


async def test_the_shutdown_deadline_cancels_without_events(fake: FakeServer, bus: Bus, start_pool):
    pool = await start_pool(bus.url, shutdown_grace_seconds=5.0)
    command(fake, 11001, python("import time; time.sleep(60)"))
    await bus.notify(11001, EXECUTION + 11001)
    await fake.wait_for(lambda: fake.event_types(EXECUTION + 11001))
    started = asyncio.get_running_loop().time()
    assert await pool.stop() == 0
    assert asyncio.get_running_loop().time() - started < 5.0
    assert fake.event_types(EXECUTION + 11001) == ["command.started"]
    assert fake.requests("/deregister")


async def test_consumers_are_created_updated_and_recreated(fake: FakeServer, bus: Bus, start_pool):
    from nats.js.api import ConsumerConfig

    await bus.js.add_consumer(
        "NOETL_COMMANDS",
        ConsumerConfig(
            name="noetl_default_pool",
            durable_name="noetl_default_pool",
            filter_subject="noetl.commands.default.>",
            ack_wait=30.0,
            max_ack_pending=1,
        ),
    )
    pool = await start_pool(bus.url)
    info = await bus.js.consumer_info("NOETL_COMMANDS", "noetl_default_pool")
    assert (info.config.ack_wait, info.config.max_ack_pending) == (300.0, 16)
    assert info.config.max_deliver == 1000
    system = await bus.js.consumer_info("NOETL_COMMANDS", "noetl_system_pool")
    assert system.config.filter_subject == "noetl.commands.system.>"

    await bus.js.delete_consumer("NOETL_COMMANDS", "noetl_default_pool")
    command(fake, 12001, {"kind": "noop"})
    await bus.notify(12001, EXECUTION + 12001)
    # recreated (deliver all), so the notification sent while it was gone is still handled
    await fake.wait_for(lambda: "command.completed" in fake.event_types(EXECUTION + 12001), 30)
    async with httpx.AsyncClient() as client:
        health = await client.get(f"{pool.side_url}/health")
    assert health.status_code == 200, health.text


async def test_health_waits_for_the_stream(
    fake: FakeServer, clean_nats: str, start_pool, monkeypatch: pytest.MonkeyPatch
):
    import nats

    monkeypatch.setattr(pool_module, "STREAM_RETRY_SECONDS", 0.3)

    from core.settings import Settings
    from core.streams import ensure_stream, stream_specs

    pool = await start_pool(clean_nats, wait_registered=False)
    async with httpx.AsyncClient() as client:

        async def health() -> httpx.Response:
            return await client.get(f"{pool.side_url}/health")

        async def ready() -> bool:
            try:
                return (await health()).status_code == 200
            except httpx.HTTPError:
                return False

        for _ in range(100):
            try:
                answer = await health()
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
        assert answer.status_code == 503
        assert answer.json()["checks"]["stream"] == "failing"
        assert fake.claims() == [] and fake.requests("/register") == []
        nc = await nats.connect(clean_nats)
        try:
            for spec in stream_specs(Settings()):
                await ensure_stream(nc.jetstream(), spec, create=True)
        finally:
            await nc.close()
        deadline = asyncio.get_running_loop().time() + 20
        while not await ready():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
    assert fake.requests("/register")


async def test_slots_count_queued_and_held() -> None:
    slots = Slots(2)
    slots.queued = 3
    assert slots.free == -1
    await slots.take_queued()
    await slots.take_queued()
    assert (slots.held, slots.queued, slots.free) == (2, 1, -1)
    waiter = asyncio.create_task(slots.take_queued())
    await asyncio.sleep(0)
    assert not waiter.done()
    slots.release()
    await waiter
    assert (slots.held, slots.queued, slots.free) == (2, 0, 0)
    slots.close()
    slots.queued += 1
    with pytest.raises(SlotsClosed):
        await slots.take_queued()
    assert slots.queued == 0
