"""Health and metrics (api.md §5)."""

from __future__ import annotations

import asyncio
import os

import falcon.asgi
import psycopg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from app.errors import ApiError
from app.openapi import STATUS_OK, integer, number, obj, string
from app.routing import Op, Route
from app.state import State
from core.schema import package_revision

HEALTH_SCHEMA = obj(
    {
        "status": string(enum=["ok", "unavailable"]),
        "role": string(enum=["server"]),
        "checks": {"type": "object", "additionalProperties": string()},
    }
)
FAILING_CHECKS = ("database", "schema", "listen")


class Livez:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class Health:
    """Readiness: SELECT 1 within 1 s, the schema revision, the LISTEN connection; the
    `event_default` partition is reported but never fails the check."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def checks(self) -> dict[str, str]:
        checks = {"database": "failing", "schema": "unknown", "listen": "failing"}
        try:
            async with asyncio.timeout(1.0), self.state.db.session(timeout=1.0) as s:
                await s.value("select_one")
                checks["database"] = "ok"
                found = await s.value("schema_revision")
                checks["schema"] = "ok" if found == package_revision() else f"mismatch:{found}"
                has_rows = await s.value("event_default_has_rows")
                checks["event_default"] = "not_empty" if has_rows else "empty"
        except (TimeoutError, ApiError, psycopg.Error):
            pass
        if self.state.hub.alive:
            checks["listen"] = "ok"
        return checks

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        checks = await self.checks()
        ok = all(checks[name] == "ok" for name in FAILING_CHECKS)
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
        resp.media = {"status": "ok" if ok else "unavailable", "role": "server", "checks": checks}


class Metrics:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # every gunicorn worker writes its own files; the answer sums them all
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            ProcessCollector(registry=registry)  # process_* of the answering worker
        else:
            registry = REGISTRY
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(registry)


class PoolStatus:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        db = self.state.db
        stats = db.stats()
        pool_max = db.pool.max_size
        size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
        in_use = max(0, size - available)
        waiting = stats.get("requests_waiting", 0)
        slots = max(0, pool_max - in_use)
        if db.circuit_open:
            status = "unavailable"
        elif waiting > 0 or slots == 0:
            status = "saturated"
        else:
            status = "ok"
        resp.media = {
            "pool_min": db.pool.min_size,
            "pool_max": pool_max,
            "pool_size": size,
            "pool_available": available,
            "requests_waiting": waiting,
            "utilization": round(in_use / pool_max, 4) if pool_max else 0.0,
            "slots_available": slots,
            "status": status,
        }


def routes(state: State) -> list[Route]:
    health = Health(state)
    health_op = Op("Readiness", "public", "health", HEALTH_SCHEMA, errors=(503,))
    pool_schema = obj(
        {
            "pool_min": integer(),
            "pool_max": integer(),
            "pool_size": integer(),
            "pool_available": integer(),
            "requests_waiting": integer(),
            "utilization": number(),
            "slots_available": integer(),
            "status": string(enum=["ok", "saturated", "unavailable"]),
        }
    )
    return [
        Route(
            "/livez",
            Livez(),
            {"GET": Op("Liveness", "public", "health", obj({"status": STATUS_OK}))},
        ),
        Route("/health", health, {"GET": health_op}),
        Route("/api/health", health, {"GET": health_op}),
        Route(
            "/metrics",
            Metrics(),
            {
                "GET": Op(
                    "Prometheus metrics of every worker process",
                    "public",
                    "health",
                    string(),
                    content_type="text/plain",
                )
            },
        ),
        Route(
            "/api/pool/status",
            PoolStatus(state),
            {"GET": Op("Database pool of the answering process", "api", "health", pool_schema)},
        ),
    ]
