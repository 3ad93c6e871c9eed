"""Worker pool registry (api.md §8.4) and execution variables (api.md §8.5)."""

from __future__ import annotations

import re
from typing import Any

import falcon.asgi

from app import auth
from app.errors import problem, validation_error
from app.fields import Fields, json_size, path_id, read_object, storable_json
from app.openapi import (
    ANY,
    ID_PATH,
    TIMESTAMP,
    any_object,
    array,
    body,
    integer,
    nullable,
    obj,
    query,
    string,
)
from app.routing import Op, Route
from app.services.workers import Registration, Variable
from app.state import State

META_MAX_BYTES = 64 * 1024
VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
VAR_TYPES = ("user_defined", "step_result", "computed", "iterator_state")
VAR_VALUE_MAX_BYTES = 1024 * 1024
MAX_VARIABLES = 100


def parse_registration(f: Fields) -> Registration | None:
    name = f.string("name", required=True, max_len=256)
    kind_field = f.first("component_type", "kind") or "component_type"
    f.string(kind_field, default="worker_pool", choices=("worker_pool",))
    runtime = f.value("runtime")
    if runtime is not None:
        if isinstance(runtime, str):
            f.string("runtime", max_len=256)
        elif not isinstance(runtime, dict):
            f.add("runtime", "must be a string or an object", "type_error")
        else:
            f.mapping("runtime", max_bytes=META_MAX_BYTES)
    uri = f.string(f.first("uri", "base_url") or "uri", max_len=2048)
    status = f.string("status", default="ready", max_len=32, lower=True)
    capacity = f.integer("capacity", minimum=0)
    labels = f.mapping("labels", max_bytes=META_MAX_BYTES)
    pid = f.integer("pid", minimum=0)
    hostname = f.string("hostname", max_len=255)
    meta = f.mapping("meta", max_bytes=META_MAX_BYTES)
    if f.problems or name is None or status is None:
        return None
    return Registration(name, runtime, uri, status, capacity, labels, pid, hostname, meta)


class Register:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(await read_object(req, self.state.settings.http_max_body_bytes))
        registration = parse_registration(f)
        f.check()
        assert registration is not None
        resp.media = await self.state.workers.register(registration)


class Heartbeat:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(await read_object(req, self.state.settings.http_max_body_bytes))
        name = f.string("name", required=True, max_len=256)
        raw = f.value("registration")
        registration = None
        if raw is not None and not isinstance(raw, dict):
            f.add("registration", "must be an object", "type_error")
        elif isinstance(raw, dict):
            inner = Fields({**raw, "name": raw.get("name") or name}, "body", ("registration",))
            registration = parse_registration(inner)
            f.problems += inner.problems
        f.check()
        assert name is not None
        resp.media = await self.state.workers.heartbeat(name, registration)


class Deregister:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(await read_object(req, self.state.settings.http_max_body_bytes))
        name = f.string("name", required=True, max_len=256)
        f.string("component_type", default="worker_pool", max_len=64)
        f.check()
        assert name is not None
        resp.media = await self.state.workers.deregister(name)

    on_delete = on_post


class Pools:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(req.params, "query")
        runtime = f.string("runtime", max_len=256)
        status = f.string("status", max_len=32, lower=True)
        f.check()
        resp.media = await self.state.workers.list(runtime, status)


def parse_variables(data: dict[str, Any]) -> list[Variable]:
    """The three accepted POST shapes of api.md §8.5."""
    f = Fields(data)
    items: list[tuple[tuple[str | int, ...], Any, Any, Any, Any]] = []
    var_type: str | None
    source_step: str | None
    raw = data.get("variables")
    if "variables" not in data:
        items = [(("body", k), k, v, None, None) for k, v in data.items()]
        var_type, source_step = "user_defined", None
    else:
        var_type = f.string("var_type", default="user_defined", choices=VAR_TYPES)
        source_step = f.string("source_step", max_len=512)
        if isinstance(raw, dict):
            items = [(("variables", k), k, v, None, None) for k, v in raw.items()]
        elif isinstance(raw, list):
            for i, item in enumerate(raw):
                if not isinstance(item, dict):
                    f.add(("variables", i), "must be an object", "type_error")
                    continue
                items.append(
                    (
                        ("variables", i),
                        item.get("var_name"),
                        item.get("var_value"),
                        item.get("var_type"),
                        item.get("source_step"),
                    )
                )
        else:
            f.add("variables", "must be an object or a list", "type_error")
    if not f.problems and not 1 <= len(items) <= MAX_VARIABLES:
        f.add("variables", f"1..{MAX_VARIABLES} variables are required", "length_error")
    out: list[Variable] = []
    for loc, name, value, item_type, item_step in items:
        where = loc[1:] if loc[0] == "body" else loc
        if not isinstance(name, str) or not VAR_NAME.match(name):
            f.add(where, "variable name must match ^[A-Za-z_][A-Za-z0-9_.-]{0,127}$", "name_error")
            continue
        if not storable_json(value) or json_size(value) > VAR_VALUE_MAX_BYTES:
            f.add(where, "value must be storable JSON of at most 1 MiB", "value_error")
            continue
        if item_type is not None and item_type not in VAR_TYPES:
            f.add((*where, "var_type"), f"must be one of {', '.join(VAR_TYPES)}", "enum_error")
            continue
        if item_step is not None and (not isinstance(item_step, str) or len(item_step) > 512):
            f.add((*where, "source_step"), "must be a string of at most 512", "type_error")
            continue
        out.append(
            Variable(name, value, item_type or var_type or "user_defined", item_step or source_step)
        )
    f.check()
    return out


class VarsOfExecution:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, eid: str) -> None:
        reveal = req.context.caller.at_least(auth.WORKER)
        resp.media = await self.state.vars.list(path_id("eid", eid), reveal)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, eid: str) -> None:
        execution_id = path_id("eid", eid)
        data = await read_object(req, self.state.settings.http_max_body_bytes)
        if not data:
            raise validation_error([problem(["body"], "no variables given", "missing")])
        resp.media = await self.state.vars.set(execution_id, parse_variables(data))

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, eid: str
    ) -> None:
        resp.media = await self.state.vars.delete_all(path_id("eid", eid))


class Var:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, eid: str, name: str
    ) -> None:
        reveal = req.context.caller.at_least(auth.WORKER)
        resp.media = await self.state.vars.get(path_id("eid", eid), _var_name(name), reveal)

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, eid: str, name: str
    ) -> None:
        resp.media = await self.state.vars.delete(path_id("eid", eid), _var_name(name))


def _var_name(name: str) -> str:
    if not VAR_NAME.match(name):
        raise validation_error(
            [problem(["path", "name"], "must match ^[A-Za-z_][A-Za-z0-9_.-]{0,127}$", "name_error")]
        )
    return name


def routes(state: State) -> list[Route]:
    registration = body(
        {
            "name": string(minLength=1, maxLength=256),
            "component_type": string(enum=["worker_pool"]),
            "kind": string(enum=["worker_pool"]),
            "runtime": {"anyOf": [string(), any_object()]},
            "uri": string(),
            "base_url": string(),
            "status": string(),
            "capacity": integer(minimum=0),
            "labels": any_object(),
            "pid": integer(minimum=0),
            "hostname": string(),
            "meta": any_object(),
        },
        ["name"],
    )
    registered = obj(
        {
            "status": string(enum=["ok"]),
            "name": string(),
            "runtime_id": string(),
            "kind": string(enum=["worker_pool"]),
            "runtime": ANY,
        }
    )
    beat = obj(
        {"status": string(enum=["ok", "recreated"]), "name": string(), "runtime_id": string()}
    )
    gone = obj(
        {
            "status": string(enum=["ok"]),
            "name": string(),
            "kind": string(enum=["worker_pool"]),
            "runtime_id": {"type": "null"},
            "runtime": {"type": "null"},
        }
    )
    deregister_op = Op(
        "Mark a worker pool offline (its claims become reclaimable)",
        "api",
        "worker",
        gone,
        request=body({"name": string(), "component_type": string()}, ["name"]),
    )
    pools = obj(
        {
            "items": array(
                obj(
                    {
                        "name": string(),
                        "runtime": any_object(),
                        "status": string(),
                        "capacity": nullable(integer()),
                        "labels": nullable(any_object()),
                        "heartbeat": TIMESTAMP,
                        "created_at": TIMESTAMP,
                        "updated_at": TIMESTAMP,
                    }
                )
            ),
            "count": integer(),
            "runtime": nullable(string()),
            "status": nullable(string()),
            "error": {"type": "null"},
        }
    )
    variable = obj(
        {
            "value": ANY,
            "type": string(),
            "source_step": nullable(string()),
            "created_at": TIMESTAMP,
            "accessed_at": TIMESTAMP,
            "access_count": integer(),
        }
    )
    vars_set = obj(
        {"execution_id": integer(), "variables_set": integer(), "var_names": array(string())}
    )
    eid = {"eid": ID_PATH}
    return [
        Route(
            "/api/worker/pool/register",
            Register(state),
            {
                "POST": Op(
                    "Register or refresh a worker pool",
                    "api",
                    "worker",
                    registered,
                    request=registration,
                )
            },
        ),
        Route(
            "/api/worker/pool/heartbeat",
            Heartbeat(state),
            {
                "POST": Op(
                    "Heartbeat of a worker pool",
                    "api",
                    "worker",
                    beat,
                    request=body({"name": string(), "registration": any_object()}, ["name"]),
                    errors=(404,),
                )
            },
        ),
        Route(
            "/api/worker/pool/deregister",
            Deregister(state),
            {"POST": deregister_op, "DELETE": deregister_op},
        ),
        Route(
            "/api/worker/pools",
            Pools(state),
            {
                "GET": Op(
                    "Worker pools; silent ones show as offline",
                    "api",
                    "worker",
                    pools,
                    query=(query("runtime", string()), query("status", string())),
                    errors=(422,),
                )
            },
        ),
        Route(
            "/api/vars/{eid}",
            VarsOfExecution(state),
            {
                "GET": Op(
                    "Variables of an execution",
                    "api",
                    "executions",
                    obj(
                        {
                            "execution_id": integer(),
                            "variables": {"type": "object", "additionalProperties": variable},
                            "count": integer(),
                        }
                    ),
                    errors=(422,),
                ),
                "POST": Op(
                    "Set variables (upsert)",
                    "api",
                    "executions",
                    vars_set,
                    request={"type": "object", "description": "variables map, list, or a bare map"},
                ),
                "DELETE": Op(
                    "Delete every variable of an execution",
                    "api",
                    "executions",
                    obj({"execution_id": integer(), "deleted_count": integer()}),
                    errors=(422,),
                ),
            },
            path_params=eid,
        ),
        Route(
            "/api/vars/{eid}/{name}",
            Var(state),
            {
                "GET": Op(
                    "One variable (counts an access)",
                    "api",
                    "executions",
                    obj(
                        {
                            "execution_id": integer(),
                            "var_name": string(),
                            "value": ANY,
                            "type": string(),
                            "source_step": nullable(string()),
                            "created_at": TIMESTAMP,
                            "accessed_at": TIMESTAMP,
                            "access_count": integer(),
                        }
                    ),
                    errors=(404, 422),
                ),
                "DELETE": Op(
                    "Delete one variable",
                    "api",
                    "executions",
                    obj(
                        {
                            "execution_id": integer(),
                            "var_name": string(),
                            "deleted": {"type": "boolean"},
                        }
                    ),
                    errors=(422,),
                ),
            },
            path_params={**eid, "name": string(pattern=VAR_NAME.pattern)},
        ),
    ]
