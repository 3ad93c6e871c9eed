"""`GET /api/executions/{id}/stream` over real HTTP: replay, live delivery, `end`, resume with
Last-Event-ID, heartbeats, limits, and the LISTEN connection as the only feed."""

from __future__ import annotations

import asyncio

import httpx
import psycopg

from tests.streams.helpers import Driver, Reader, register


async def _event_log(driver: Driver, execution_id: int) -> list[tuple[int, str]]:
    cursor = await driver.conn.execute(
        "SELECT event_id, event_type FROM noetl.event WHERE execution_id = %s ORDER BY event_id",
        (execution_id,),
    )
    return [(r[0], r[1]) for r in await cursor.fetchall()]


def _sent(reader: Reader) -> list[tuple[int, str]]:
    return [(int(f.id or 0), f.event or "") for f in reader.events]


async def test_replay_then_live_then_end(live_server, driver: Driver) -> None:
    # a long safety poll: only notifications can deliver the live events in time
    async with live_server(NOETL_SSE_SAFETY_POLL_SECONDS="3600") as server:
        x = await driver.execution(await register(server.url))
        await driver.append(x, "playbook.initialized", "command.issued")
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", f"{server.url}/api/executions/{x}/stream") as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            reader = Reader(response)
            await reader.wait_for(lambda r: len(r.events) == 2)
            for batch in (["command.claimed"], ["command.started", "call.done"], ["step.exit"]):
                await driver.append(x, *batch)
            await reader.wait_for(lambda r: len(r.events) == 6)
            await driver.append(x, "workflow.completed", "playbook.completed")
            await reader.ended()
        assert reader.frames[0].retry == "3000"
        log = await _event_log(driver, x)
        assert _sent(reader) == log
        end = reader.frames[-1]
        assert end.event == "end" and end.id is None
        assert end.json() == {"execution_id": str(x), "status": "COMPLETED"}
        row = reader.events[0].json()
        assert row["execution_id"] == str(x) and isinstance(row["event_id"], int)
        assert row["event_id"] == log[0][0] and row["created_at"].endswith("Z")


async def test_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(
    live_server, driver: Driver
) -> None:
    async with live_server(NOETL_SSE_SAFETY_POLL_SECONDS="3600") as server:
        x = await driver.execution(await register(server.url))
        await driver.append(x, "playbook.initialized", "command.issued")
        url = f"{server.url}/api/executions/{x}/stream"
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("GET", url) as response:
                first = Reader(response)
                await driver.append(x, "command.claimed")
                await first.wait_for(lambda r: len(r.events) == 3)
            first.task.cancel()
            # written while the client is away
            await driver.append(x, "command.started", "call.done")
            await driver.append(x, "step.exit")
            last = first.events[-1].id or ""
            async with client.stream("GET", url, headers={"Last-Event-ID": last}) as response:
                second = Reader(response)
                await second.wait_for(lambda r: len(r.events) == 3)
                await driver.append(x, "execution.cancelled")
                await second.ended()
        assert _sent(first) + _sent(second) == await _event_log(driver, x)
        assert second.frames[-1].json()["status"] == "CANCELLED"
        # since_event_id works the same way; the header wins over it
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(url, params={"since_event_id": first.events[0].id})
            ids = [line for line in response.text.splitlines() if line.startswith("id: ")]
            assert len(ids) == 6
            response = await client.get(
                url, params={"since_event_id": "0"}, headers={"Last-Event-ID": last}
            )
            ids = [line for line in response.text.splitlines() if line.startswith("id: ")]
            assert len(ids) == 4


async def test_finished_execution_replays_and_ends(live_server, driver: Driver) -> None:
    async with live_server() as server:
        x = await driver.execution(await register(server.url))
        ids = await driver.append(x, "playbook.initialized", "playbook.failed")
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{server.url}/api/executions/{x}/stream"
            response = await client.get(url)
            assert response.status_code == 200
            assert [line for line in response.text.splitlines() if line.startswith("event: ")] == [
                "event: playbook.initialized",
                "event: playbook.failed",
                "event: end",
            ]
            assert '"status":"FAILED"' in response.text
            # a client that saw the terminal event but not `end` gets just the `end`
            response = await client.get(url, headers={"Last-Event-ID": str(ids[-1])})
            assert [line for line in response.text.splitlines() if line.startswith("event")] == [
                "event: end"
            ]


async def test_heartbeat_when_idle(live_server, driver: Driver) -> None:
    async with live_server(NOETL_SSE_HEARTBEAT_SECONDS="0.2") as server:
        x = await driver.execution(await register(server.url))
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", f"{server.url}/api/executions/{x}/stream") as response,
        ):
            reader = Reader(response)
            await reader.wait_for(
                lambda r: sum(f.comment == "keep-alive" for f in r.frames) >= 2, timeout=10
            )
            reader.task.cancel()


async def test_stream_closes_at_max_age(live_server, driver: Driver) -> None:
    async with live_server(NOETL_SSE_MAX_STREAM_SECONDS="0.3") as server:
        x = await driver.execution(await register(server.url))
        await driver.append(x, "playbook.initialized")
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(f"{server.url}/api/executions/{x}/stream")
        assert "event: playbook.initialized" in response.text
        assert "event: end" not in response.text


async def test_errors_before_the_stream_starts(live_server, driver: Driver) -> None:
    # a short heartbeat: a dropped stream is noticed (and its slot freed) at its next frame
    async with (
        live_server(NOETL_SSE_MAX_STREAMS="1", NOETL_SSE_HEARTBEAT_SECONDS="0.1") as server,
        httpx.AsyncClient(timeout=30) as client,
    ):
        response = await client.get(f"{server.url}/api/executions/612348817722081280/stream")
        assert response.status_code == 404
        assert response.json()["code"] == "execution_not_found"
        response = await client.get(f"{server.url}/api/executions/abc/stream")
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_execution_id"
        x = await driver.execution(await register(server.url))
        url = f"{server.url}/api/executions/{x}/stream"
        response = await client.get(url, headers={"Last-Event-ID": "not-an-id"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["header", "Last-Event-ID"]
        response = await client.get(url, params={"since_event_id": "-1"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "since_event_id"]
        async with client.stream("GET", url) as held:
            reader = Reader(held)
            await reader.wait_for(lambda r: len(r.frames) >= 1)
            response = await client.get(url)
            assert response.status_code == 503
            assert response.json()["code"] == "too_many_streams"
            assert response.headers["retry-after"] == "5"
            reader.task.cancel()
        # the slot comes back once the dropped stream is noticed
        await driver.append(x, "playbook.completed")
        async with asyncio.timeout(10):
            while (response := await client.get(url)).status_code == 503:
                await asyncio.sleep(0.05)
        assert response.status_code == 200 and "event: end" in response.text


async def test_listener_reconnect_rereads(live_server, driver: Driver, db_url: str) -> None:
    """Notifications sent while the LISTEN connection is down are lost; the stream re-reads
    from its cursor once the listener is back."""
    async with live_server(NOETL_SSE_SAFETY_POLL_SECONDS="3600") as server:
        x = await driver.execution(await register(server.url))
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", f"{server.url}/api/executions/{x}/stream") as response,
        ):
            reader = Reader(response)
            await reader.wait_for(lambda r: len(r.frames) >= 1)
            hub = server.state.hub
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as admin:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'noetl-listen' AND datname = current_database()"
                )
                # wait until the hub saw the loss, then write while it is away (it waits
                # before it reconnects)
                async with asyncio.timeout(10):
                    while hub.connected.is_set():
                        await asyncio.sleep(0.01)
            await driver.append(x, "playbook.initialized", "playbook.completed")
            await reader.ended(timeout=30)
        assert [f.event for f in reader.frames[1:]] == [
            "playbook.initialized",
            "playbook.completed",
            "end",
        ]


async def test_long_replay_is_sent_page_by_page(live_server, driver: Driver) -> None:
    async with live_server() as server:
        x = await driver.execution(await register(server.url))
        ids = await driver.append(x, *(["step.progress"] * 1200), "playbook.completed")
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(f"{server.url}/api/executions/{x}/stream")
        sent = [int(line[4:]) for line in response.text.splitlines() if line.startswith("id: ")]
        assert sent == ids
        assert response.text.rstrip().endswith(
            f'data: {{"execution_id":"{x}","status":"COMPLETED"}}'
        )
