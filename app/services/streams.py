"""SSE streams of events (api.md §7.7) and of event batch status (api.md §8.2).

Feed: the process's one LISTEN connection (`app.listen.Hub`) receives the trigger's
`noetl_event` notifications; `StreamService` fans each one out to the open streams it concerns,
which then read the new rows from `noetl.event` with a pooled connection held only for that
read. No stream polls in steady state: a stream re-reads from its cursor after a listener
reconnect and every NOETL_SSE_SAFETY_POLL_SECONDS.

Order and duplicates:
* One execution: ids grow in commit order within an execution (assigned under its lock), so
  reading `event_id > cursor` after every wake-up sends every event once, in order.
* All executions: one cursor per execution. An execution the stream has not sent yet starts at
  the rows of the statement whose notification woke it (the notification names that
  statement's highest id and row count), so a live stream neither misses an event committed
  after it opened nor replays older ones. Resume (`Last-Event-ID`) and safety re-reads scan
  every execution from `cursor - NOETL_SSE_RESUME_LOOKBACK_SECONDS` of id time and are
  at-least-once, as the contract says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg
from falcon.asgi import SSEvent
from prometheus_client import Gauge

from app.db import Database, Session
from app.errors import ApiError, unavailable
from app.listen import Hub
from app.services.executions import TERMINAL_EVENT_TYPES, event_row, list_events_after
from core.ids import floor_id
from core.queries import load_queries
from core.settings import Settings
from core.timefmt import utcnow

log = logging.getLogger(__name__)

EVENT_CHANNEL = "noetl_event"
BATCH_CHANNEL = "noetl_event_batch"
QUERIES = load_queries("streams")
PAGE = 500  # rows per read; a stream keeps reading until a page comes back short
RETRY_MS = 3000
RETRY_AFTER_FULL = 5
READ_ERROR_PAUSE = 1.0  # after a failed read (database down, pool saturated) before retrying
MAX_CURSORS = 10_000  # executions remembered by one all-executions stream

SSE_STREAMS = Gauge("noetl_server_sse_streams", "Open SSE responses", multiprocess_mode="livesum")


def id_span(seconds: float) -> int:
    """The distance in snowflake ids of `seconds` of id time (envelope.md §1)."""
    return int(seconds * 1000) << 22


def now_id() -> int:
    return floor_id(utcnow())


@dataclass(frozen=True)
class Notice:
    """One `noetl_event` notification; `execution_id` None is the wildcard of a bulk insert."""

    execution_id: int | None
    event_id: int = 0
    count: int = 0
    terminal: bool = False


def parse_notice(payload: str) -> Notice | None:
    try:
        body = json.loads(payload)
        raw = body["execution_id"]
        if raw == "*":
            return Notice(None)
        return Notice(
            int(raw), int(body["event_id"]), int(body["count"]), bool(body.get("terminal"))
        )
    except (ValueError, KeyError, TypeError):
        log.warning("malformed noetl_event notification", extra={"payload": payload[:200]})
        return None


def compact(value: Any) -> str:
    """JSON on one line. ASCII-escaped too: some clients split lines at U+2028 or U+0085."""
    return json.dumps(value, separators=(",", ":"), default=str)


def frame(row: dict[str, Any]) -> SSEvent:
    """One event frame: `event` the event_type, `id` the event_id, `data` the EventRow."""
    name = str(row["event_type"]).replace("\r", " ").replace("\n", " ")
    return SSEvent(event=name, event_id=str(row["event_id"]), text=compact(row))


@dataclass(frozen=True)
class EventFilter:
    """Filters of `GET /api/events/stream`, combined with AND."""

    execution_ids: frozenset[int] | None = None
    path: str | None = None
    event_types: tuple[str, ...] | None = None  # exact names
    event_prefixes: tuple[str, ...] = ()  # from `name*`
    status: str | None = None  # upper case

    def accepts(self, execution_id: int) -> bool:
        return self.execution_ids is None or execution_id in self.execution_ids

    def params(self) -> dict[str, Any]:
        typed = self.event_types is not None
        return {
            "path": self.path,
            "event_types": None if self.event_types is None else list(self.event_types),
            "event_prefixes": list(self.event_prefixes) if typed else None,
            "status": self.status,
        }


@dataclass(eq=False)
class Inbox:
    """What woke one open stream since it last looked."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    notices: dict[int, Notice] = field(default_factory=dict)  # first unread notice per execution
    rescan: bool = False  # re-read everything: listener reconnect or a wildcard
    closed: bool = False  # the process is shutting down

    async def wait(self, timeout: float) -> bool:
        """Wait for a wake-up at most `timeout` seconds; True when woken."""
        if timeout > 0 and not self.wake.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
        woken = self.wake.is_set()
        self.wake.clear()
        return woken

    def take(self) -> tuple[dict[int, Notice], bool]:
        notices, rescan = self.notices, self.rescan
        self.notices, self.rescan = {}, False
        return notices, rescan


class Clock:
    """The timers of one stream: heartbeat, safety re-read and the stream's maximum age."""

    def __init__(self, settings: Settings) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.heartbeat = settings.sse_heartbeat_seconds
        self.safety = settings.sse_safety_poll_seconds
        self.deadline = loop.time() + settings.sse_max_stream_seconds
        self.last_frame = self.last_read = loop.time()

    def now(self) -> float:
        return self._loop.time()

    def sent(self) -> None:
        self.last_frame = self.now()

    def read(self) -> None:
        self.last_read = self.now()

    def expired(self) -> bool:
        return self.now() >= self.deadline

    def heartbeat_due(self) -> bool:
        return self.now() - self.last_frame >= self.heartbeat

    def safety_due(self) -> bool:
        return self.now() - self.last_read >= self.safety

    def next_timeout(self) -> float:
        now = self.now()
        return max(
            0.0,
            min(
                self.last_frame + self.heartbeat - now,
                self.last_read + self.safety - now,
                self.deadline - now,
            ),
        )


class StreamService:
    """The SSE streams of one server process: admission, fan-out of notifications, readers."""

    def __init__(self, db: Database, hub: Hub, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.open = 0
        self._by_execution: dict[int, set[Inbox]] = {}
        self._all: dict[Inbox, EventFilter] = {}
        self._batches: dict[str, set[Inbox]] = {}
        self._closing = False
        self._signals_hooked = False
        hub.subscribe(EVENT_CHANNEL, self._on_event)
        hub.subscribe(BATCH_CHANNEL, self._on_batch)
        hub.on_reconnect(self._on_reconnect)

    # ------------------------------------------------------------------ notifications
    def _on_event(self, _: str, payload: str) -> None:
        notice = parse_notice(payload)
        if notice is None:
            return
        if notice.execution_id is None:
            self._on_reconnect()
            return
        for inbox in self._by_execution.get(notice.execution_id, ()):
            inbox.wake.set()
        for inbox, filters in self._all.items():
            if filters.accepts(notice.execution_id):
                inbox.notices.setdefault(notice.execution_id, notice)
                inbox.wake.set()

    def _on_batch(self, _: str, payload: str) -> None:
        try:
            request_id = str(json.loads(payload)["request_id"])
        except (ValueError, KeyError, TypeError):
            return
        for inbox in self._batches.get(request_id, ()):
            inbox.wake.set()

    def _on_reconnect(self) -> None:
        # notifications sent while the listener was away are gone: every stream re-reads
        for inbox in self._inboxes():
            inbox.rescan = True
            inbox.wake.set()

    def _inboxes(self) -> Iterable[Inbox]:
        for inboxes in (*self._by_execution.values(), *self._batches.values()):
            yield from inboxes
        yield from self._all

    # ------------------------------------------------------------------ admission, shutdown
    def admit(self) -> None:
        """Count one more open stream, or 503 `too_many_streams` (before the stream starts)."""
        if self.open >= self.settings.sse_max_streams:
            raise unavailable("too_many_streams", "too many open streams", RETRY_AFTER_FULL)
        self._hook_shutdown()
        self.open += 1
        SSE_STREAMS.inc()

    def release(self) -> None:
        self.open -= 1
        SSE_STREAMS.dec()

    def close_all(self) -> None:
        """End every open stream (process shutdown); clients reconnect with Last-Event-ID."""
        self._closing = True
        for inbox in self._inboxes():
            inbox.closed = True
            inbox.wake.set()

    def _hook_shutdown(self) -> None:
        # uvicorn waits for open responses to finish before it runs the lifespan shutdown and
        # tells the app nothing in between, so streams would hold a graceful stop until the
        # kill. Chain its SIGTERM handler (installed by then) to end the streams first.
        if self._signals_hooked:
            return
        self._signals_hooked = True
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return  # not under a server that handles SIGTERM (tests in-process)
        loop = asyncio.get_running_loop()

        def handler(signum: int, frame: Any) -> None:
            loop.call_soon_threadsafe(self.close_all)
            previous(signum, frame)

        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGTERM, handler)

    @contextlib.contextmanager
    def _registered(self, table: dict[Any, set[Inbox]], key: Any) -> Any:
        inbox = Inbox(closed=self._closing)
        table.setdefault(key, set()).add(inbox)
        try:
            yield inbox
        finally:
            inboxes = table.get(key)
            if inboxes is not None:
                inboxes.discard(inbox)
                if not inboxes:
                    del table[key]

    async def _read(self, read: Callable[[Session], Awaitable[Any]]) -> Any:
        """One read with a pooled connection; None when the database did not answer."""
        try:
            async with self.db.session() as session:
                return await read(session)
        except (ApiError, psycopg.Error) as exc:
            log.warning("stream read failed", extra={"error": str(exc)[:200]})
            return None

    # ------------------------------------------------------------------ one execution
    async def head(self, execution_id: int) -> dict[str, Any] | None:
        """`known`, `terminal_event_id`, `terminal_event_type`; raises the pool's 503s."""
        async with self.db.session() as session:
            return await Session(session.conn, QUERIES).one(
                "stream_head",
                execution_id=execution_id,
                terminal_types=list(TERMINAL_EVENT_TYPES),
            )

    async def execution_stream(
        self, execution_id: int, after: int, head: dict[str, Any]
    ) -> AsyncIterator[SSEvent]:
        """Replay after `after`, then live; ends with `end` after the first terminal event.
        The caller has admitted the stream; this releases it."""
        try:
            with self._registered(self._by_execution, execution_id) as inbox:
                async for event in self._execution_frames(execution_id, after, head, inbox):
                    yield event
        finally:
            self.release()

    async def _execution_frames(
        self, execution_id: int, cursor: int, head: dict[str, Any], inbox: Inbox
    ) -> AsyncIterator[SSEvent]:
        clock = Clock(self.settings)
        yield SSEvent(retry=RETRY_MS)
        terminal = head.get("terminal_event_type")
        # a client that saw the terminal event but not `end` resumes after it
        done = terminal is not None and head["terminal_event_id"] <= cursor
        read = not done  # the first pass replays
        while True:
            if read:
                rows = await self._read(
                    partial(
                        list_events_after,
                        execution_id=execution_id,
                        after_event_id=cursor,
                        limit=PAGE,
                    )
                )
                clock.read()
                if rows is None:
                    if inbox.closed or clock.expired():
                        return
                    await inbox.wait(READ_ERROR_PAUSE)
                    continue
                for row in rows:
                    cursor = row["event_id"]
                    if row["event_type"] in TERMINAL_EVENT_TYPES:
                        terminal = terminal or row["event_type"]
                        done = True
                    yield frame(row)
                    clock.sent()
                if len(rows) == PAGE:
                    continue  # page by page: a long replay holds no connection while it sends
            if done:
                body = {
                    "execution_id": str(execution_id),
                    "status": TERMINAL_EVENT_TYPES[str(terminal)],
                }
                yield SSEvent(event="end", text=compact(body))
                return
            if inbox.closed or clock.expired():
                return
            if clock.heartbeat_due():
                yield SSEvent(comment="keep-alive")
                clock.sent()
            woken = await inbox.wait(clock.next_timeout())
            inbox.take()
            read = woken or clock.safety_due()

    # ------------------------------------------------------------------ all executions
    async def all_stream(
        self, filters: EventFilter, last_event_id: int | None
    ) -> AsyncIterator[SSEvent]:
        """Every execution's events that pass `filters`; never ends by itself. The caller has
        admitted the stream; this releases it."""
        inbox = Inbox(closed=self._closing)
        self._all[inbox] = filters
        try:
            async for event in self._all_frames(filters, last_event_id, inbox):
                yield event
        finally:
            self._all.pop(inbox, None)
            self.release()

    async def _all_frames(
        self, filters: EventFilter, last_event_id: int | None, inbox: Inbox
    ) -> AsyncIterator[SSEvent]:
        clock = Clock(self.settings)
        lookback = id_span(self.settings.sse_resume_lookback_seconds)
        cursors: OrderedDict[int, int] = OrderedDict()
        # an execution this stream has not sent yet is sent by a scan only above `floor`
        last_scan = now_id()
        floor = last_scan if last_event_id is None else max(0, last_event_id - lookback)
        scan_from: int | None = None if last_event_id is None else floor
        scan_started: int | None = None
        yield SSEvent(retry=RETRY_MS)
        while True:
            if scan_from is not None:
                scan_started = scan_started or now_id()
                rows = await self._read(partial(self._scan, filters=filters, after=scan_from))
                clock.read()
                if rows is None:
                    if inbox.closed or clock.expired():
                        return
                    await inbox.wait(READ_ERROR_PAUSE)
                    continue
                for row in rows:
                    if self._advance(cursors, row, floor):
                        yield frame(row)
                        clock.sent()
                if len(rows) == PAGE:
                    scan_from = int(rows[-1]["event_id"])  # the next page
                    continue
                scan_from, last_scan, scan_started = None, scan_started, None
            notices, rescan = inbox.take()
            for execution_id, notice in notices.items():
                while True:
                    rows = await self._read(
                        partial(
                            self._notified,
                            filters=filters,
                            execution_id=execution_id,
                            cursor=cursors.get(execution_id),
                            notice=notice,
                        )
                    )
                    if rows is None:
                        rescan = True  # the scan covers it
                        break
                    for row in rows:
                        if self._advance(cursors, row, 0):
                            yield frame(row)
                            clock.sent()
                    if len(rows) < PAGE:
                        break
            if inbox.closed or clock.expired():
                return
            if rescan or clock.safety_due():
                # rows may commit a while after their id was taken: look back from the last scan
                scan_from = max(floor, last_scan - lookback)
                continue
            if clock.heartbeat_due():
                yield SSEvent(comment="keep-alive")
                clock.sent()
            await inbox.wait(clock.next_timeout())

    @staticmethod
    def _advance(cursors: OrderedDict[int, int], row: dict[str, Any], floor: int) -> bool:
        """Move the row's execution cursor; False for a row already sent (or below `floor`
        for an execution not sent yet)."""
        execution_id = int(row["execution_id"])
        event_id = int(row["event_id"])
        cursor = cursors.get(execution_id)
        if (cursor is None and event_id <= floor) or (cursor is not None and event_id <= cursor):
            return False
        cursors[execution_id] = event_id
        cursors.move_to_end(execution_id)
        if len(cursors) > MAX_CURSORS:
            cursors.popitem(last=False)
        return True

    async def _scan(
        self, session: Session, filters: EventFilter, after: int
    ) -> list[dict[str, Any]]:
        """One page of every execution's events after `after`, in id order."""
        ids = None if filters.execution_ids is None else sorted(filters.execution_ids)
        page = await Session(session.conn, QUERIES).all(
            "stream_events_since",
            after_event_id=after,
            execution_ids=ids,
            limit=PAGE,
            **filters.params(),
        )
        return [event_row(r) for r in page]

    async def _notified(
        self,
        session: Session,
        filters: EventFilter,
        execution_id: int,
        cursor: int | None,
        notice: Notice,
    ) -> list[dict[str, Any]]:
        """One page of a notified execution's events: after the cursor, or else from the
        notifying statement's first row."""
        page = await Session(session.conn, QUERIES).all(
            "stream_notified_events",
            execution_id=execution_id,
            after_event_id=cursor,
            notified_event_id=notice.event_id,
            notified_count=max(1, notice.count),
            limit=PAGE,
            **filters.params(),
        )
        return [event_row(r) for r in page]

    # ------------------------------------------------------------------ batch status
    async def batch_stream(
        self,
        request_id: str,
        timeout: float,
        status: Callable[[], Awaitable[dict[str, Any] | None]],
    ) -> AsyncIterator[SSEvent]:
        """`status` frames of one event batch: now and at every state change, until
        `completed`/`failed` or `timeout`. `status()` reads the status JSON (None: unknown
        batch). The caller has admitted the stream; this releases it."""
        try:
            with self._registered(self._batches, request_id) as inbox:
                async for event in self._batch_frames(request_id, timeout, status, inbox):
                    yield event
        finally:
            self.release()

    async def _batch_frames(
        self,
        request_id: str,
        timeout: float,
        status: Callable[[], Awaitable[dict[str, Any] | None]],
        inbox: Inbox,
    ) -> AsyncIterator[SSEvent]:
        clock = Clock(self.settings)
        deadline = clock.now() + timeout
        last_state: str | None = None
        read, failed = True, False
        while True:
            if read:
                try:
                    current = await status()
                    failed = False
                except (ApiError, psycopg.Error) as exc:
                    log.warning("batch stream read failed", extra={"error": str(exc)[:200]})
                    current, failed = {}, True  # retried after a pause; the deadline bounds it
                clock.read()
                if current is None:
                    body = {
                        "request_id": request_id,
                        "state": "not_found",
                        "status": "FAILED",
                        "message": f"Batch request {request_id} not found",
                    }
                    yield SSEvent(event="status", text=compact(body))
                    return
                if current and current.get("state") != last_state:
                    last_state = current.get("state")
                    yield SSEvent(event="status", text=compact(current))
                    clock.sent()
                if last_state in ("completed", "failed"):
                    return
            if inbox.closed:
                return
            if clock.now() >= deadline:
                body = {
                    "request_id": request_id,
                    "state": "timeout",
                    "status": "RUNNING",
                    "message": "SSE timeout",
                }
                yield SSEvent(event="status", text=compact(body))
                return
            if clock.heartbeat_due():
                yield SSEvent(comment="keep-alive")
                clock.sent()
            pause = READ_ERROR_PAUSE if failed else clock.next_timeout()
            woken = await inbox.wait(min(pause, deadline - clock.now()))
            inbox.take()
            read = woken or failed or clock.safety_due()
