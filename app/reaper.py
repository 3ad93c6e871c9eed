"""The command reaper (worker-protocol.md §6): a singleton per database under the lease
`command_reaper`. Every server process runs the loop; only the lease holder acts, and when it
dies another process takes the lease once it expires. It re-notifies commands stranded
PENDING, or CLAIMED/RUNNING by workers a claim would take over from (`command_renotify`);
it never changes a command's status."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from app.db import Database
from core.settings import Settings

log = logging.getLogger(__name__)
LEASE = "command_reaper"
INTERVAL_SECONDS = 30.0
RENOTIFY_LIMIT = 100


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Reaper:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        holder: str | None = None,
        interval: float = INTERVAL_SECONDS,
    ) -> None:
        self.db = db
        self.settings = settings
        self.holder = holder or holder_name()
        self.interval = interval

    async def run_once(self) -> int | None:
        """Re-notified commands, or None when another process holds the lease."""
        s = self.settings
        async with self.db.transaction() as session:
            held = await session.value(
                "lease_acquire", name=LEASE, holder=self.holder, ttl_s=self.interval * 2 + 5
            )
            if not held:
                return None
            count = await session.value(
                "command_renotify_run",
                pending_after_s=s.command_renotify_after_seconds,
                lease_s=s.command_claim_lease_seconds,
                stale_s=s.command_worker_heartbeat_stale_seconds,
                hard_timeout_s=s.command_claim_hard_timeout_seconds,
                limit=RENOTIFY_LIMIT,
            )
        if count:
            log.info("commands re-notified", extra={"count": count, "holder": self.holder})
        return int(count or 0)

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.warning("command reaper pass failed", exc_info=True)
            await asyncio.sleep(self.interval)

    async def release(self) -> None:
        async with self.db.session() as session:
            await session.value("lease_release", name=LEASE, holder=self.holder)
