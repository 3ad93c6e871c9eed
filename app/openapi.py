"""The OpenAPI 3.1 document of `/api/openapi.json`, built from the route table, and the small
schema vocabulary the resources use to describe their bodies."""

from __future__ import annotations

import re
from typing import Any

from app.routing import Param, Route, Schema
from core.ids import MAX_ID
from core.metrics import package_version

# ---------------------------------------------------------------------- schema vocabulary


def string(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def integer(**extra: Any) -> Schema:
    return {"type": "integer", **extra}


def number() -> Schema:
    return {"type": "number"}


def boolean() -> Schema:
    return {"type": "boolean"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def any_object() -> Schema:
    return {"type": "object"}


def obj(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    """An object; every property is required unless `required` names a subset."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def body(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    """A request body: only `required` fields are required; unknown fields are ignored."""
    return {"type": "object", "properties": properties, "required": required or []}


ANY: Schema = {}
ID_OUT = string(pattern=r"^[0-9]{1,19}$")
ID_IN: Schema = {
    "anyOf": [integer(minimum=1, maximum=MAX_ID), string(pattern=r"^[0-9]{1,19}$")],
    "description": "an id: a JSON integer or a decimal string in 1..2^63-1",
}
ID_PATH = string(pattern=r"^[0-9]{1,19}$")
TIMESTAMP = string(format="date-time")
STATUS_OK = string(enum=["ok"])

VALIDATION_ITEM = obj(
    {
        "loc": array({"anyOf": [string(), integer()]}),
        "msg": string(),
        "type": string(),
        "path": string(),
        "line": nullable(integer()),
    }
)
ERROR = {
    "type": "object",
    "properties": {
        "detail": {"anyOf": [string(), any_object(), array(VALIDATION_ITEM)]},
        "code": string(pattern=r"^[a-z][a-z0-9_]*$"),
        "errors": array(VALIDATION_ITEM),
    },
    "required": ["detail", "code"],
}


def query(name: str, schema: Schema, description: str = "", required: bool = False) -> Param:
    return Param(name, schema, description, required)


# ---------------------------------------------------------------------- the document

_ERROR_TEXT = {
    400: "invalid JSON",
    401: "missing or unknown token",
    403: "token of a lower class",
    404: "not found",
    409: "conflict",
    413: "body too large",
    415: "unsupported content type",
    422: "validation error",
    500: "internal error",
    503: "unavailable; see Retry-After",
}


def _operation_id(method: str, path: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", path.removeprefix("/api")).strip("_")
    return f"{method.lower()}_{slug or 'root'}"


def build_document(routes: list[Route], server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in routes:
        item = paths.setdefault(route.path, {})
        for method, op in sorted(route.ops.items()):
            parameters = [
                {"name": name, "in": "path", "required": True, "schema": schema}
                for name, schema in route.path_params.items()
            ]
            parameters += [
                {
                    "name": p.name,
                    "in": "query",
                    "required": p.required,
                    "schema": p.schema,
                    **({"description": p.description} if p.description else {}),
                }
                for p in op.query
            ]
            success_content = {op.content_type: {"schema": op.response}}
            responses: dict[str, Any] = {
                str(op.status): {"description": "success", "content": success_content}
            }
            codes = set(op.errors) | {500, 503}
            if op.request is not None:
                codes |= {400, 413, 415, 422}
            if op.auth != "public":
                codes |= {401, 403}
            for code in sorted(codes):
                responses[str(code)] = {
                    "description": _ERROR_TEXT.get(code, "error"),
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            operation: dict[str, Any] = {
                "operationId": _operation_id(method, route.path),
                "summary": op.summary,
                "tags": [op.group],
                "x-auth-class": op.auth,
                "security": [] if op.auth == "public" else [{"bearer": []}],
                "parameters": parameters,
                "responses": responses,
            }
            if op.request is not None:
                operation["requestBody"] = {
                    "required": False,
                    "content": {"application/json": {"schema": op.request}},
                }
            item[method.lower()] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "NoETL control plane API",
            "version": package_version(),
            "description": "Contract: shared/spec/api.md. Errors are {detail, code}.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR, "ValidationItem": VALIDATION_ITEM},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document
