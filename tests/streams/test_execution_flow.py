"""Streams of a real execution: execute over HTTP, a test worker claims and reports over HTTP
(worker-protocol.md §7), and the streams carry the event log as it is written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from app.services.executions import TERMINAL_EVENT_TYPES
from tests.execution import worker as protocol_worker
from tests.streams.helpers import Driver, Reader

PLAYBOOK = Path(__file__).resolve().parent.parent / "playbooks" / "two_step.yaml"


@asynccontextmanager
async def worker(url: str, db_url: str) -> AsyncIterator[protocol_worker.TestWorker]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def post(path: str, body: dict[str, Any]) -> tuple[int, Any]:
            response = await client.post(path, json=body)
            return response.status_code, response.json()

        running = protocol_worker.TestWorker(db_url, post, worker_id="stream-test-worker")
        task = asyncio.create_task(running.run())
        try:
            yield running
        finally:
            await running.stop()
            await asyncio.wait_for(task, 10)
    assert not running.errors, running.errors


async def _log(driver: Driver, execution_id: str) -> list[tuple[int, str]]:
    cursor = await driver.conn.execute(
        "SELECT event_id, event_type FROM noetl.event WHERE execution_id = %s ORDER BY event_id",
        (int(execution_id),),
    )
    return [(r[0], r[1]) for r in await cursor.fetchall()]


def _sent(*readers: Reader) -> list[tuple[int, str]]:
    return [(int(f.id or 0), f.event or "") for r in readers for f in r.events]


async def _register_and_execute(client: httpx.AsyncClient) -> str:
    registered = await client.post("/api/catalog/register", json={"content": PLAYBOOK.read_text()})
    assert registered.status_code == 200, registered.text
    started = await client.post("/api/execute", json={"path": "tests/two_step"})
    assert started.status_code == 200, started.text
    return str(started.json()["execution_id"])


async def test_client_connected_before_execute_receives_every_event_and_end(
    live_server, driver: Driver, db_url: str
) -> None:
    async with (
        live_server(NOETL_SSE_SAFETY_POLL_SECONDS="3600") as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        # connected before execute: the all-executions stream, filtered by the playbook path
        request = client.build_request(
            "GET", "/api/events/stream", params={"path": "tests/two_step"}
        )
        everything = Reader(await client.send(request, stream=True))
        await everything.wait_for(lambda r: len(r.frames) >= 1)
        execution_id = await _register_and_execute(client)
        request = client.build_request("GET", f"/api/executions/{execution_id}/stream")
        one = Reader(await client.send(request, stream=True))
        async with worker(server.url, db_url):
            await one.ended(30)
            log = await _log(driver, execution_id)
            await everything.wait_for(lambda r: len(r.events) >= len(log))
            everything.task.cancel()
            await everything.response.aclose()
    sent = _sent(one)
    assert sent == log[: len(sent)]  # every event in order, up to the terminal batch
    assert any(t in TERMINAL_EVENT_TYPES for _, t in sent)
    assert one.frames[-1].event == "end"
    assert one.frames[-1].json() == {"execution_id": execution_id, "status": "COMPLETED"}
    types = [t for _, t in sent]
    for expected in ("command.issued", "command.claimed", "call.done", "playbook.completed"):
        assert expected in types
    assert _sent(everything) == log  # from before the execution existed, each event once


async def test_drop_and_reconnect_during_an_execution(
    live_server, driver: Driver, db_url: str
) -> None:
    async with (
        live_server(NOETL_SSE_SAFETY_POLL_SECONDS="3600") as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        execution_id = await _register_and_execute(client)
        url = f"/api/executions/{execution_id}/stream"
        first = Reader(await client.send(client.build_request("GET", url), stream=True))
        async with worker(server.url, db_url):
            await first.wait_for(lambda r: len(r.events) >= 3 or r.task.done())
            first.task.cancel()
            await first.response.aclose()
            headers = {"Last-Event-ID": first.events[-1].id or "0"}
            request = client.build_request("GET", url, headers=headers)
            second = Reader(await client.send(request, stream=True))
            await second.ended(30)
        log = await _log(driver, execution_id)
    sent = _sent(first, second)
    assert len(sent) == len(set(sent))  # nothing twice
    assert sent == log[: len(sent)]  # nothing missed, in order
    assert second.frames[-1].event == "end"
