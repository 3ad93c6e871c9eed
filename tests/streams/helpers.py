"""An SSE client over real HTTP, and events driven straight into Postgres."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from core.ids import new_id


@dataclass
class Frame:
    event: str | None = None
    id: str | None = None
    data: str | None = None
    retry: str | None = None
    comment: str | None = None

    def json(self) -> Any:
        return json.loads(self.data or "null")


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """The frames of a text/event-stream response, as the EventSource algorithm splits them."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                yield Frame(**fields)
            fields = {}
        elif line.startswith(":"):
            fields["comment"] = line[1:].strip()
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


class Reader:
    """Collects the frames of one open stream in the background."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.frames: list[Frame] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for frame in frames(self.response):
            self.frames.append(frame)
            self.changed.set()

    @property
    def events(self) -> list[Frame]:
        return [f for f in self.frames if f.id is not None]

    async def wait_for(self, predicate, timeout: float = 15.0) -> None:
        """Wait until `predicate(self)` holds or the stream ends; fail after `timeout`."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                if self.task.done():
                    self.task.result()
                    assert predicate(self), [f.event for f in self.frames]
                    return
                self.changed.clear()
                waiter = asyncio.ensure_future(self.changed.wait())
                await asyncio.wait([waiter, self.task], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()

    async def ended(self, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            await self.task


PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: {name}
  path: {path}
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


async def register(url: str, path: str = "tests/streams") -> int:
    content = PLAYBOOK.format(name=path.rsplit("/", 1)[-1], path=path)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{url}/api/catalog/register", json={"content": content})
    assert response.status_code == 200, response.text
    return int(response.json()["catalog_id"])


class Driver:
    """Writes executions and events with the SQL functions the server uses."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn

    async def execution(self, catalog_id: int, parent: int | None = None) -> int:
        execution_id = new_id()
        await self.conn.execute(
            "SELECT noetl.execution_save(%s, %s, %s, 'RUNNING', '{}', 0, NULL, NULL, NULL)",
            (execution_id, catalog_id, parent),
        )
        return execution_id

    async def append(self, execution_id: int, *types: str, **fields: Any) -> list[int]:
        """Append events of these types in one statement; returns their ids in order."""
        events = [
            {"execution_id": execution_id, "event_type": t, "node_name": t.split(".")[0], **fields}
            for t in types
        ]
        cursor = await self.conn.execute(
            "SELECT event_id FROM noetl.append_events(%s::jsonb) ORDER BY ord",
            (json.dumps(events),),
        )
        rows = await cursor.fetchall()
        return [r[0] for r in rows]
