"""The maintenance loop (envelope.md §4.6): the server process holding the lease `maintenance`
starts each system/ playbook every NOETL_SYSTEM_PLAYBOOK_INTERVAL_SECONDS, with the relevant
settings as its workload, unless the playbook's previous run is still open.

Every server process runs the loop; only the lease holder acts, and another process takes over
once a dead holder's lease expires. The runs themselves are ordinary executions on the `system`
pool; their postgres steps reach the database through the credential `noetl_system_db`, which
this loop also registers when it is missing or sealed with another key (a one-shot `migrate`
without the server's key, as in compose), so the playbooks can always open it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from app.crypto import DecryptFailed, Sealer
from app.db import Database, Session
from app.errors import ApiError
from app.services.executions import ExecuteRequest, ExecutionService
from core.queries import load_queries
from core.settings import Settings

if TYPE_CHECKING:
    from app.state import State

log = logging.getLogger(__name__)
LEASE = "maintenance"
TICK_MAX_SECONDS = 30.0
SYSTEM_CREDENTIAL = "noetl_system_db"
QUERIES = {**load_queries("server"), **load_queries("maintenance")}


def system_workloads(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each system/ playbook's path and the settings it is started with."""
    return {
        "system/partitions": {
            "months_ahead": settings.event_partition_months_ahead,
            "retention_days": settings.event_retention_days,
        },
        "system/cleanup": {"dead_letter_days": settings.system_playbook_dead_letter_days},
        "system/finalize_abandoned": {
            "abandoned_seconds": settings.system_playbook_abandoned_seconds
        },
    }


class Maintenance:
    def __init__(
        self,
        db: Database,
        executions: ExecutionService,
        sealer: Sealer,
        settings: Settings,
        holder: str,
    ) -> None:
        self.db = db
        self.executions = executions
        self.sealer = sealer
        self.settings = settings
        self.holder = holder
        self.interval = max(1, settings.system_playbook_interval_seconds)
        self.tick = min(float(self.interval), TICK_MAX_SECONDS)
        self._missing: set[str] = set()  # paths already reported as not registered

    @classmethod
    def from_state(cls, state: State) -> Maintenance:
        execution = state.execution
        return cls(
            state.db,
            execution.executions,
            state.sealer,
            state.settings,
            execution.reaper.holder,
        )

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.warning("maintenance pass failed", exc_info=True)
            await asyncio.sleep(self.tick)

    async def run_once(self) -> list[int] | None:
        """Executions started by this pass, or None when another process holds the lease."""
        async with self.db.session() as s:
            held = await s.value(
                "lease_acquire", name=LEASE, holder=self.holder, ttl_s=self.tick * 2 + 5
            )
        if not held:
            return None
        started: list[int] = []
        for path, workload in system_workloads(self.settings).items():
            async with self.db.session() as conn:
                state = await Session(conn.conn, QUERIES).one(
                    "maintenance_due", path=path, interval_s=self.interval
                )
            assert state is not None
            if not state["registered"]:
                if path not in self._missing:
                    self._missing.add(path)
                    log.warning(
                        "system playbook not registered; run `noetl-server migrate`",
                        extra={"path": path},
                    )
                continue
            self._missing.discard(path)
            if state["open"] or state["recent"]:
                continue  # still running, or started less than an interval ago
            if not started:
                await self.ensure_credential()  # before the first run of this pass needs it
            execution_id = await self._start(path, workload)
            if execution_id is not None:
                started.append(execution_id)
        return started

    async def _start(self, path: str, workload: dict[str, Any]) -> int | None:
        request = ExecuteRequest(
            path=path,
            catalog_id=None,
            version=None,
            resource_kind="playbook",
            workload=workload,
            parent_execution_id=None,
            execution_pool=None,  # system/ paths run on the system pool
            trace=None,
            dedup_key=None,
            dedup_window=300,
        )
        try:
            started = await self.executions.execute(request)
        except ApiError as exc:
            if exc.code != "catalog_entry_not_found":  # archived since the check: skip it
                raise
            return None
        log.info(
            "system playbook started",
            extra={"path": path, "execution_id": str(started.execution_id)},
        )
        return started.execution_id

    async def ensure_credential(self) -> None:
        """`noetl_system_db` exists and opens with this server's key; otherwise (re)write it."""
        async with self.db.session() as conn:
            s = Session(conn.conn, QUERIES)
            row = await s.one("credential_get", id=None, name=SYSTEM_CREDENTIAL)
            if row is not None:
                try:
                    self.sealer.open(row["data_encrypted"])
                    return
                except DecryptFailed:
                    log.warning(
                        "system credential sealed with another key; sealing it again",
                        extra={"credential": SYSTEM_CREDENTIAL},
                    )
            await s.one(
                "credential_put",
                name=SYSTEM_CREDENTIAL,
                type="postgres",
                data_encrypted=self.sealer.seal({"dsn": self.settings.database_url}),
                meta=Jsonb({"registered_by": "noetl-server"}),
                tags=["system"],
                description="The NoETL database, for the system/ maintenance playbooks",
            )
