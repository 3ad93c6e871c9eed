"""The runtime contract (api.md §12), the OpenAPI document, and the internal routes (§11)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import falcon
import falcon.asgi

from app import auth
from app.fields import Fields, read_object
from app.openapi import ID_IN, any_object, array, body, build_document, integer, obj
from app.routing import Op, Route
from app.state import State
from core.ids import InvalidId, parse_id
from core.metrics import package_version

CONTRACT_VERSION = "2026-11-28"  # the date of the api.md this server implements
GROUPS = (
    "health",
    "catalog",
    "executions",
    "worker",
    "credentials",
    "keychain",
    "internal",
    "dashboard",
)
ROUTE_CLASSES = {"public": "public", "api": "protected", "worker": "worker", "internal": "internal"}
HEADERS = ["Authorization: Bearer <token>"]
MAX_PROJECT_EVENTS = 1000


def build_contract(state: State, routes: list[Route]) -> dict[str, Any]:
    by_class: dict[str, list[str]] = {name: [] for name in ROUTE_CLASSES.values()}
    groups: dict[str, list[str]] = {name: [] for name in GROUPS}
    for route in routes:
        for method, op in sorted(route.ops.items()):
            line = f"{method} {route.path}"
            by_class[ROUTE_CLASSES[op.auth]].append(line)
            groups.setdefault(op.group, []).append(line)
    settings = state.settings

    def endpoint(method: str, path: str) -> dict[str, str]:
        return {"method": method, "path": path}

    return {
        "server": "noetl-control-plane",
        "server_version": package_version(),
        "api_version": "1",
        "contract_version": CONTRACT_VERSION,
        "summary": "NoETL control plane: catalog, executions, worker claims and events over "
        "HTTP, backed by Postgres with a transactional outbox to NATS JetStream.",
        "routes": by_class,
        "groups": groups,
        "authentication": {
            auth.PUBLIC: {"required": False, "accepted_headers": HEADERS},
            auth.API: {"required": not state.auth.api_open, "accepted_headers": HEADERS},
            auth.WORKER: {"required": True, "accepted_headers": HEADERS},
            auth.INTERNAL: {"required": True, "accepted_headers": HEADERS},
        },
        "execution_contract": {
            "start": {
                **endpoint("POST", "/api/execute"),
                "body": "path or catalog_id, optional version, workload, "
                "resource_kind (playbook or agent)",
            },
            "batch": endpoint("POST", "/api/execute/batch"),
            "status": endpoint("GET", "/api/executions/{id}/status"),
            "detail": endpoint("GET", "/api/executions/{id}"),
            "events": endpoint("GET", "/api/executions/{id}/events"),
            "stream": endpoint("GET", "/api/executions/{id}/stream"),
            "cancel": endpoint("POST", "/api/executions/{id}/cancel"),
        },
        "cli_operation_mapping": {
            "exec": "/api/execute",
            "status": "/api/executions/{id}/status",
            "detail": "/api/executions/{id}",
            "events": "/api/executions/{id}/events",
            "cancel": "/api/executions/{id}/cancel",
            "catalog_list": "/api/catalog/list",
            "agent_catalog_list": "/api/catalog/agents/list",
            "catalog_register": "/api/catalog/register",
        },
        "agent_contract": {
            "model": "agent-as-playbook",
            "discovery": "/api/catalog/agents/list",
            "invocation": "/api/execute",
            "state": "/api/executions/{id}",
        },
        "streams": {
            "format": "text/event-stream",
            "heartbeat_seconds": settings.sse_heartbeat_seconds,
            "resume_header": "Last-Event-ID",
        },
        "limits": {
            "http_max_body_bytes": settings.http_max_body_bytes,
            "batch_max_events": settings.batch_max_events_per_request,
            "batch_max_payload_bytes": settings.batch_max_payload_bytes,
            "execute_batch_max_items": 1000,
            "executions_page_size_max": 200,
            "executions_offset_max": 5000,
        },
    }


class Document:
    """A JSON document built once from the final route table, on first request."""

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build = build
        self._body: bytes | None = None

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if self._body is None:
            self._body = json.dumps(self._build(), separators=(",", ":")).encode()
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body


class ProjectEvents:
    """`POST /api/internal/events/project`: 1..1000 envelopes, each with valid ids."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(await read_object(req, self.state.settings.http_max_body_bytes))
        events = f.value("events")
        if events is None:
            f.missing("events")
        elif not isinstance(events, list):
            f.add("events", "must be a list", "type_error")
        elif not 1 <= len(events) <= MAX_PROJECT_EVENTS:
            f.add("events", f"1..{MAX_PROJECT_EVENTS} events are required", "length_error")
        else:
            for index, item in enumerate(events):
                if not isinstance(item, dict):
                    f.add(("events", index), "must be an object", "type_error")
                    continue
                for name in ("event_id", "execution_id"):
                    try:
                        parse_id(item.get(name))
                    except InvalidId as exc:
                        f.add(("events", index, name), str(exc), "invalid_id")
        f.check()
        resp.media = await self.state.projection.project(events)


class OutboxPending:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        async with self.state.db.session() as s:
            pending = await s.value("outbox_pending")
        resp.media = {"pending": int(pending or 0)}


def routes(state: State, table: list[Route]) -> list[Route]:
    """`table` is the app's whole route list; the documents read it when first asked."""
    return [
        Route(
            "/api/runtime/contract",
            Document(lambda: build_contract(state, table)),
            {"GET": Op("The runtime contract of this server", "public", "health", any_object())},
        ),
        Route(
            "/api/openapi.json",
            Document(lambda: build_document(table)),
            {"GET": Op("This OpenAPI 3.1 document", "public", "health", any_object())},
        ),
        Route(
            "/api/internal/events/project",
            ProjectEvents(state),
            {
                "POST": Op(
                    "Project envelopes as the projector does (rows identical either way)",
                    "internal",
                    "internal",
                    obj(
                        {
                            "projected": integer(minimum=0),
                            "duplicates": integer(minimum=0),
                            "parked": integer(minimum=0),
                        }
                    ),
                    request=body(
                        {
                            "events": array(
                                body(
                                    {"event_id": ID_IN, "execution_id": ID_IN},
                                    ["event_id", "execution_id"],
                                ),
                                minItems=1,
                                maxItems=MAX_PROJECT_EVENTS,
                            )
                        },
                        ["events"],
                    ),
                )
            },
        ),
        Route(
            "/api/internal/outbox/pending-count",
            OutboxPending(state),
            {
                "GET": Op(
                    "Outbox rows not yet published (a KEDA scaler source)",
                    "internal",
                    "internal",
                    obj({"pending": integer(minimum=0)}),
                )
            },
        ),
    ]
