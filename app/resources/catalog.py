"""Catalog routes (api.md §6)."""

from __future__ import annotations

import re

import falcon
import falcon.asgi

from app import auth
from app.errors import ApiError, not_found, problem, validation_error
from app.fields import Fields, read_object
from app.openapi import (
    ANY,
    ID_IN,
    ID_OUT,
    TIMESTAMP,
    any_object,
    array,
    body,
    boolean,
    integer,
    nullable,
    obj,
    query,
    string,
)
from app.routing import Op, Route
from app.services.catalog import normalise_kind, path_problem
from app.services.ui_schema import ui_schema
from app.state import State

CATALOG_ENTRY = obj(
    {
        "catalog_id": ID_OUT,
        "path": string(),
        "version": integer(),
        "kind": string(),
        "content": nullable(string()),
        "layout": nullable(any_object()),
        "payload": nullable(any_object()),
        "meta": nullable(any_object()),
        "created_at": TIMESTAMP,
        "archived_at": nullable(TIMESTAMP),
    }
)
ENTRIES = obj({"entries": array(CATALOG_ENTRY)})
VERSION_IN = {
    "anyOf": [integer(minimum=1), string()],
    "description": "int, numeric string or latest",
}
FIELD = obj(
    {
        "name": string(),
        "kind": string(),
        "default": ANY,
        "description": nullable(string()),
        "secret": boolean(),
        "credential_glob": nullable(string()),
        "options": nullable(array(string())),
        "children": nullable(array(any_object())),
    }
)
UI_SCHEMA = obj(
    {
        "path": string(),
        "version": integer(),
        "kind": string(),
        "title": nullable(string()),
        "description_markdown": nullable(string()),
        "exposed_in_ui": boolean(),
        "fields": array(FIELD),
        "generated_at": TIMESTAMP,
    }
)
CHANGE_BODY = body({"path": string(), "version": integer(minimum=1)}, required=["path"])
VERSION_REF = array(obj({"catalog_id": ID_OUT, "version": integer()}))
UI_SCHEMA_SINK = re.compile(r"^/api/catalog/(?P<path>.+)/ui_schema/?$")


def _version(f: Fields, name: str = "version") -> int | None:
    """An int >= 1, a numeric string, or `latest` (any case; None)."""
    raw = f.value(name)
    if isinstance(raw, str) and raw.strip().lower() == "latest":
        return None
    return f.integer(name, minimum=1)


def _capabilities(f: Fields) -> list[str] | None:
    one = f.string("capability", max_len=256)
    many = f.string_list("capabilities", max_items=50)
    if one is None and many is None:
        return None
    return ([one] if one else []) + (many or [])


class Register:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(await read_object(req, self.state.settings.http_max_body_bytes))
        content = f.string(
            "content", required=True, max_len=self.state.settings.http_max_body_bytes
        )
        resource_type = f.string("resource_type", default="Playbook", max_len=64)
        f.check()
        assert content is not None and resource_type is not None
        done = await self.state.catalog.register(content, resource_type)
        resp.media = {
            "status": "success",
            "message": f"Resource '{done.path}' version '{done.version}' registered.",
            "path": done.path,
            "version": done.version,
            "catalog_id": str(done.catalog_id),
            "kind": done.kind,
        }


class ListEntries:
    def __init__(self, state: State, agents: bool) -> None:
        self.state = state
        self.agents = agents

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(await read_object(req, self.state.settings.http_max_body_bytes))
        kind = None
        if not self.agents:
            resource_type = f.string("resource_type", max_len=64)
            kind = normalise_kind(resource_type) if resource_type else None
        path = f.string("path", max_len=512)
        agent_only = self.agents or f.boolean("agent_only")
        include_archived = False if self.agents else f.boolean("include_archived")
        capabilities = _capabilities(f)
        f.check()
        resp.content_type = falcon.MEDIA_JSON
        resp.data = await self.state.catalog.list_body(
            kind=kind,
            path=path,
            agent_only=agent_only or capabilities is not None,
            capabilities=capabilities,
            include_archived=include_archived,
        )


class Resource:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(await read_object(req, self.state.settings.http_max_body_bytes))
        catalog_id = f.ident("catalog_id")
        path = f.string("path", max_len=512)
        version = _version(f)
        f.check()
        if catalog_id is None and path is None:
            raise validation_error([problem(["body"], "catalog_id or path is required", "missing")])
        entry = None
        if catalog_id is not None or path_problem(path or "") is None:
            entry = await self.state.catalog.lookup(
                catalog_id=catalog_id, path=path, version=version
            )
        if entry is None:
            raise not_found("catalog_entry_not_found", "Catalog entry not found")
        resp.content_type = falcon.MEDIA_JSON
        resp.data = entry.body


class UiSchemaSink:
    """`GET /api/catalog/{path}/ui_schema`: a sink, because the path contains `/`."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def __call__(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, path: str, **_: str
    ) -> None:
        req.context.route = "/api/catalog/{path}/ui_schema"
        if req.method == "OPTIONS":
            resp.set_header("Allow", "GET, OPTIONS")
            return
        if req.method != "GET":
            raise falcon.HTTPMethodNotAllowed(["GET", "OPTIONS"])
        self.state.auth.require(req.context.caller, auth.API)
        f = Fields(req.params, "query")
        version = _version(f)
        f.check()
        entry = None
        if path_problem(path) is None:
            entry = await self.state.catalog.lookup(path=path, version=version)
        if entry is None:
            shown = "latest" if version is None else str(version)
            raise ApiError(404, "catalog_entry_not_found", f"resource not found: {path}@{shown}")
        resp.media = ui_schema(entry)


class Change:
    """Soft delete and restore (internal class)."""

    def __init__(self, state: State, action: str) -> None:
        self.state = state
        self.action = action

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(await read_object(req, self.state.settings.http_max_body_bytes))
        path = f.string("path", required=True, max_len=512)
        version = f.integer("version", minimum=1)
        f.check()
        assert path is not None
        changed = await self.state.catalog.change(self.action, path, version)
        verb = "Archived" if self.action == "delete" else "Restored"
        key = "deleted" if self.action == "delete" else "restored"
        resp.media = {
            "status": "success",
            "message": f"{verb} {len(changed)} version(s) of '{path}'.",
            "path": path,
            key: changed,
            "count": len(changed),
        }


def routes(state: State) -> list[Route]:
    list_body = body(
        {
            "resource_type": string(),
            "path": string(),
            "agent_only": boolean(),
            "capability": string(),
            "capabilities": array(string(), maxItems=50),
            "include_archived": boolean(),
        }
    )
    agents_body = body(
        {"path": string(), "capability": string(), "capabilities": array(string(), maxItems=50)}
    )
    registered = obj(
        {
            "status": string(enum=["success"]),
            "message": string(),
            "path": string(),
            "version": integer(),
            "catalog_id": ID_OUT,
            "kind": string(),
        }
    )

    def changed(key: str) -> dict:
        return obj(
            {
                "status": string(enum=["success"]),
                "message": string(),
                "path": string(),
                key: VERSION_REF,
                "count": integer(),
            }
        )

    return [
        Route(
            "/api/catalog/register",
            Register(state),
            {
                "POST": Op(
                    "Register a playbook or other resource as a new version",
                    "api",
                    "catalog",
                    registered,
                    request=body({"content": string(), "resource_type": string()}, ["content"]),
                )
            },
        ),
        Route(
            "/api/catalog/list",
            ListEntries(state, agents=False),
            {"POST": Op("List catalog entries", "api", "catalog", ENTRIES, request=list_body)},
        ),
        Route(
            "/api/catalog/agents/list",
            ListEntries(state, agents=True),
            {"POST": Op("List agent entries", "api", "catalog", ENTRIES, request=agents_body)},
        ),
        Route(
            "/api/catalog/resource",
            Resource(state),
            {
                "POST": Op(
                    "One catalog entry by id, or by path and version",
                    "api",
                    "catalog",
                    CATALOG_ENTRY,
                    request=body({"catalog_id": ID_IN, "path": string(), "version": VERSION_IN}),
                    errors=(404,),
                )
            },
        ),
        Route(
            "/api/catalog/{path}/ui_schema",
            UiSchemaSink(state),
            {
                "GET": Op(
                    "Form fields inferred from the workload",
                    "api",
                    "catalog",
                    UI_SCHEMA,
                    query=(query("version", VERSION_IN, "latest or an int >= 1"),),
                    errors=(404, 422),
                )
            },
            path_params={"path": string(minLength=1)},
            sink=UI_SCHEMA_SINK,
        ),
        Route(
            "/api/catalog/delete",
            Change(state, "delete"),
            {
                "POST": Op(
                    "Archive one or every version of a path",
                    "internal",
                    "catalog",
                    changed("deleted"),
                    request=CHANGE_BODY,
                )
            },
        ),
        Route(
            "/api/catalog/restore",
            Change(state, "restore"),
            {
                "POST": Op(
                    "Restore archived versions of a path",
                    "internal",
                    "catalog",
                    changed("restored"),
                    request=CHANGE_BODY,
                )
            },
        ),
    ]
