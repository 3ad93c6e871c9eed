"""Per-request plumbing: request id, caller identity and route auth, metrics, lifespan."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import falcon.asgi

from app.metrics import REQUEST_DURATION
from app.routing import Op
from app.state import State

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,200}$")


class RequestMiddleware:
    """Request id (api.md §1), the caller's token class, the auth class of the route (§3),
    and the request duration histogram labelled by route template (envelope.md §8)."""

    def __init__(self, state: State, ops: dict[tuple[str, str], Op]) -> None:
        self.state = state
        self.ops = ops

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.started = time.perf_counter()
        given = req.get_header("X-Request-ID")
        req.context.request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        req.context.route = None
        req.context.caller = self.state.auth.identify(req.get_header("Authorization"))

    async def process_resource(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any, params: dict
    ) -> None:
        if req.method == "OPTIONS":
            return  # CORS preflight needs no token
        op = self.ops.get((req.uri_template or "", req.method))
        if op is not None:
            self.state.auth.require(req.context.caller, op.auth)

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: Any,
        req_succeeded: bool,
    ) -> None:
        resp.set_header("X-Request-ID", req.context.get("request_id") or uuid.uuid4().hex)
        started = req.context.get("started")
        if started is None:
            return
        route = req.context.get("route") or req.uri_template or "unmatched"
        REQUEST_DURATION.labels(req.method, route, str(resp.status_code)).observe(
            time.perf_counter() - started
        )


class Lifespan:
    """Opens the pool and the LISTEN hub when a worker process starts; closes them at exit."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def process_startup(self, scope: dict, event: dict) -> None:
        await self.state.start()

    async def process_shutdown(self, scope: dict, event: dict) -> None:
        await self.state.stop()
