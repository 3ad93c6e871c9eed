"""SSE routes: one execution's events and every execution's events (api.md §7.7), and the
state of an event batch (api.md §8.2).

A resource validates the request and checks what must fail before the stream starts (422,
404, 503 `too_many_streams`); the frames come from `app.services.streams`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import falcon.asgi

from app.errors import ApiError, not_found, problem, validation_error
from app.fields import Fields, path_id
from app.openapi import ID_PATH, array, integer, obj, query, string
from app.resources.events import batch_status
from app.routing import Op, Route
from app.services.streams import EventFilter, StreamService
from app.state import State
from core.ids import InvalidId, parse_id

MAX_EXECUTION_FILTERS = 100
EVENT_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}\*?$")
STATUS = re.compile(r"^[A-Za-z_]{1,32}$")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_MEDIA = "text/event-stream"


def sse_event(description: str) -> dict[str, Any]:
    """One Server-Sent Event as OpenAPI describes a text/event-stream item."""
    fields = {"event": string(), "id": string(), "data": string(), "retry": integer()}
    return {**obj(fields, required=[]), "description": description}


def last_event_id(req: falcon.asgi.Request) -> int | None:
    """The `Last-Event-ID` header as an id (0 allowed), None when absent; 422 when malformed."""
    raw = req.get_header("Last-Event-ID")
    if raw is None or not raw.strip():
        return None
    try:
        return parse_id(raw.strip(), allow_zero=True)
    except InvalidId as exc:
        raise validation_error(
            [problem(["header", "Last-Event-ID"], str(exc), "invalid_id")]
        ) from None


def _start(resp: falcon.asgi.Response) -> None:
    resp.content_type = SSE_MEDIA
    for name, value in SSE_HEADERS.items():
        resp.set_header(name, value)


class ExecutionStream:
    def __init__(self, streams: StreamService) -> None:
        self.streams = streams

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, id: str) -> None:
        try:
            ident = path_id("id", id)
        except ApiError as exc:
            raise validation_error(exc.detail, "invalid_execution_id") from None
        f = Fields(req.params, "query")
        since = f.ident("since_event_id", allow_zero=True)
        f.check()
        after = last_event_id(req)
        if after is None:
            after = since or 0
        self.streams.admit()
        try:
            head = await self.streams.head(ident)
            if head is None or not head["known"]:
                raise not_found("execution_not_found", f"Execution {ident} not found")
        except BaseException:
            self.streams.release()
            raise
        _start(resp)
        resp.sse = self.streams.execution_stream(ident, after, head)


def parse_filters(params: Mapping[str, Any]) -> EventFilter:
    """The filters of `GET /api/events/stream`; every malformed one is a 422 naming it."""
    f = Fields(params, "query")
    ids: set[int] | None = None
    raw_ids = params.get("execution_id")
    if raw_ids is not None:
        values = raw_ids if isinstance(raw_ids, list) else [raw_ids]
        # a comma list counts as repeated values, as some clients send them that way
        parts = [part.strip() for value in values for part in str(value).split(",")]
        if len(parts) > MAX_EXECUTION_FILTERS:
            f.add("execution_id", f"at most {MAX_EXECUTION_FILTERS} values", "too_long")
        ids = set()
        for index, part in enumerate(parts):
            try:
                ids.add(parse_id(part))
            except InvalidId as exc:
                f.add(("execution_id", index), str(exc), "invalid_id")
    path = f.string("path", max_len=512)
    types: list[str] | None = None
    raw_types = params.get("event_type")
    if raw_types is not None:
        values = raw_types if isinstance(raw_types, list) else [raw_types]
        types = [part.strip() for value in values for part in str(value).split(",")]
        types = [t for t in types if t]
        if not types or len(types) > 50:
            f.add("event_type", "must name 1..50 event types", "value_error")
        for index, name in enumerate(types):
            if not EVENT_TYPE.match(name):
                f.add(("event_type", index), f"must match {EVENT_TYPE.pattern}", "pattern_error")
    status = f.string("status", pattern=STATUS)
    f.check()
    exact = prefixes = None
    if types is not None:
        exact = tuple(t for t in types if not t.endswith("*"))
        prefixes = tuple(t[:-1] for t in types if t.endswith("*"))
    return EventFilter(
        execution_ids=None if ids is None else frozenset(ids),
        path=path,
        event_types=exact,
        event_prefixes=prefixes or (),
        status=status.upper() if status else None,
    )


class AllEventsStream:
    def __init__(self, streams: StreamService) -> None:
        self.streams = streams

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        filters = parse_filters(req.params)
        after = last_event_id(req)
        self.streams.admit()
        _start(resp)
        resp.sse = self.streams.all_stream(filters, after)


class BatchStatusStream:
    def __init__(self, state: State, streams: StreamService) -> None:
        self.state = state
        self.streams = streams

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, request_id: str
    ) -> None:
        ident = path_id("request_id", request_id)
        f = Fields(req.params, "query")
        timeout = f.integer("timeout_seconds", default=30, minimum=1, maximum=300)
        f.check()
        self.streams.admit()
        _start(resp)
        resp.sse = self.streams.batch_stream(
            str(ident), float(timeout or 30), partial(batch_status, self.state, ident)
        )


def routes(state: State) -> list[Route]:
    streams = StreamService(state.db, state.hub, state.settings)
    sse = sse_event(
        "frames: `id` the event_id, `event` the event_type, `data` an EventRow; then `end`"
    )
    return [
        Route(
            "/api/executions/{id}/stream",
            ExecutionStream(streams),
            {
                "GET": Op(
                    "Events of one execution as Server-Sent Events, ending with `end`",
                    "api",
                    "executions",
                    sse,
                    query=(
                        query(
                            "since_event_id",
                            integer(minimum=0),
                            "start after this event id unless Last-Event-ID is sent",
                        ),
                    ),
                    errors=(404, 422),
                    content_type=SSE_MEDIA,
                )
            },
            path_params={"id": ID_PATH},
        ),
        Route(
            "/api/events/stream",
            AllEventsStream(streams),
            {
                "GET": Op(
                    "Events of every execution as Server-Sent Events",
                    "api",
                    "executions",
                    sse,
                    query=(
                        query("execution_id", array(ID_PATH, maxItems=MAX_EXECUTION_FILTERS)),
                        query("path", string(maxLength=512), "catalog path"),
                        query(
                            "event_type",
                            string(),
                            "comma list; a trailing * matches a prefix, e.g. playbook.*",
                        ),
                        query("status", string(maxLength=32)),
                    ),
                    errors=(422,),
                    content_type=SSE_MEDIA,
                )
            },
        ),
        Route(
            "/api/events/batch/{request_id}/stream",
            BatchStatusStream(state, streams),
            {
                "GET": Op(
                    "State changes of an accepted event batch as Server-Sent Events",
                    "api",
                    "worker",
                    sse_event("`status` frames: `data` the batch status JSON"),
                    query=(query("timeout_seconds", integer(minimum=1, maximum=300)),),
                    errors=(422,),
                    content_type=SSE_MEDIA,
                )
            },
            path_params={"request_id": ID_PATH},
        ),
    ]
