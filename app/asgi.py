"""The server's Falcon ASGI app: one route table mounted, documented and secured in one place.

To add routes (the engine issue: executions, events, commands, dashboard), write a module in
app/resources/ with `routes(state) -> list[Route]` and add it to `MODULES`; its routes then
appear in the router, the OpenAPI document and the runtime contract together.
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi

from app import errors
from app.middleware import Lifespan, RequestMiddleware
from app.resources import (
    catalog,
    commands,
    credentials,
    dashboard,
    events,
    executions,
    health,
    keychain,
    runtime,
    streams,
    workers,
)
from app.routing import Op, Route
from app.state import State
from core.metrics import mark_build
from core.settings import Settings

MODULES = (
    health,
    catalog,
    credentials,
    keychain,
    workers,
    executions,
    events,
    commands,
    dashboard,
    streams,
)


def route_table(state: State) -> list[Route]:
    table: list[Route] = []
    for module in MODULES:
        table += module.routes(state)
    table += runtime.routes(state, table)
    return table


def create_app(settings: Settings, state: State | None = None) -> falcon.asgi.App:
    """Raises TokenConfigError or KeyConfigError for settings the server must refuse."""
    state = state or State.build(settings)
    table = route_table(state)
    ops: dict[tuple[str, str], Op] = {
        (route.path, method): op
        for route in table
        if route.sink is None
        for method, op in route.ops.items()
    }
    middleware: list[Any] = [Lifespan(state), RequestMiddleware(state, ops)]
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        middleware.insert(
            0, falcon.CORSMiddleware(allow_origins="*" if "*" in origins else origins)
        )
    app = falcon.asgi.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    for route in table:
        if route.sink is not None:
            app.add_sink(route.resource, route.sink)
        else:
            app.add_route(route.path, route.resource)
    state.routes = table
    mark_build("server")
    return app
