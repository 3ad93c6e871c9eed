"""Fixtures of the stream tests: the app served over real HTTP by uvicorn inside the test's
event loop (SSE needs a streaming client), and a Postgres driver for events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn

from app.asgi import create_app
from app.state import State
from core.embedded import free_port
from core.settings import Settings
from tests.server.conftest import server_env, server_factory  # noqa: F401  (fixture)
from tests.streams.helpers import Driver


@dataclass
class LiveServer:
    url: str
    state: State


@pytest.fixture
def live_server(db_url: str, tmp_path: Path) -> Callable[..., Any]:
    """`async with live_server(NOETL_SSE_HEARTBEAT_SECONDS="1") as server:`."""

    @asynccontextmanager
    async def start(**extra: str) -> AsyncIterator[LiveServer]:
        settings = Settings.from_env(server_env(db_url, tmp_path, **extra))
        state = State.build(settings)
        app = create_app(settings, state)
        port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="on",
            log_level="warning",
            timeout_graceful_shutdown=2,  # streams a test left open are cancelled
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
            await state.hub.connected.wait()
        try:
            yield LiveServer(f"http://127.0.0.1:{port}", state)
        finally:
            # as on SIGTERM under gunicorn: open streams end, then the server stops
            for route in state.routes:
                streams = getattr(route.resource, "streams", None)
                if streams is not None:
                    streams.close_all()
            server.should_exit = True
            async with asyncio.timeout(20):
                await task

    return start


@pytest.fixture
async def driver(db_url: str) -> AsyncIterator[Driver]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        yield Driver(conn)
