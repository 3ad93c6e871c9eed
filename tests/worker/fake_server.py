"""A small stand-in for the server's worker routes, for the system pool's protocol tests only
(worker-protocol.md §5, §7, §8): it records every request and answers as the test scripts it.
The end-to-end tests use the real server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import falcon
import falcon.asgi
import uvicorn

from core.embedded import free_port


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    body: Any
    at: float
    headers: dict[str, str]


def claim_body(
    event_id: int,
    execution_id: int,
    tool_config: Any,
    *,
    step: str = "start",
    action: str | None = None,
    pool: str = "default",
    attempts: int = 1,
) -> dict[str, Any]:
    kind = action or (
        "task_sequence" if isinstance(tool_config, list) else tool_config.get("kind", "noop")
    )
    return {
        "status": "ok",
        "event_id": event_id,
        "execution_id": execution_id,
        "node_id": step,
        "node_name": step,
        "action": kind,
        "context": {
            "tool_config": tool_config,
            "args": {},
            "render_context": {"execution_id": str(execution_id)},
            "deferred": [],
        },
        "meta": {
            "command_id": str(event_id - 1),
            "step": step,
            "tool_kind": kind,
            "pool": pool,
            "attempts": attempts,
            "lease_seconds": 120,
            "execution_id": str(execution_id),
            "catalog_id": "611999999999999999",
        },
    }


class FakeServer:
    __test__ = False

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[Seen] = []
        self.commands: dict[int, dict[str, Any]] = {}  # event_id → claim body
        self.claim_replies: dict[int, list[Reply]] = {}  # scripted, consumed in order
        self.event_replies: dict[str, list[Reply]] = {}  # by event_type, consumed in order
        self.children: dict[str, asyncio.Event] = {}  # child execution id → finished
        self.child_status = "COMPLETED"
        self.token: str | None = None
        self._ids = itertools.count(900000000000000001)
        self.changed = asyncio.Event()

    # --- what the tests read --------------------------------------------------------------

    def requests(self, path_part: str = "", method: str | None = None) -> list[Seen]:
        return [
            s for s in self.seen if path_part in s.path and (method is None or s.method == method)
        ]

    def claims(self, event_id: int | None = None) -> list[Seen]:
        part = "/claim" if event_id is None else f"/api/commands/{event_id}/claim"
        return [s for s in self.requests(part, "POST") if s.path.endswith("/claim")]

    def events(self, execution_id: int | None = None) -> list[dict[str, Any]]:
        bodies = [s.body for s in self.requests("/api/events", "POST")]
        if execution_id is None:
            return bodies
        return [b for b in bodies if str(b.get("execution_id")) == str(execution_id)]

    def event_types(self, execution_id: int | None = None) -> list[str]:
        return [b["event_type"] for b in self.events(execution_id)]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout}s; seen: {self.summary()}")
            changed = self.changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 0.05))

    def summary(self) -> list[str]:
        out = []
        for s in self.seen[-40:]:
            extra = s.body.get("event_type") if isinstance(s.body, dict) else ""
            out.append(f"{s.method} {s.path} {extra or ''}".strip())
        return out

    # --- the app --------------------------------------------------------------------------

    def _record(self, req: falcon.asgi.Request, body: Any) -> None:
        self.seen.append(Seen(req.method, req.path, body, time.monotonic(), dict(req.headers)))
        self.changed.set()
        self.changed = asyncio.Event()

    @staticmethod
    def _answer(resp: falcon.asgi.Response, reply: Reply) -> None:
        resp.status = falcon.code_to_http_status(reply.status)
        resp.media = reply.body if reply.body is not None else {}
        for name, value in reply.headers.items():
            resp.set_header(name, value)

    async def _body(self, req: falcon.asgi.Request) -> Any:
        raw = await req.stream.read()
        return json.loads(raw) if raw else None

    async def on_post_claim(self, req: Any, resp: Any, event_id: str) -> None:
        body = await self._body(req)
        self._record(req, body)
        eid = int(event_id)
        scripted = self.claim_replies.get(eid)
        if scripted:
            self._answer(resp, scripted.pop(0))
        elif eid in self.commands:
            self._answer(resp, Reply(200, self.commands[eid]))
        else:
            self._answer(resp, Reply(404, {"detail": "not found", "code": "command_not_found"}))

    async def on_post_events(self, req: Any, resp: Any) -> None:
        body = await self._body(req)
        self._record(req, body)
        scripted = self.event_replies.get(body.get("event_type"))
        if scripted:
            self._answer(resp, scripted.pop(0))
            return
        self._answer(
            resp, Reply(200, {"status": "ok", "event_id": next(self._ids), "commands_generated": 0})
        )

    async def on_post_registry(self, req: Any, resp: Any, action: str) -> None:
        body = await self._body(req)
        self._record(req, body)
        self._answer(
            resp, Reply(200, {"status": "ok", "name": body.get("name"), "runtime_id": "1"})
        )

    async def on_get_credential(self, req: Any, resp: Any, alias: str) -> None:
        self._record(req, None)
        self._answer(resp, Reply(404, {"detail": "Credential not found"}))

    async def on_post_execute(self, req: Any, resp: Any) -> None:
        body = await self._body(req)
        self._record(req, body)
        child = str(next(self._ids))
        self.children[child] = asyncio.Event()
        self._answer(resp, Reply(200, {"execution_id": child, "status": "started"}))

    async def on_get_execution(self, req: Any, resp: Any, eid: str, tail: str = "") -> None:
        self._record(req, None)
        done = self.children.get(eid)
        if tail == "stream":

            async def frames() -> AsyncIterator[bytes]:
                if done is not None:
                    await done.wait()
                data = json.dumps({"execution_id": eid, "status": self.child_status})
                yield f"event: end\ndata: {data}\n\n".encode()

            resp.content_type = "text/event-stream"
            resp.stream = frames()
        elif tail == "status":
            status = self.child_status if done is not None and done.is_set() else "RUNNING"
            self._answer(resp, Reply(200, {"status": status}))
        elif tail == "events":
            self._answer(resp, Reply(200, {"events": []}))
        else:
            self._answer(resp, Reply(200, {"execution_id": eid, "error": None}))

    def app(self) -> falcon.asgi.App:
        app = falcon.asgi.App()
        server = self

        class Route:
            def __init__(self, handler: Any, method: str = "on_post") -> None:
                setattr(self, method, handler)

        app.add_route("/api/commands/{event_id}/claim", Route(server.on_post_claim))
        app.add_route("/api/events", Route(server.on_post_events))
        app.add_route("/api/worker/pool/{action}", Route(server.on_post_registry))
        app.add_route("/api/credentials/{alias}", Route(server.on_get_credential, "on_get"))
        app.add_route("/api/execute", Route(server.on_post_execute))

        async def execution(req: Any, resp: Any, eid: str) -> None:
            await server.on_get_execution(req, resp, eid)

        async def execution_tail(req: Any, resp: Any, eid: str, tail: str) -> None:
            await server.on_get_execution(req, resp, eid, tail)

        app.add_route("/api/executions/{eid}", Route(execution, "on_get"))
        app.add_route("/api/executions/{eid}/{tail}", Route(execution_tail, "on_get"))
        return app


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@contextlib.asynccontextmanager
async def serve_fake() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    port = free_port()
    server = _QuietServer(
        uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        for event in fake.children.values():
            event.set()
        server.should_exit = True
        await task
