"""A role that only connects and reports health; the publisher, projector and system pool
replace it with their loops."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from workers.connections import connect_nats, pg_ping
from workers.daemon import Daemon


def idle_main(database: bool) -> Callable[[Daemon], Awaitable[None]]:
    async def main(daemon: Daemon) -> None:
        settings = daemon.settings
        nc = await connect_nats(settings, f"noetl-{daemon.role}")
        if database:
            daemon.health.checks["database"] = lambda: pg_ping(settings.target_database_url)
        daemon.health.checks["nats"] = lambda: nc.is_connected
        while not await daemon.sleep(1.0):
            daemon.health.turned()
        await nc.close()

    return main
