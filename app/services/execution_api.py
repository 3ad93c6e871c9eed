"""The execution API's services of one server process, built and started together."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.db import Database
from app.reaper import Reaper, holder_name
from app.services.catalog import CatalogService
from app.services.commands import CommandService
from app.services.engine_runner import EngineRunner
from app.services.events import BatchProcessor
from app.services.executions import ExecutionService
from core.settings import Settings


@dataclass
class ExecutionApi:
    runner: EngineRunner
    executions: ExecutionService
    commands: CommandService
    batches: BatchProcessor
    reaper: Reaper

    @classmethod
    def build(cls, db: Database, catalog: CatalogService, settings: Settings) -> ExecutionApi:
        runner = EngineRunner(db, catalog, settings)
        holder = holder_name()
        return cls(
            runner=runner,
            executions=ExecutionService(runner, settings),
            commands=CommandService(db, settings),
            batches=BatchProcessor(runner, holder),
            reaper=Reaper(db, settings, holder),
        )

    def start(self) -> list[asyncio.Task]:
        """The background loops: the command reaper and the batch sweeper."""
        return [
            asyncio.create_task(self.reaper.run(), name="command-reaper"),
            asyncio.create_task(self.batches.run(), name="event-batch-sweeper"),
        ]
