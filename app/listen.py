"""One LISTEN connection per server process, fanned out to in-process subscribers.

Channels and subscribers register before `start()` or at any time after; the connection is
autocommit and outside the pool (envelope.md §4.3). A NOTIFY only wakes a subscriber: after
every (re)connect the hub calls each `on_reconnect` callback, because notifications sent while
it was disconnected are gone and subscribers must re-read the tables.

Subscribers are plain callables `(channel, payload)`; they must not block (put the payload
on a queue, drop a cache entry). The engine's SSE streams subscribe to `noetl_event` and
`noetl_event_batch` the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

Subscriber = Callable[[str, str], None]
PING_SECONDS = 5.0  # the listener proves its connection with a round trip this often
STALE_SECONDS = 15.0  # /health fails when the last proof is older than this
BACKOFF_MAX = 30.0


class Hub:
    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._subscribers: dict[str, list[Subscriber]] = defaultdict(list)
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection | None = None
        self._resubscribe = asyncio.Event()
        self.last_ok = 0.0
        self.connected = asyncio.Event()

    # ------------------------------------------------------------------ subscribers
    def subscribe(self, channel: str, callback: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        new_channel = channel not in self._subscribers
        self._subscribers[channel].append(callback)
        if new_channel:
            self._resubscribe.set()

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers[channel].remove(callback)

        return unsubscribe

    def expect(self, channel: str, match: Callable[[str], bool]) -> asyncio.Future[str]:
        """A future for the next notification on `channel` whose payload matches; cancel it
        when no longer needed. Subscribe before the change that sends the NOTIFY."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def check(_: str, payload: str) -> None:
            if not future.done() and match(payload):
                future.set_result(payload)

        unsubscribe = self.subscribe(channel, check)
        future.add_done_callback(lambda _: unsubscribe())
        return future

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnect_callbacks.append(callback)

    def dispatch(self, channel: str, payload: str) -> None:
        for callback in list(self._subscribers.get(channel, ())):
            try:
                callback(channel, payload)
            except Exception:
                log.exception("notification subscriber failed", extra={"channel": channel})

    # ------------------------------------------------------------------ health
    @property
    def alive(self) -> bool:
        return self._conn is not None and time.monotonic() - self.last_ok < STALE_SECONDS

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="listen-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: reconnect after a pause
                log.warning("listen connection lost", extra={"error": str(exc)[:200]})
            if self.connected.is_set():
                backoff = 0.5  # that session worked: back off only on repeated failures
            self._conn = None
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _listen_all(self, conn: psycopg.AsyncConnection, listening: set[str]) -> None:
        self._resubscribe.clear()
        for channel in list(self._subscribers):
            if channel not in listening:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                listening.add(channel)

    async def _session(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=5, application_name="noetl-listen"
        )
        async with conn:
            listening: set[str] = set()
            await self._listen_all(conn, listening)
            self._conn = conn
            self.last_ok = time.monotonic()
            for callback in list(self._reconnect_callbacks):
                callback()
            self.connected.set()
            last_ping = time.monotonic()
            while True:
                # notifies() holds the connection; it returns after the timeout so the loop
                # can add channels and prove the connection with a round trip
                async for notify in conn.notifies(timeout=1.0):
                    self.dispatch(notify.channel, notify.payload)
                if self._resubscribe.is_set():
                    await self._listen_all(conn, listening)
                if time.monotonic() - last_ping >= PING_SECONDS:
                    async with asyncio.timeout(5):
                        await conn.execute("SELECT 1")
                    last_ping = self.last_ok = time.monotonic()
