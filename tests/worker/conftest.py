"""Fixtures of the system pool tests: the pool daemon in-process against real NATS and the fake
server of fake_server.py (protocol tests), and helpers to publish command notifications."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
from nats.js import JetStreamContext

from core.dburl import with_dbname
from core.embedded import EmbeddedNats, free_port
from core.settings import Settings
from core.streams import ensure_stream, stream_specs
from tests.worker.fake_server import FakeServer, serve_fake
from tests.worker.stack import KEY
from workers.daemon import Daemon
from workers.system import consumer
from workers.system.pool import main as pool_main


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with serve_fake() as server:
        yield server


@dataclass
class Bus:
    """The test's own NATS connection, with the streams created as the publisher does."""

    nc: Any
    js: JetStreamContext
    url: str
    advisories: list[Any]  # consumer MSG_TERMINATED advisories

    async def notify(
        self,
        event_id: int,
        execution_id: int,
        pool: str = "default",
        *,
        raw: bytes | None = None,
        subject_pool: str | None = None,
        **extra: Any,
    ) -> None:
        body = {
            "execution_id": execution_id,
            "event_id": event_id,
            "command_id": str(event_id - 1),
            "step": "start",
            "server_url": "http://unused",
            "pool": pool,
            "execution_pool": pool,
            **extra,
        }
        data = raw if raw is not None else json.dumps(body).encode()
        await self.js.publish(f"noetl.commands.{subject_pool or pool}.{execution_id}", data)

    async def ack_pending(self, pool: str) -> int:
        info = await self.js.consumer_info("NOETL_COMMANDS", f"noetl_{pool}_pool")
        return int(info.num_ack_pending)

    async def terminated(self) -> list[int]:
        """Stream sequences the consumers termed, from JetStream's advisories so far."""
        return [json.loads(m.data)["stream_seq"] for m in self.advisories]


@pytest.fixture
async def bus(clean_nats: str) -> AsyncIterator[Bus]:
    nc = await nats.connect(clean_nats)
    js = nc.jetstream()
    for spec in stream_specs(Settings()):
        await ensure_stream(js, spec, create=True)
    advisories: list[Any] = []

    async def on_term(msg: Any) -> None:
        advisories.append(msg)

    await nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>", cb=on_term)
    try:
        yield Bus(nc, js, clean_nats, advisories)
    finally:
        await nc.close()


@dataclass
class RunningPool:
    daemon: Daemon
    task: asyncio.Task
    settings: Settings

    @property
    def side_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.metrics_port}"

    async def stop(self, timeout: float = 30.0) -> int:
        self.daemon.stopping.set()
        return await asyncio.wait_for(self.task, timeout)

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{self.side_url}/metrics")).text


@pytest.fixture
async def start_pool(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Any]]:
    # a short long poll, so each test's shutdown waits one second, not five
    monkeypatch.setattr(consumer, "FETCH_SECONDS", 1.0)
    running: list[RunningPool] = []

    async def start(
        nats_url: str, *, wait_registered: bool = True, **overrides: Any
    ) -> RunningPool:
        values: dict[str, Any] = {
            "nats_url": nats_url,
            "server_url": fake.url,
            "system_pool": "system,default",
            "metrics_host": "127.0.0.1",
            "metrics_port": free_port(),
            "shutdown_grace_seconds": 10.0,
            "python_timeout_seconds": 30.0,
            "worker_event_retry_seconds": 10.0,
            "internal_api_token": "internal-token-0123456789abcdef",
        }
        values.update(overrides)
        settings = Settings(**values)
        daemon = Daemon("system", settings)
        task = asyncio.create_task(daemon.run(pool_main))
        pool = RunningPool(daemon, task, settings)
        running.append(pool)
        if wait_registered:
            before = len(fake.requests("/register"))
            await fake.wait_for(lambda: len(fake.requests("/register")) > before, 20)
        return pool

    yield start
    for pool in running:
        if not pool.task.done():
            pool.daemon.stopping.set()
            await asyncio.wait_for(pool.task, 30)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Poll an async check until it is truthy, within a bounded time."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.02
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)


# --- the end-to-end stacks (one database, NATS server and folder per test module) ------------


@pytest.fixture(scope="module")
def e2e_dir() -> Iterator[Path]:
    # not pytest's tmp_path: a parallel pytest session may reset its base folder mid-run
    path = Path(tempfile.mkdtemp(prefix="noetl-e2e-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def e2e_nats(e2e_dir: Path) -> Iterator[str]:
    server = EmbeddedNats(e2e_dir / "nats")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def e2e_db(pg_admin_url: str, template_db: str, e2e_dir: Path) -> Iterator[str]:
    """A database migrated by `noetl-server migrate`, so the system playbooks and their
    credential are registered as in a deployment."""
    name = f"t_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = with_dbname(pg_admin_url, name)
    try:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NOETL_")},
            "NOETL_ENCRYPTION_KEY": KEY,
            "NOETL_DATA_DIR": str(e2e_dir / "data"),
        }
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", "migrate", "--database-url", url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        yield url
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
