"""Everything one server process shares between requests, built once per process."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from app.auth import Authenticator
from app.crypto import Sealer, load_kek
from app.db import Database
from app.listen import Hub
from app.maintenance import Maintenance
from app.metrics import record_pool
from app.routing import Route
from app.services.catalog import CATALOG_CHANNEL, CatalogService
from app.services.catalog_cache import CatalogCache
from app.services.credentials import CredentialService
from app.services.execution_api import ExecutionApi
from app.services.keychain import KeychainService
from app.services.projection import ProjectionService
from app.services.workers import VarsService, WorkerPoolService
from core.queries import load_queries
from core.settings import Settings

log = logging.getLogger(__name__)
QUERIES = {**load_queries("server"), **load_queries("execution")}
POOL_GAUGE_SECONDS = 5.0
STOP_SECONDS = 5.0


@dataclass
class State:
    settings: Settings
    auth: Authenticator
    db: Database
    hub: Hub
    sealer: Sealer
    cache: CatalogCache
    catalog: CatalogService
    credentials: CredentialService
    keychain: KeychainService
    workers: WorkerPoolService
    vars: VarsService
    projection: ProjectionService
    execution: ExecutionApi
    tasks: list[asyncio.Task] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)  # the mounted route table

    @classmethod
    def build(cls, settings: Settings) -> State:
        """Raises TokenConfigError or KeyConfigError for settings the server refuses."""
        auth = Authenticator(settings)
        sealer = Sealer(load_kek(settings), settings.encryption_key_version)
        db = Database(settings, QUERIES)
        hub = Hub(settings.database_url)
        cache = CatalogCache(settings.catalog_cache_size)
        hub.subscribe(CATALOG_CHANNEL, cache.on_notify)
        hub.on_reconnect(cache.clear)  # notifications missed while disconnected are gone
        catalog = CatalogService(db, cache, hub, settings.catalog_max_content_bytes)
        return cls(
            settings=settings,
            auth=auth,
            db=db,
            hub=hub,
            sealer=sealer,
            cache=cache,
            catalog=catalog,
            credentials=CredentialService(db, sealer),
            keychain=KeychainService(db, sealer),
            workers=WorkerPoolService(db, settings),
            vars=VarsService(db),
            projection=ProjectionService(db),
            execution=ExecutionApi.build(db, catalog, settings),
        )

    async def start(self) -> None:
        await self.db.open()
        self.hub.start()
        self.tasks.append(asyncio.create_task(self._pool_gauges(), name="pool-gauges"))
        self.tasks += self.execution.start()
        self.tasks.append(
            asyncio.create_task(Maintenance.from_state(self).run(), name="maintenance")
        )

    async def stop(self) -> None:
        # cancel again until done: a cancellation can be swallowed inside a library call
        # (asyncio.wait_for before 3.12), and a task that missed it must not hang shutdown
        pending, self.tasks = set(self.tasks), []
        deadline = asyncio.get_running_loop().time() + STOP_SECONDS
        while pending and asyncio.get_running_loop().time() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        if pending:
            log.warning("tasks did not stop", extra={"tasks": [t.get_name() for t in pending]})
        await self.hub.stop()
        await self.db.close()

    async def _pool_gauges(self) -> None:
        while True:
            record_pool(self.db.stats())
            await asyncio.sleep(POOL_GAUGE_SECONDS)
