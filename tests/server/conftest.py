"""Fixtures of the server tests: the app in-process (falcon's ASGI conductor, with its
lifespan, so the pool and the LISTEN hub run for real) and the real server under gunicorn."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from app.asgi import create_app
from app.state import State
from core.embedded import free_port
from core.settings import Settings
from tests.acceptance.helpers import wait_http_ok

API_TOKEN = "api-token-0123456789abcdef"
WORKER_TOKEN = "worker-token-0123456789abcdef"
INTERNAL_TOKEN = "internal-token-0123456789abcdef"
KEY = base64.b64encode(b"k" * 32).decode()

API = {"Authorization": f"Bearer {API_TOKEN}"}
WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}
INTERNAL = {"Authorization": f"Bearer {INTERNAL_TOKEN}"}

PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: sample
  path: {path}
  description: Sample playbook.
  exposed_in_ui: true
workload:
  greeting: hello  # ui:description=Greeting word
  repeat: 3  # ui:enum=[1, 2, 3]
  pg_auth: pg_demo  # ui:credential=pg_*
  api_key: not-a-real-key  # ui:secret
  options:
    verbose: false
workflow:
  - step: start
    tool:
      kind: noop
    next:
      arcs:
        - step: end
  - step: end
    tool:
      kind: noop
"""


def server_env(db_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "NOETL_DATABASE_URL": db_url,
        "NOETL_ENCRYPTION_KEY": KEY,
        "NOETL_WORKER_API_TOKENS": WORKER_TOKEN,
        "NOETL_INTERNAL_API_TOKEN": INTERNAL_TOKEN,
        "NOETL_DATA_DIR": str(data_dir),
        "NOETL_DB_POOL_MAX": "4",
    }
    env.update(extra)
    return env


@dataclass
class Client:
    """The in-process app: `await client.post(path, json=..., headers=...)`."""

    conductor: falcon.testing.ASGIConductor
    state: State

    async def get(self, path: str, **kwargs: Any) -> falcon.testing.Result:
        return await self.conductor.simulate_get(path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> falcon.testing.Result:
        return await self.conductor.simulate_post(path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> falcon.testing.Result:
        return await self.conductor.simulate_delete(path, **kwargs)

    async def request(self, method: str, path: str, **kwargs: Any) -> falcon.testing.Result:
        return await self.conductor.simulate_request(method, path, **kwargs)


@pytest.fixture
def make_client(db_url: str, tmp_path: Path) -> Callable[..., Any]:
    """`async with make_client(NOETL_API_TOKENS=...) as client:` with extra settings."""

    @asynccontextmanager
    async def make(**extra: str) -> AsyncIterator[Client]:
        settings = Settings.from_env(server_env(db_url, tmp_path, **extra))
        state = State.build(settings)
        app = create_app(settings, state)
        async with falcon.testing.ASGIConductor(app) as conductor:
            yield Client(conductor, state)

    return make


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> AsyncIterator[Client]:
    async with make_client() as c:
        yield c


async def register(client: Client, path: str = "tests/sample", content: str | None = None) -> dict:
    response = await client.post(
        "/api/catalog/register", json={"content": content or PLAYBOOK.format(path=path)}
    )
    assert response.status_code == 200, response.text
    return response.json


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen
    log: Path


def start_server(db_url: str, data_dir: Path, **extra: str) -> ServerProcess:
    """`noetl-server --mode=server` under gunicorn, as a user runs it."""
    port = free_port()
    env = {
        **os.environ,
        **server_env(db_url, data_dir, **extra),
        "NOETL_HOST": "127.0.0.1",
        "NOETL_PORT": str(port),
        "NOETL_LOG_FORMAT": "json",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = data_dir / f"server-{port}.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "--mode=server"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_http_ok(f"{server.url}/health", 60, proc)
    except AssertionError:
        stop_server(server)
        raise AssertionError(log.read_text()[-4000:]) from None
    return server


def stop_server(server: ServerProcess) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture
def server_factory(db_url: str, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(**extra: str) -> ServerProcess:
        server = start_server(db_url, tmp_path, **extra)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server)
