"""`GET /api/events/batch/{request_id}/stream`: the batch's state now and at each change,
closing after `completed`/`failed`; one `not_found` frame for an unknown id."""

from __future__ import annotations

import httpx

from tests.streams.helpers import Driver, frames, register


async def test_batch_states_until_completed(live_server, driver: Driver) -> None:
    async with live_server() as server, httpx.AsyncClient(timeout=30) as client:
        x = await driver.execution(await register(server.url))
        body = {
            "execution_id": str(x),
            "worker_id": "worker-test",
            "events": [{"step": "start", "name": "step.enter", "payload": {"status": "started"}}],
        }
        accepted = await client.post(f"{server.url}/api/events/batch", json=body)
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["request_id"]
        url = f"{server.url}/api/events/batch/{request_id}/stream"
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            seen = [f async for f in frames(response) if f.event == "status"]
        states = [f.json()["state"] for f in seen]
        assert states[-1] == "completed", states
        assert len(states) == len(set(states))  # a frame per change, none repeated
        last = seen[-1].json()
        assert last["request_id"] == request_id and last["execution_id"] == str(x)
        assert last["status"] == "COMPLETED"


async def test_unknown_batch_and_bad_input(live_server) -> None:
    async with live_server() as server, httpx.AsyncClient(timeout=30) as client:
        url = f"{server.url}/api/events/batch/612348817722081280/stream"
        response = await client.get(url)
        assert response.status_code == 200
        lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert len(lines) == 1 and '"state":"not_found"' in lines[0]
        response = await client.get(url, params={"timeout_seconds": "0"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "timeout_seconds"]
        response = await client.get(f"{server.url}/api/events/batch/nope/stream")
        assert response.status_code == 422


async def test_timeout_frame(live_server, driver: Driver) -> None:
    async with live_server() as server, httpx.AsyncClient(timeout=30) as client:
        x = await driver.execution(await register(server.url))
        # a batch another process holds under its lease: it stays `processing`
        cursor = await driver.conn.execute(
            "INSERT INTO noetl.event_batch (execution_id, state, event_ids, claimed_by, "
            "lease_until) VALUES (%s, 'processing', '{}', 'elsewhere', now() + interval '1 hour')"
            " RETURNING request_id",
            (x,),
        )
        row = await cursor.fetchone()
        assert row is not None
        url = f"{server.url}/api/events/batch/{row[0]}/stream"
        response = await client.get(url, params={"timeout_seconds": "1"})
        states = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert len(states) == 2, states
        assert '"state":"processing"' in states[0]
        assert '"state":"timeout"' in states[1] and '"message":"SSE timeout"' in states[1]
