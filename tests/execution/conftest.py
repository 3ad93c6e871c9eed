"""Fixtures of the execution API tests: the app in-process with its lifespan (pool, LISTEN hub,
reaper and batch loops run for real), a test worker speaking the protocol over that app, and
helpers that register the playbooks of tests/playbooks/."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.execution.worker import Handler, TestWorker, default_handler
from tests.server.conftest import Client, make_client, server_env  # noqa: F401 - fixture

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"


@pytest.fixture
async def api(make_client: Callable[..., Any]) -> AsyncIterator[Client]:  # noqa: F811 - the imported fixture
    async with make_client() as client:
        yield client


def poster(client: Client) -> Callable[[str, dict[str, Any]], Any]:
    async def post(path: str, body: dict[str, Any]) -> tuple[int, Any]:
        result = await client.post(path, json=body)
        return result.status_code, result.json

    return post


@asynccontextmanager
async def running_worker(
    client: Client,
    db_url: str,
    worker_id: str = "test-worker-1",
    handler: Handler = default_handler,
) -> AsyncIterator[TestWorker]:
    worker = TestWorker(db_url, poster(client), worker_id=worker_id, handler=handler)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 10)
    assert not worker.errors, worker.errors


async def register_playbook(client: Client, name: str, text: str | None = None) -> dict[str, Any]:
    content = text if text is not None else (PLAYBOOKS / f"{name}.yaml").read_text()
    result = await client.post("/api/catalog/register", json={"content": content})
    assert result.status_code == 200, result.text
    return result.json


async def execute(client: Client, path: str, **body: Any) -> dict[str, Any]:
    result = await client.post("/api/execute", json={"path": path, **body})
    assert result.status_code == 200, result.text
    return result.json


async def wait_status(
    client: Client,
    execution_id: str,
    wanted: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED"),
    timeout: float = 20.0,
) -> dict[str, Any]:
    """The status body once its status is one of `wanted`, polling with a bounded deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = await client.get(f"/api/executions/{execution_id}/status")
        assert result.status_code in (200, 503), result.text
        if result.status_code == 200 and result.json["status"] in wanted:
            return result.json
        if time.monotonic() > deadline:
            raise AssertionError(f"status still {result.json['status']}: {result.json}")
        await asyncio.sleep(0.02)


def event_log(db_url: str, execution_id: str | int) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT * FROM noetl.event WHERE execution_id = %s ORDER BY event_id",
            (int(execution_id),),
        ).fetchall()


def types(rows: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(r["event_type"], r["node_name"]) for r in rows]
