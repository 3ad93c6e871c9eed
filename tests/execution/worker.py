"""An in-process test worker that speaks the worker protocol over HTTP (worker-protocol.md).

It learns of commands the way the publisher would: it LISTENs on `noetl_outbox` and takes the
command rows out of `noetl.event_outbox` (the notification bodies the publisher would put on
NATS). For each it claims over HTTP and posts `command.started`, then `call.done` +
`command.completed` or `call.error` + `command.failed`, each after the previous was answered,
with its own `event_id` per event, as §7 says. Tools run in-process through `handler`
(default: noop returns {}, python runs `code` with the bound args, anything else fails), so
tests and the benchmark measure the control plane, not tool start-up.

`post(path, body) -> (status, json)` is the transport: the in-process app (falcon's ASGI
conductor) in tests, httpx against a real server in the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from core.ids import Snowflake
from core.timefmt import rfc3339, utcnow

Post = Callable[[str, dict[str, Any]], Awaitable[tuple[int, Any]]]
Handler = Callable[[dict[str, Any]], Awaitable[tuple[bool, Any]]]

TAKE_COMMANDS = """
DELETE FROM noetl.event_outbox o
 WHERE o.kind = 'command'
RETURNING o.payload, o.msg_id
"""
DROP_EVENTS = "DELETE FROM noetl.event_outbox WHERE kind = 'event'"


async def default_handler(claim: dict[str, Any]) -> tuple[bool, Any]:
    """(ok, data or error): noop gives {}, python runs its code in this process."""
    kind = claim["action"]
    config = claim["context"].get("tool_config") or {}
    args = dict(claim["context"].get("args") or {})
    if kind == "noop":
        return True, {}
    if kind == "python":
        scope: dict[str, Any] = {**args, "args": args, "input_data": args}
        try:
            exec(config.get("code") or "", scope)  # noqa: S102 - test playbooks only
            if scope.get("result") is not None:
                return True, scope["result"]
            if callable(scope.get("main")):
                wanted = inspect.signature(scope["main"]).parameters
                return True, scope["main"](**{k: v for k, v in args.items() if k in wanted})
            return True, {}
        except Exception as exc:  # the tool's own error is an error outcome
            return False, {"kind": "exception", "message": str(exc), "retryable": False}
    return False, {"kind": "not_supported", "message": f"tool {kind}", "retryable": False}


@dataclass
class TestWorker:
    db_url: str
    post: Post
    worker_id: str = "test-worker-1"
    handler: Handler = default_handler
    heartbeat: bool = False
    claims: list[dict[str, Any]] = field(default_factory=list)
    refused: list[tuple[int, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = Snowflake(node_id=900)
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.seen = itertools.count()

    # ------------------------------------------------------------------ the doorbell
    async def run(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.db_url, autocommit=True) as conn:
            await conn.execute("LISTEN noetl_outbox")
            listener = asyncio.create_task(self._listen(conn))
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.db_url, autocommit=True
                ) as work:
                    while not self._stop.is_set():
                        self._wake.clear()
                        await self._drain(work)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), 0.5)
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                    await listener

    async def _listen(self, conn: psycopg.AsyncConnection) -> None:
        async for _ in conn.notifies():
            self._wake.set()

    async def _drain(self, work: psycopg.AsyncConnection) -> None:
        cur = await work.execute(TAKE_COMMANDS)
        rows = await cur.fetchall()
        await work.execute(DROP_EVENTS)
        for payload, _msg_id in rows:
            note = payload if isinstance(payload, dict) else json.loads(payload)
            task = asyncio.create_task(self.handle(note))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task

    # ------------------------------------------------------------------ one command
    async def handle(self, note: dict[str, Any]) -> None:
        try:
            await self._handle(note)
        except Exception as exc:  # recorded so a test can fail on it
            self.errors.append(repr(exc))

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """Retries what worker-protocol.md §4 and §7 retry: 503 (and 408/429/502/504)."""
        delay = 0.05
        for _ in range(200):
            status, answer = await self.post(path, body)
            if status not in (408, 429, 502, 503, 504):
                return status, answer
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        return status, answer

    async def claim(self, note: dict[str, Any]) -> dict[str, Any] | None:
        status, body = await self._post(
            f"/api/commands/{note['event_id']}/claim", {"worker_id": self.worker_id}
        )
        if status != 200:
            self.refused.append((status, body))
            return None
        self.claims.append(body)
        return body

    async def report(
        self, claim: dict[str, Any], event_type: str, status: str, context: dict
    ) -> Any:
        body = {
            "execution_id": str(claim["execution_id"]),
            "event_id": str(self._ids()),
            "event_type": event_type,
            "step": claim["node_name"],
            "status": status,
            "worker_id": self.worker_id,
            "created_at": rfc3339(utcnow()),
            "meta": {"attempts": claim["meta"]["attempts"]},
            "context": {"command_id": claim["meta"]["command_id"], **context},
        }
        code, answer = await self._post("/api/events", body)
        if code != 200:
            raise AssertionError(f"{event_type}: {code} {answer}")
        return answer

    async def _handle(self, note: dict[str, Any]) -> None:
        claim = await self.claim(note)
        if claim is None:
            return
        await self.report(claim, "command.started", "STARTED", {})
        ok, value = await self.handler(claim)
        await self.finish(claim, ok, value)

    async def finish(self, claim: dict[str, Any], ok: bool, value: Any) -> None:
        if ok:
            result = {
                "status": "success",
                "context": {
                    "status": "success",
                    "data": value,
                    "error": None,
                    "stdout": None,
                    "stderr": None,
                    "exit_code": 0,
                    "duration_ms": 1,
                },
            }
            await self.report(claim, "call.done", "COMPLETED", {"call_index": 0, "result": result})
            await self.report(claim, "command.completed", "COMPLETED", {"status": "success"})
        else:
            result = {
                "status": "error",
                "context": {
                    "status": "error",
                    "data": None,
                    "error": value,
                    "stdout": None,
                    "stderr": None,
                    "exit_code": 1,
                    "duration_ms": 1,
                },
            }
            await self.report(
                claim, "call.error", "FAILED", {"call_index": 0, "error": value, "result": result}
            )
            await self.report(claim, "command.failed", "FAILED", {"error": value})
