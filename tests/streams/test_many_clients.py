"""The real server under gunicorn: 200 concurrent stream clients share one LISTEN connection per
server process, hold no pooled connection while idle, and all end after the terminal event;
SIGTERM ends open streams so the server stops at once."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import httpx
import psycopg

from tests.streams.helpers import Driver, Reader, register

CLIENTS = 200
WORKERS = 2
POOL_MAX = 4


async def _backends(db_url: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "GROUP BY application_name"
        )
        return {name: count for name, count in await cursor.fetchall()}


async def test_200_clients_share_one_listen_connection_per_process(
    server_factory, driver: Driver, db_url: str
) -> None:
    server = server_factory(
        NOETL_SERVER_WORKERS=str(WORKERS),
        NOETL_DB_POOL_MAX=str(POOL_MAX),
        NOETL_SSE_SAFETY_POLL_SECONDS="3600",
    )
    x = await driver.execution(await register(server.url))
    await driver.append(x, "playbook.initialized")
    url = f"{server.url}/api/executions/{x}/stream"
    limits = httpx.Limits(max_connections=CLIENTS + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        responses = await asyncio.gather(
            *(client.send(client.build_request("GET", url), stream=True) for _ in range(CLIENTS))
        )
        assert [r.status_code for r in responses] == [200] * CLIENTS
        readers = [Reader(r) for r in responses]
        await asyncio.gather(*(r.wait_for(lambda r: len(r.events) == 1, 60) for r in readers))

        backends = await _backends(db_url)
        assert backends.get("noetl-listen") == WORKERS, backends
        # idle streams hold no pooled connection: at most each worker's pool is open
        assert backends.get("noetl-server", 0) <= WORKERS * POOL_MAX, backends
        metrics = (await client.get(f"{server.url}/metrics")).text
        gauge = re.search(r"^noetl_server_sse_streams(?:\{[^}]*\})? ([0-9.e+]+)$", metrics, re.M)
        assert gauge is not None and float(gauge.group(1)) == CLIENTS

        await driver.append(x, "command.issued", "command.completed")
        await driver.append(x, "playbook.completed")
        await asyncio.gather(*(r.ended(60) for r in readers))
    for reader in readers:
        assert [f.event for f in reader.frames if f.event] == [
            "playbook.initialized",
            "command.issued",
            "command.completed",
            "playbook.completed",
            "end",
        ]
    assert (await _backends(db_url)).get("noetl-listen") == WORKERS


async def test_sigterm_ends_open_streams(server_factory, driver: Driver) -> None:
    server = server_factory(NOETL_SERVER_WORKERS="1", NOETL_SHUTDOWN_GRACE_SECONDS="30")
    x = await driver.execution(await register(server.url))
    async with httpx.AsyncClient(timeout=60) as client:
        streams = [
            await client.send(client.build_request("GET", url), stream=True)
            for url in (
                f"{server.url}/api/executions/{x}/stream",
                f"{server.url}/api/events/stream",
            )
        ]
        readers = [Reader(r) for r in streams]
        await asyncio.gather(*(r.wait_for(lambda r: len(r.frames) >= 1) for r in readers))
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # well inside the grace period: the streams end instead of holding the stop
        await asyncio.gather(*(r.ended(10) for r in readers))
        for _ in range(200):
            if server.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
    assert server.proc.poll() == 0, server.log.read_text()[-2000:]
    assert time.monotonic() - started < 10
