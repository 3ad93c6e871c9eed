"""Connections the daemons hold: Postgres (psycopg async) and NATS (nats-py), with the checks
/health runs on them."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client as NATS

from core.settings import Settings

log = logging.getLogger(__name__)


async def connect_nats(settings: Settings, name: str) -> NATS:
    """One NATS connection for the daemon's lifetime; reconnects forever, backing off to 5 s."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        settings.nats_url,
        name=name,
        user_credentials=settings.nats_creds_file,
        max_reconnect_attempts=-1,
        reconnect_time_wait=2,
        allow_reconnect=True,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
