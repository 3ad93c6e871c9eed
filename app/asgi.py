"""The server's Falcon ASGI app."""

from __future__ import annotations

import asyncio
import logging

import falcon
import falcon.asgi
import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from core.metrics import mark_build
from core.schema import database_revision_async, package_revision
from core.settings import Settings

log = logging.getLogger(__name__)


class Livez:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class Health:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(1.0):
                conn = await psycopg.AsyncConnection.connect(self.settings.database_url)
                async with conn:
                    await conn.execute("SELECT 1")
                    checks["database"] = "ok"
                    found = await database_revision_async(conn)
                    checks["schema"] = "ok" if found == package_revision() else "failing"
        except (TimeoutError, psycopg.Error):
            checks.setdefault("database", "failing")
        ok = all(v == "ok" for v in checks.values())
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
        resp.media = {"status": "ok" if ok else "unavailable", "role": "server", "checks": checks}


class Metrics:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(registry)


def create_app(settings: Settings) -> falcon.asgi.App:
    app = falcon.asgi.App()
    mark_build("server")
    health = Health(settings)
    app.add_route("/livez", Livez())
    app.add_route("/health", health)
    app.add_route("/api/health", health)
    app.add_route("/metrics", Metrics())
    return app
