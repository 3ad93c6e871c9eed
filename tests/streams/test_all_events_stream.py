"""`GET /api/events/stream`: live from the moment it opens, one cursor per execution, filters,
resume with Last-Event-ID (at-least-once), and the wildcard notification of a bulk insert."""

from __future__ import annotations

import json

import httpx

from tests.streams.helpers import Driver, Reader, register


def _pairs(reader: Reader) -> list[tuple[str, int]]:
    return [(f.json()["execution_id"], int(f.id or 0)) for f in reader.events]


async def test_live_stream_sends_each_new_event_once(live_server, driver: Driver) -> None:
    async with live_server(NOETL_SSE_SAFETY_POLL_SECONDS="3600") as server:
        catalog_id = await register(server.url)
        before = await driver.execution(catalog_id)
        await driver.append(before, "playbook.initialized")  # before the stream: not sent
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", f"{server.url}/api/events/stream") as response,
        ):
            assert response.status_code == 200
            reader = Reader(response)
            await reader.wait_for(lambda r: r.frames and r.frames[0].retry == "3000")
            a = await driver.execution(catalog_id)
            b = await driver.execution(catalog_id)
            expected: list[int] = []
            for round_ in range(5):
                expected += await driver.append(a, "command.issued", "command.completed")
                expected += await driver.append(b, "command.issued")
                if round_ == 2:
                    expected += await driver.append(before, "step.exit")
            await reader.wait_for(lambda r: len(r.events) >= len(expected))
            reader.task.cancel()
        sent = [int(f.id or 0) for f in reader.events]
        assert sorted(sent) == sorted(expected)  # each once, none from before the stream
        for execution in (a, b, before):
            mine = [i for x, i in _pairs(reader) if x == str(execution)]
            assert mine == sorted(mine)  # in order within an execution


async def test_filters(live_server, driver: Driver) -> None:
    async with live_server(NOETL_SSE_SAFETY_POLL_SECONDS="3600") as server:
        catalog_id = await register(server.url, "tests/streams/one")
        other_catalog = await register(server.url, "tests/streams/two")
        a = await driver.execution(catalog_id)
        b = await driver.execution(other_catalog)
        queries = {
            "types": {"event_type": "command.*,playbook.completed"},
            "execution": {"execution_id": [str(b)]},
            "path": {"path": "tests/streams/one"},
            "status": {"status": "completed"},
        }
        async with httpx.AsyncClient(timeout=30) as client:
            readers = {}
            for name, params in queries.items():
                request = client.build_request(
                    "GET", f"{server.url}/api/events/stream", params=params
                )
                response = await client.send(request, stream=True)
                assert response.status_code == 200, await response.aread()
                readers[name] = Reader(response)
            for reader in readers.values():
                await reader.wait_for(lambda r: len(r.frames) >= 1)
            for x in (a, b):
                await driver.append(x, "playbook.initialized", "command.issued")
                await driver.append(x, "command.completed", "step.exit", "playbook.completed")
            await readers["types"].wait_for(lambda r: len(r.events) == 6)
            await readers["execution"].wait_for(lambda r: len(r.events) == 5)
            await readers["path"].wait_for(lambda r: len(r.events) == 5)
            await readers["status"].wait_for(lambda r: len(r.events) == 6)
            # a stream that matches nothing more: a last event for a, then check counts
            await driver.append(a, "zz.marker")
            await readers["path"].wait_for(lambda r: len(r.events) == 6)
            for reader in readers.values():
                reader.task.cancel()
                await reader.response.aclose()
        types = {f.event for f in readers["types"].events}
        assert types == {"command.issued", "command.completed", "playbook.completed"}
        assert {f.json()["execution_id"] for f in readers["execution"].events} == {str(b)}
        assert {f.json()["execution_id"] for f in readers["path"].events} == {str(a)}
        assert {f.json()["status"] for f in readers["status"].events} == {"COMPLETED"}
        assert len(readers["types"].events) == 6


async def test_resume_with_last_event_id_misses_nothing(live_server, driver: Driver) -> None:
    async with live_server(NOETL_SSE_SAFETY_POLL_SECONDS="3600") as server:
        catalog_id = await register(server.url)
        a = await driver.execution(catalog_id)
        b = await driver.execution(catalog_id)
        url = f"{server.url}/api/events/stream"
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("GET", url) as response:
                first = Reader(response)
                await first.wait_for(lambda r: len(r.frames) >= 1)
                written = await driver.append(a, "command.issued")
                written += await driver.append(b, "command.issued")
                await first.wait_for(lambda r: len(r.events) == 2)
                first.task.cancel()
            written += await driver.append(a, "command.completed")  # while away
            written += await driver.append(b, "command.completed")
            last = first.events[-1].id or ""
            async with client.stream("GET", url, headers={"Last-Event-ID": last}) as response:
                second = Reader(response)
                await second.wait_for(lambda r: len(r.events) >= 2)
                written += await driver.append(a, "step.exit")
                await second.wait_for(lambda r: int(r.events[-1].id or 0) == written[-1])
                second.task.cancel()
        # at-least-once across the reconnect: de-duplicated by (execution_id, event_id)
        received = set(_pairs(first)) | set(_pairs(second))
        assert {i for _, i in received} == set(written)
        # live delivery after the resume sends no duplicates
        assert len(_pairs(second)) == len(set(_pairs(second)))


async def test_bulk_insert_wildcard_rereads(live_server, driver: Driver) -> None:
    """A statement touching more than 100 executions sends one `*` notification."""
    async with live_server(NOETL_SSE_SAFETY_POLL_SECONDS="3600") as server:
        catalog_id = await register(server.url)
        executions = [await driver.execution(catalog_id) for _ in range(101)]
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", f"{server.url}/api/events/stream") as response,
        ):
            reader = Reader(response)
            await reader.wait_for(lambda r: len(r.frames) >= 1)
            events = [
                {"execution_id": x, "event_type": "bulk.event", "node_name": "bulk"}
                for x in executions
            ]
            await driver.conn.execute(
                "SELECT count(*) FROM noetl.append_events(%s::jsonb)", (json.dumps(events),)
            )
            await reader.wait_for(lambda r: len(r.events) == 101)
            reader.task.cancel()
        assert {f.json()["execution_id"] for f in reader.events} == {str(x) for x in executions}


async def test_malformed_filters_get_422(live_server) -> None:
    async with live_server() as server, httpx.AsyncClient(timeout=30) as client:
        url = f"{server.url}/api/events/stream"
        cases = [
            ({"execution_id": "12x"}, ["query", "execution_id", 0]),
            ({"execution_id": [str(i + 1) for i in range(101)]}, ["query", "execution_id"]),
            ({"event_type": "bad type"}, ["query", "event_type", 0]),
            ({"status": "no-such status"}, ["query", "status"]),
        ]
        for params, loc in cases:
            response = await client.get(url, params=params)
            assert response.status_code == 422, params
            assert response.json()["detail"][0]["loc"] == loc
        response = await client.get(url, headers={"Last-Event-ID": "x"})
        assert response.status_code == 422


async def test_resume_replays_page_by_page(live_server, driver: Driver) -> None:
    async with live_server(NOETL_SSE_SAFETY_POLL_SECONDS="3600") as server:
        catalog_id = await register(server.url)
        a = await driver.execution(catalog_id)
        b = await driver.execution(catalog_id)
        first = await driver.append(a, "marker")
        written = await driver.append(a, *(["step.progress"] * 700))
        written += await driver.append(b, *(["step.progress"] * 700))
        headers = {"Last-Event-ID": str(first[0])}
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", f"{server.url}/api/events/stream", headers=headers) as response,
        ):
            reader = Reader(response)
            await reader.wait_for(lambda r: len(r.events) >= len(written))
            reader.task.cancel()
        sent = {int(f.id or 0) for f in reader.events}
        assert set(written) <= sent  # the lookback may add the marker, never lose a row
        assert len(reader.events) == len(sent)
