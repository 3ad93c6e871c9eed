"""The one route table: each entry mounts a resource AND carries its OpenAPI description.

A resource module exposes `routes(state) -> list[Route]`; `app.asgi` mounts every route and
`app.openapi` documents the same list, so a route cannot exist without its document (a test
compares falcon's router with the document). Paths that falcon cannot template (a field that
contains `/` followed by more segments) are mounted as sinks with a regex.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

Schema = dict[str, Any]


@dataclass(frozen=True)
class Param:
    name: str
    schema: Schema
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Op:
    summary: str
    auth: str  # public | api | worker | internal (api.md §3)
    group: str  # runtime contract group (api.md §12)
    response: Schema
    request: Schema | None = None
    query: tuple[Param, ...] = ()
    status: int = 200
    errors: tuple[int, ...] = ()
    content_type: str = "application/json"


@dataclass(frozen=True)
class Route:
    path: str  # the OpenAPI path template, also falcon's unless `sink` is set
    resource: Any
    ops: dict[str, Op]  # HTTP method -> operation
    path_params: dict[str, Schema] = field(default_factory=dict)
    sink: re.Pattern[str] | None = None

    def op(self, method: str) -> Op | None:
        return self.ops.get(method.upper())
