"""Execution routes (api.md §7.1, §7.2, §7.5, §7.6)."""

from __future__ import annotations

import re
from typing import Any

import falcon.asgi

from app.errors import ApiError, problem, validation_error
from app.fields import Fields, path_id, read_object
from app.openapi import (
    ID_IN,
    ID_OUT,
    ID_PATH,
    TIMESTAMP,
    any_object,
    array,
    body,
    boolean,
    integer,
    nullable,
    number,
    obj,
    query,
    string,
)
from app.routing import Op, Route
from app.services.executions import ExecuteRequest, ExecutionService
from app.state import State

POOL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
EXECUTE_BATCH_MAX = 1000
LIST_PAGE_MAX = 200
LIST_OFFSET_MAX = 5000
REASON_MAX = 1000

EXECUTE_BODY = body(
    {
        "path": string(minLength=1, maxLength=512),
        "catalog_id": ID_IN,
        "version": {"anyOf": [integer(minimum=1), string()]},
        "resource_kind": string(enum=["playbook", "agent"]),
        "payload": any_object(),
        "workload": any_object(),
        "parent_execution_id": ID_IN,
        "execution_pool": string(pattern=POOL.pattern),
        "trace": any_object(),
        "dedup": obj(
            {"key": string(minLength=1, maxLength=256), "window_secs": integer(minimum=1)},
            ["key"],
        ),
    }
)
STARTED = obj(
    {
        "execution_id": ID_OUT,
        "status": string(enum=["started", "duplicate"]),
        "commands_generated": integer(),
    }
)
BATCH_RESULT = obj(
    {
        "index": integer(),
        "status": string(enum=["started", "duplicate", "error"]),
        "execution_id": nullable(ID_OUT),
        "commands_generated": integer(),
        "error": nullable(string()),
        "code": nullable(string()),
    }
)
ENTRY_FIELDS = {
    "execution_id": ID_OUT,
    "catalog_id": string(),
    "path": string(),
    "version": integer(),
    "status": string(enum=["RUNNING", "COMPLETED", "FAILED", "CANCELLED"]),
    "start_time": nullable(TIMESTAMP),
    "end_time": nullable(TIMESTAMP),
    "duration_seconds": nullable(number()),
    "duration_human": nullable(string()),
    "progress": integer(),
    "result": {"type": "null"},
    "error": nullable(string()),
    "parent_execution_id": nullable(ID_OUT),
}
EVENT_ROW = obj(
    {
        "execution_id": ID_OUT,
        "event_id": integer(),
        "event_type": string(),
        "node_id": nullable(string()),
        "node_name": nullable(string()),
        "status": string(),
        "created_at": TIMESTAMP,
        "timestamp": TIMESTAMP,
        "context": nullable(any_object()),
        "result": nullable(any_object()),
        "error": nullable(string()),
        "catalog_id": nullable(ID_OUT),
        "parent_execution_id": nullable(ID_OUT),
        "parent_event_id": nullable(ID_OUT),
        "duration": nullable(number()),
    }
)
PAGINATION = obj(
    {
        "page": integer(),
        "page_size": integer(),
        "total_events": integer(),
        "total_pages": integer(),
        "has_next": boolean(),
        "has_prev": boolean(),
    }
)
PAGE_QUERY = (
    query("page", integer(minimum=1), "page number, default 1"),
    query("page_size", integer(minimum=10, maximum=500), "events per page, default 100"),
    query("since_event_id", ID_IN, "only events after this id"),
    query("event_type", string(), "exact event type"),
)
REASON_BODY = body({"reason": string(maxLength=REASON_MAX)})


def parse_execute(data: Any, loc: tuple[str | int, ...] = ()) -> ExecuteRequest:
    """A §7.2 body; ApiError 422 naming every bad field."""
    if not isinstance(data, dict):
        raise validation_error([problem(["body", *loc], "must be an object", "type_error")])
    f = Fields(data, "body", loc)
    path = f.string("path", max_len=512)
    catalog_id = f.ident("catalog_id")
    version: int | None = None
    raw_version = f.value("version")
    if not (isinstance(raw_version, str) and raw_version.strip().lower() == "latest"):
        version = f.integer("version", minimum=1)
    kind = f.string("resource_kind", max_len=64, lower=True)
    payload = f.mapping("payload") or {}
    workload = f.mapping("workload") or {}
    parent = f.ident("parent_execution_id")
    pool = f.string("execution_pool", max_len=64, pattern=POOL)
    trace = f.mapping("trace", max_bytes=64 * 1024)
    dedup_key, dedup_window = None, 300
    raw_dedup = f.value("dedup")
    if raw_dedup is not None:
        if not isinstance(raw_dedup, dict):
            f.add("dedup", "must be an object", "type_error")
        else:
            inner = Fields(raw_dedup, "body", (*loc, "dedup"))
            dedup_key = inner.string("key", required=True, max_len=256)
            dedup_window = (
                inner.integer("window_secs", default=300, minimum=1, maximum=86400) or 300
            )
            f.problems += inner.problems
    if path is None and catalog_id is None and not f.problems:
        f.add("path", "either 'path' or 'catalog_id' must be provided", "missing")
    f.check()
    if kind is not None and kind not in ("playbook", "agent"):
        raise ApiError(422, "not_executable", f"Catalog kind '{kind}' is not executable")
    return ExecuteRequest(
        path=path,
        catalog_id=catalog_id,
        version=version,
        resource_kind=kind,
        workload={**workload, **payload},
        parent_execution_id=parent,
        execution_pool=pool,
        trace=trace,
        dedup_key=dedup_key,
        dedup_window=dedup_window,
    )


def _page(f: Fields, name: str, default: int, low: int, high: int) -> int:
    """An integer query value clamped into low..high (422 when it is not an integer)."""
    value = f.integer(name, default=default, minimum=None, maximum=None)
    return default if value is None else max(low, min(high, value))


class Service:
    def __init__(self, state: State) -> None:
        self.state = state
        self.service: ExecutionService = state.execution.executions
        self.max_body = state.settings.http_max_body_bytes


class Execute(Service):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = parse_execute(await read_object(req, self.max_body))
        started = await self.service.execute(request)
        resp.media = {
            "execution_id": str(started.execution_id),
            "status": started.status,
            "commands_generated": started.commands_generated,
        }


class ExecuteBatch(Service):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        data = await read_object(req, self.max_body)
        items = data.get("executions")
        if not isinstance(items, list):
            raise validation_error(
                [problem(["body", "executions"], "must be a list", "type_error")]
            )
        if not 1 <= len(items) <= EXECUTE_BATCH_MAX:
            raise validation_error(
                [problem(["body", "executions"], f"1..{EXECUTE_BATCH_MAX} items", "length_error")]
            )
        results = []
        for index, item in enumerate(items):
            try:
                started = await self.service.execute(parse_execute(item, ("executions", index)))
                results.append(
                    {
                        "index": index,
                        "status": started.status,
                        "execution_id": str(started.execution_id),
                        "commands_generated": started.commands_generated,
                        "error": None,
                        "code": None,
                    }
                )
            except ApiError as exc:
                if exc.status == 503:
                    raise
                detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
                results.append(
                    {
                        "index": index,
                        "status": "error",
                        "execution_id": None,
                        "commands_generated": 0,
                        "error": detail,
                        "code": exc.code,
                    }
                )
        started_n = sum(1 for r in results if r["status"] == "started")
        duplicates = sum(1 for r in results if r["status"] == "duplicate")
        resp.media = {
            "count": len(results),
            "started": started_n,
            "duplicates": duplicates,
            "failed": len(results) - started_n - duplicates,
            "results": results,
        }


class ListExecutions(Service):
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(req.params, "query")
        page = max(1, f.integer("page", default=1, minimum=None, maximum=None) or 1)
        page_size = _page(f, "page_size", 100, 1, LIST_PAGE_MAX)
        f.check()
        if (page - 1) * page_size > LIST_OFFSET_MAX:
            raise ApiError(
                422,
                "offset_too_deep",
                [problem(["query", "page"], f"offset above {LIST_OFFSET_MAX}", "offset_too_deep")],
            )
        resp.media = await self.service.listing(page, page_size)


def _event_query(f: Fields) -> dict[str, Any]:
    return {
        "page": max(1, f.integer("page", default=1, minimum=None, maximum=None) or 1),
        "page_size": _page(f, "page_size", 100, 10, 500),
        "since_event_id": f.ident("since_event_id", allow_zero=True),
        "event_type": f.string("event_type", max_len=128),
    }


class Detail(Service):
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, id: str) -> None:
        execution_id = path_id("id", id)
        f = Fields(req.params, "query")
        paging = _event_query(f)
        include = f.boolean("include_events", True)
        f.check()
        if include:
            found, events, pagination = await self.service.events_page(execution_id, **paging)
        else:
            found, events, pagination = await self.service.derived(execution_id), [], None
        resp.media = {
            **found.entry(),
            "events": events,
            "events_included": include,
            "events_endpoint": f"/api/executions/{execution_id}/events",
            "pagination": pagination,
        }


class Events(Service):
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, id: str) -> None:
        execution_id = path_id("id", id)
        f = Fields(req.params, "query")
        paging = _event_query(f)
        f.check()
        found, events, pagination = await self.service.events_page(execution_id, **paging)
        entry = found.entry()
        resp.media = {
            "execution_id": entry["execution_id"],
            "path": entry["path"],
            "status": entry["status"],
            "events": events,
            "pagination": pagination,
        }


class Status(Service):
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, id: str) -> None:
        execution_id = path_id("id", id)
        f = Fields(req.params, "query")
        full = f.boolean("full", False)
        f.check()
        resp.media = await self.service.status(execution_id, full)


class Cancel(Service):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, id: str) -> None:
        execution_id = path_id("id", id)
        f = Fields(await read_object(req, self.max_body))
        reason = f.string("reason", default="User requested cancellation", max_len=REASON_MAX)
        cascade = f.boolean("cascade", True)
        f.check()
        assert reason is not None
        resp.media = await self.service.cancel(execution_id, reason, cascade)


class CancellationCheck(Service):
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, id: str) -> None:
        execution_id = path_id("id", id)
        found = await self.service.derived(execution_id)
        resp.media = {
            "execution_id": str(execution_id),
            "status": found.status,
            "event_type": found.latest_type,
            "cancelled": found.cancelled,
            "completed": found.status == "COMPLETED",
            "failed": found.status == "FAILED",
        }


class Finalize(Service):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, id: str) -> None:
        execution_id = path_id("id", id)
        f = Fields(await read_object(req, self.max_body))
        reason = f.string("reason", default="Abandoned or timed out", max_len=REASON_MAX)
        f.check()
        assert reason is not None
        resp.media = await self.service.finalize(execution_id, reason)


class Cleanup(Service):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(await read_object(req, self.max_body))
        minutes = f.integer("older_than_minutes", default=5, minimum=1, maximum=525600)
        dry_run = f.boolean("dry_run", False)
        f.check()
        assert minutes is not None
        resp.media = await self.service.cleanup(minutes, dry_run)


def routes(state: State) -> list[Route]:
    entry = obj(ENTRY_FIELDS)
    detail = obj(
        {
            **ENTRY_FIELDS,
            "events": array(EVENT_ROW),
            "events_included": boolean(),
            "events_endpoint": string(),
            "pagination": nullable(PAGINATION),
        }
    )
    events = obj(
        {
            "execution_id": ID_OUT,
            "path": string(),
            "status": string(),
            "events": array(EVENT_ROW),
            "pagination": PAGINATION,
        }
    )
    status = obj(
        {
            "execution_id": ID_OUT,
            "status": string(),
            "current_step": nullable(string()),
            "completed_steps": array(string()),
            "failed": boolean(),
            "completed": boolean(),
            "completion_inferred": boolean(),
            "variables": any_object(),
            "start_time": nullable(TIMESTAMP),
            "end_time": nullable(TIMESTAMP),
            "duration_seconds": nullable(number()),
            "duration_human": nullable(string()),
            "source": string(enum=["event_log_fallback"]),
        },
        required=[
            "execution_id",
            "status",
            "current_step",
            "completed_steps",
            "failed",
            "completed",
            "completion_inferred",
            "variables",
            "start_time",
            "end_time",
            "duration_seconds",
            "duration_human",
        ],
    )
    cancelled = obj(
        {
            "status": string(enum=["cancelled", "already_completed"]),
            "execution_id": ID_OUT,
            "cancelled_executions": array(ID_OUT),
            "message": string(),
        }
    )
    check = obj(
        {
            "execution_id": ID_OUT,
            "status": string(),
            "event_type": nullable(string()),
            "cancelled": boolean(),
            "completed": boolean(),
            "failed": boolean(),
        }
    )
    finalized = obj(
        {
            "status": string(enum=["finalized", "already_completed", "not_found"]),
            "execution_id": ID_OUT,
            "message": string(),
        }
    )
    cleaned = obj(
        {"cancelled_count": integer(), "execution_ids": array(ID_OUT), "message": string()}
    )
    batch = obj(
        {
            "count": integer(),
            "started": integer(),
            "duplicates": integer(),
            "failed": integer(),
            "results": array(BATCH_RESULT),
        }
    )
    ids = {"id": ID_PATH}
    return [
        Route(
            "/api/execute",
            Execute(state),
            {
                "POST": Op(
                    "Start an execution of a playbook or agent",
                    "api",
                    "executions",
                    STARTED,
                    request=EXECUTE_BODY,
                    errors=(404, 422),
                )
            },
        ),
        Route(
            "/api/execute/batch",
            ExecuteBatch(state),
            {
                "POST": Op(
                    "Start up to 1000 executions, each in its own transaction",
                    "api",
                    "executions",
                    batch,
                    request=body(
                        {"executions": array(EXECUTE_BODY, minItems=1, maxItems=EXECUTE_BATCH_MAX)},
                        ["executions"],
                    ),
                )
            },
        ),
        Route(
            "/api/executions",
            ListExecutions(state),
            {
                "GET": Op(
                    "Executions, newest first (the projector's read model)",
                    "api",
                    "executions",
                    array(entry),
                    query=(
                        query("page", integer(), "page number, default 1"),
                        query("page_size", integer(), "1..200, default 100"),
                    ),
                    errors=(422,),
                )
            },
        ),
        Route(
            "/api/executions/cleanup",
            Cleanup(state),
            {
                "POST": Op(
                    "Cancel executions stuck longer than older_than_minutes",
                    "api",
                    "executions",
                    cleaned,
                    request=body(
                        {
                            "older_than_minutes": integer(minimum=1, maximum=525600),
                            "dry_run": boolean(),
                        }
                    ),
                )
            },
        ),
        Route(
            "/api/executions/{id}",
            Detail(state),
            {
                "GET": Op(
                    "An execution with a page of its events (newest first)",
                    "api",
                    "executions",
                    detail,
                    query=(*PAGE_QUERY, query("include_events", boolean(), "default true")),
                    errors=(404, 422),
                )
            },
            path_params=ids,
        ),
        Route(
            "/api/executions/{id}/events",
            Events(state),
            {
                "GET": Op(
                    "A page of an execution's events (newest first)",
                    "api",
                    "executions",
                    events,
                    query=PAGE_QUERY,
                    errors=(404, 422),
                )
            },
            path_params=ids,
        ),
        Route(
            "/api/executions/{id}/status",
            Status(state),
            {
                "GET": Op(
                    "Status, steps and variables from the engine state",
                    "api",
                    "executions",
                    status,
                    query=(query("full", boolean(), "no truncation of large variables"),),
                    errors=(404, 422),
                )
            },
            path_params=ids,
        ),
        Route(
            "/api/executions/{id}/cancel",
            Cancel(state),
            {
                "POST": Op(
                    "Cancel an execution and, with cascade, its descendants",
                    "api",
                    "executions",
                    cancelled,
                    request=body({"reason": string(maxLength=REASON_MAX), "cascade": boolean()}),
                    errors=(404,),
                )
            },
            path_params=ids,
        ),
        Route(
            "/api/executions/{id}/cancellation-check",
            CancellationCheck(state),
            {
                "GET": Op(
                    "Whether an execution was cancelled, completed or failed",
                    "api",
                    "executions",
                    check,
                    errors=(404, 422),
                )
            },
            path_params=ids,
        ),
        Route(
            "/api/executions/{id}/finalize",
            Finalize(state),
            {
                "POST": Op(
                    "Fail an abandoned execution and cancel its open commands",
                    "api",
                    "executions",
                    finalized,
                    request=REASON_BODY,
                )
            },
            path_params=ids,
        ),
    ]
