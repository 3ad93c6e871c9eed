"""The publisher role: relays `noetl.event_outbox` to NATS JetStream (envelope.md §6).

Woken by NOTIFY on `noetl_outbox` (and a safety poll, and after every (re)LISTEN), it drains
the outbox in batches. A batch is one transaction: `outbox_claim` locks rows of the lanes it
owns, the rows are published pipelined with `Nats-Msg-Id`, every ack is awaited, and
`outbox_complete` deletes the acked rows and records the failures before the commit. Nothing
is marked in flight, so a crash releases every row and JetStream drops the republished
duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import Any

import psycopg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import APIError
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from core.settings import Settings
from core.streams import EXIT_STREAM_MISMATCH, StreamMismatch, ensure_stream, stream_specs
from workers import publisher_metrics as m
from workers.connections import connect_nats
from workers.daemon import Daemon
from workers.publisher_nats import AckPipeline, BatchOutcome, BatchPublisher, ClaimedRow

log = logging.getLogger(__name__)

CHANNEL = "noetl_outbox"
HEADER_ROOM = 4096  # §2.6: the body limit leaves this much of a message for headers
LISTEN_PROBE_SECONDS = 5.0
DB_BACKOFF_MAX = 5.0
NATS_CONNECT_BACKOFF_MAX = 5.0
SUBJECTS_OVERLAP_ERR_CODE = 10065

CLAIM_SQL = """
SELECT outbox_id, execution_id, kind, subject, msg_id, headers, body, slimmed, dead, created_at
  FROM noetl.outbox_claim(%(limit)s, %(max_body_bytes)s, %(batch_max_bytes)s, %(server_url)s)
"""
COMPLETE_SQL = """
SELECT deleted, retried, dead
  FROM noetl.outbox_complete(%(published)s::jsonb, %(failed)s::jsonb, %(max_attempts)s,
                             %(retry_base_s)s, %(retry_max_s)s)
"""
STATS_SQL = "SELECT pending, due, oldest_seconds, dead FROM noetl.outbox_stats()"
PENDING_SQL = "SELECT kind, pending FROM noetl.outbox_pending_by_kind()"
REQUEUE_SQL = "SELECT noetl.outbox_requeue_dead(%(ids)s::bigint[])"


class OutboxRelay:
    """The publisher's connections, its wake-up logic and the batch loop."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.settings: Settings = daemon.settings
        self.wake = asyncio.Event()
        self.notified = False  # a NOTIFY arrived since the last wake-up
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.publisher: BatchPublisher | None = None
        self.pool: AsyncConnectionPool | None = None
        self.listen_ok = False
        self.db_ok = False
        self.streams_ok = False
        self.max_body_bytes = 0
        self.backoff = 0.0  # global transport backoff, §6.2
        self.backoff_until = 0.0
        self.recheck_streams = False
        self.db_backoff = 0.0
        self.workers = max(1, self.settings.pool_max("publisher"))
        self.pipelines: list[AckPipeline] = []
        self._tasks: list[asyncio.Task] = []

    # --- start and stop -------------------------------------------------------------------

    async def run(self) -> None:
        if await self.start():
            await self._serve()

    async def start(self) -> bool:
        """Connect, verify the streams and start the side tasks; False when stopped first."""
        m.init_labels([self.settings.events_stream, self.settings.commands_stream])
        health = self.daemon.health.checks
        health["listen"] = lambda: self.listen_ok
        health["database"] = lambda: self.db_ok
        health["nats"] = lambda: self.nc is not None and self.nc.is_connected
        health["streams"] = lambda: self.streams_ok
        health["transport"] = lambda: time.monotonic() >= self.backoff_until

        self.pool = self._make_pool()
        await self.pool.open(wait=False)
        self.nc = await self._connect_nats()
        if self.nc is None:
            return False  # stopped before NATS answered
        js = self.nc.jetstream()
        self.js = js
        self.publisher = BatchPublisher(self.nc, self.settings)
        self.pipelines = [AckPipeline(self.nc) for _ in range(self.workers)]
        while not await self._check_streams():
            if await self.daemon.sleep(NATS_CONNECT_BACKOFF_MAX):
                return False
        self._tasks.append(self.daemon.spawn(self._listen(), "publisher-listen"))
        self._tasks.append(self.daemon.spawn(self._stats(), "publisher-stats"))
        self._tasks.append(self.daemon.spawn(self._stop_wakes(), "publisher-stop"))
        log.info(
            "publisher ready",
            extra={"workers": self.workers, "max_body_bytes": self.max_body_bytes},
        )
        return True

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), 2.0)
            except Exception as exc:  # closing anyway: a failed drain only loses nothing
                log.warning("nats drain failed: %s", exc)
                await self.nc.close()
        if self.pool is not None:
            await self.pool.close(timeout=2.0)

    def _make_pool(self) -> AsyncConnectionPool:
        s = self.settings
        # A hung publisher must lose its transaction, and with it its lanes and rows.
        idle_ms = int((2 * s.publisher_ack_timeout_seconds + 5) * 1000)
        # A commit lost in a Postgres crash only republishes rows JetStream then drops as
        # duplicates, so the relay need not wait for its WAL flush.
        options = (
            f"-c statement_timeout={s.db_statement_timeout_ms} "
            f"-c idle_in_transaction_session_timeout={idle_ms} "
            "-c synchronous_commit=off"
        )
        return AsyncConnectionPool(
            s.database_url,
            min_size=min(s.db_pool_min, self.workers),
            max_size=self.workers,
            kwargs={
                "options": options,
                "application_name": "noetl-publisher",
                "connect_timeout": 5,
            },
            open=False,
            name="publisher",
            timeout=5.0,
        )

    async def _connect_nats(self) -> NATS | None:
        delay = 0.5
        while not self.daemon.stopping.is_set():
            try:
                return await connect_nats(self.settings, "noetl-publisher")
            except Exception as exc:  # nats-py raises several unrelated types on connect
                m.ERRORS.labels(reason="nats_unavailable").inc()
                log.warning("nats connect failed: %s", exc, extra={"retry_in": delay})
            if await self.daemon.sleep(delay):
                break
            delay = min(delay * 2, NATS_CONNECT_BACKOFF_MAX)
        return None

    async def _check_streams(self) -> bool:
        """Create or verify both streams (§5.5); recompute the body limit B (§2.6)."""
        assert self.js is not None and self.nc is not None
        s = self.settings
        limits = [s.nats_max_msg_bytes, self.nc.max_payload]
        try:
            for spec in stream_specs(s):
                try:
                    await ensure_stream(self.js, spec, create=True, update=s.nats_stream_update)
                except APIError as exc:
                    if exc.err_code == SUBJECTS_OVERLAP_ERR_CODE:
                        await self._fatal_overlap(spec.name, spec.config.subjects or [], exc)
                    raise
                info = await self.js.stream_info(spec.name)
                if info.config.max_msg_size and info.config.max_msg_size > 0:
                    limits.append(info.config.max_msg_size)
        except StreamMismatch as exc:
            log.error(
                "stream_config_mismatch",
                extra={
                    "stream": exc.stream,
                    "field": exc.field,
                    "expected": str(exc.expected),
                    "actual": str(exc.actual),
                },
            )
            raise SystemExit(EXIT_STREAM_MISMATCH) from exc
        except Exception as exc:  # NATS down or JetStream not ready: retried, health says so
            self.streams_ok = False
            log.warning("stream check failed: %s", exc)
            return False
        self.max_body_bytes = min(limits) - HEADER_ROOM
        self.streams_ok = True
        self.recheck_streams = False
        return True

    async def _fatal_overlap(self, stream: str, subjects: list[str], exc: APIError) -> None:
        assert self.js is not None
        other = "unknown"
        with contextlib.suppress(Exception):
            other = await self.js.find_stream_name_by_subject(subjects[0])
        log.error(
            "stream_create_failed: stream %s cannot be created, its subjects are bound by "
            "stream %s",
            stream,
            other,
            extra={"stream": stream, "bound_by": other, "error": str(exc)},
        )
        raise SystemExit(EXIT_STREAM_MISMATCH) from exc

    # --- waking ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN on its own autocommit connection; after every (re)connect, drain once."""
        delay = 0.1
        while not self.daemon.stopping.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.settings.database_url,
                    autocommit=True,
                    connect_timeout=5,
                    application_name="noetl-publisher-listen",
                )
                async with conn:
                    await conn.execute("LISTEN noetl_outbox")
                    self.listen_ok = True
                    delay = 0.1
                    log.info("listening", extra={"channel": CHANNEL})
                    self.wake.set()  # notifications sent while we were away are gone
                    while True:
                        async for _ in conn.notifies(timeout=LISTEN_PROBE_SECONDS):
                            self.notified = True
                            self.wake.set()
                        await asyncio.wait_for(conn.execute("SELECT 1"), LISTEN_PROBE_SECONDS)
            except (TimeoutError, psycopg.Error, OSError) as exc:
                if self.listen_ok:
                    log.warning("listen connection lost: %s", exc)
                self.listen_ok = False
            if await self.daemon.sleep(delay):
                return
            delay = min(delay * 2, DB_BACKOFF_MAX)

    async def _stop_wakes(self) -> None:
        await self.daemon.stopping.wait()
        self.wake.set()

    async def _serve(self) -> None:
        stopping = self.daemon.stopping
        while not stopping.is_set():
            self.daemon.health.turned()
            if time.monotonic() < self.backoff_until:
                await self._backoff_wait()
                polled = False
            else:
                try:
                    await asyncio.wait_for(self.wake.wait(), self.settings.publisher_poll_seconds)
                    polled = False
                except TimeoutError:
                    polled = True
            if stopping.is_set():
                break
            self.wake.clear()
            if self.notified:
                self.notified = False
                m.NOTIFY_WAKEUPS.inc()
            claimed = await self._drain_until_stopped()
            if polled and claimed:
                m.POLL_WAKEUPS.inc()

    async def _backoff_wait(self) -> None:
        """Sit out the transport backoff; a NATS reconnect ends it early (§6.2)."""
        assert self.nc is not None
        reconnects = self.nc.stats["reconnects"]
        was_connected = self.nc.is_connected
        if self.recheck_streams and self.nc.is_connected:
            await self._check_streams()
        while time.monotonic() < self.backoff_until and not self.daemon.stopping.is_set():
            self.daemon.health.turned()
            if self.nc.stats["reconnects"] != reconnects or (
                not was_connected and self.nc.is_connected
            ):
                log.info("nats reconnected, backoff reset")
                self.backoff = 0.0
                self.backoff_until = 0.0
                await self._check_streams()  # the server may have come back without them
                break
            await self.daemon.sleep(min(0.1, max(0.0, self.backoff_until - time.monotonic())))

    # --- draining -------------------------------------------------------------------------

    async def _drain_until_stopped(self) -> int:
        """Drain; on SIGTERM let the batch in hand finish within the grace period, else
        cancel it (its transaction rolls back and its rows stay)."""
        drain = asyncio.ensure_future(self.drain())
        stop = asyncio.ensure_future(self.daemon.stopping.wait())
        try:
            await asyncio.wait({drain, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not drain.done():
                budget = max(1.0, self.settings.shutdown_grace_seconds - 6.0)
                await asyncio.wait({drain}, timeout=budget)
            if not drain.done():
                log.warning("batch not finished within the grace period, rolling back")
                drain.cancel()
            results = await asyncio.gather(drain, return_exceptions=True)
        finally:
            stop.cancel()
            if not drain.done():  # we were cancelled ourselves: take the batch with us
                drain.cancel()
        claimed = results[0]
        if isinstance(claimed, BaseException):
            if isinstance(claimed, asyncio.CancelledError):
                return 0
            raise claimed
        return claimed

    async def drain(self) -> int:
        """Batches until a claim comes back short; the rows claimed.

        The first batch runs alone: a wake-up for a few rows costs one claim. Only a full
        batch (a backlog) puts every worker on it, each on lanes of its own, so one batch's
        Postgres work overlaps another's publishing.
        """
        first = await self.batch(self.pipelines[0])
        if first < self.settings.publisher_batch_size or self.workers == 1:
            return first
        counts = await asyncio.gather(*(self._drain_worker(p) for p in self.pipelines))
        return first + sum(counts)

    async def _drain_worker(self, pipeline: AckPipeline) -> int:
        total = 0
        while not self.daemon.stopping.is_set() and time.monotonic() >= self.backoff_until:
            claimed = await self.batch(pipeline)
            total += claimed
            self.daemon.health.turned()
            if claimed < self.settings.publisher_batch_size:
                break
        return total

    async def batch(self, pipeline: AckPipeline) -> int:
        """One batch in one transaction; returns the number of rows claimed."""
        assert self.nc is not None and self.pool is not None and self.publisher is not None
        if not self.nc.is_connected:
            self._transport_failure("nats_unavailable", 0)
            return 0
        try:
            # Pipeline mode: BEGIN travels with the claim and COMMIT with outbox_complete,
            # two round trips a batch instead of four (on a busy machine each round trip
            # waits for two processes to be scheduled).
            async with self.pool.connection() as conn, conn.pipeline():
                async with conn.transaction():
                    rows = await self._claim(conn)
                    if not rows:
                        self._db_success()
                        return 0
                    m.BATCH_SIZE.observe(len(rows))
                    outcome = await self.publisher.publish(pipeline, rows)
                    if outcome.transport:
                        raise psycopg.Rollback()
                    completed = await self._complete(conn, outcome)
                settled = None if outcome.transport else await completed.fetchone()
        except (psycopg.Error, PoolTimeout) as exc:
            await self._db_failure(exc)
            return 0
        self._db_success()
        if outcome.transport:
            self._transport_failure(outcome.held_reason or "nats_unavailable", len(rows))
        else:
            self._settled(rows, outcome, settled)
        return len(rows)

    async def _claim(self, conn: psycopg.AsyncConnection) -> list[ClaimedRow]:
        s = self.settings
        cur = await conn.execute(
            CLAIM_SQL,
            {
                "limit": s.publisher_batch_size,
                "max_body_bytes": self.max_body_bytes,
                "batch_max_bytes": s.publisher_batch_max_bytes,
                "server_url": s.server_url,
            },
            prepare=True,
        )
        return [ClaimedRow(*r) for r in await cur.fetchall()]

    async def _complete(
        self, conn: psycopg.AsyncConnection, outcome: BatchOutcome
    ) -> psycopg.AsyncCursor:
        """Queue outbox_complete for the batch; its result arrives with the COMMIT."""
        s = self.settings
        published = [
            {"execution_id": r.execution_id, "outbox_id": r.outbox_id} for r, _, _ in outcome.acked
        ]
        failed = [
            {
                "execution_id": f.row.execution_id,
                "outbox_id": f.row.outbox_id,
                "error": f.error,
                "class": f.cls,
            }
            for f in outcome.failed
        ]
        return await conn.execute(
            COMPLETE_SQL,
            {
                "published": json.dumps(published),
                "failed": json.dumps(failed),
                "max_attempts": s.publisher_max_attempts,
                "retry_base_s": s.publisher_retry_base_seconds,
                "retry_max_s": s.publisher_retry_max_seconds,
            },
            prepare=True,
        )

    # --- outcomes -------------------------------------------------------------------------

    def _settled(self, rows: list[ClaimedRow], outcome: BatchOutcome, settled: Any) -> None:
        """Metrics and logs of a committed batch."""
        for row in rows:
            if row.dead:
                m.DEAD.labels(reason="too_large").inc()
                log.warning(
                    "outbox row dead: body too large even after slimming",
                    extra={
                        "execution_id": str(row.execution_id),
                        "outbox_id": row.outbox_id,
                        "msg_id": row.msg_id,
                        "reason": "too_large",
                    },
                )
        by_stream: dict[str, list[Any]] = {}
        for row, stream, duplicate in outcome.acked:
            by_stream.setdefault(stream, []).append((row, duplicate))
        for stream, acked in by_stream.items():
            m.PUBLISHED.labels(stream=stream).inc(len(acked))
            dups = sum(1 for _, d in acked if d)
            if dups:
                m.DUPLICATES.labels(stream=stream).inc(dups)
            slim = sum(1 for r, _ in acked if r.slimmed)
            if slim:
                m.SLIMMED.labels(stream=stream).inc(slim)
            latency = m.PUBLISH_LATENCY.labels(stream=stream)
            for row, _ in acked:
                latency.observe(max(0.0, outcome.acked_at - row.created_at.timestamp()))
        if outcome.rejected:
            m.ERRORS.labels(reason="publish_rejected").inc(outcome.rejected)
        if outcome.failed:
            moved = settled[2] if settled else 0
            final = [f for f in outcome.failed if f.cls != "transient"]
            for f in final:
                m.DEAD.labels(reason=f.cls).inc()
            if moved > len(final):
                m.DEAD.labels(reason="max_attempts").inc(moved - len(final))
            timeouts = sum(1 for f in outcome.failed if f.error == "ack timeout")
            if timeouts:
                m.ERRORS.labels(reason="ack_timeout").inc()
            for f in outcome.failed:
                log.warning(
                    "publish failed",
                    extra={
                        "execution_id": str(f.row.execution_id),
                        "outbox_id": f.row.outbox_id,
                        "msg_id": f.row.msg_id,
                        "class": f.cls,
                        "error": f.error,
                    },
                )
        if outcome.held:
            # Some rows met a transport failure after others were acked: they stay as they
            # were, and the relay backs off as for a whole failed batch.
            self._transport_failure(outcome.held_reason or "nats_unavailable", len(outcome.held))
        elif outcome.acked:
            self.backoff = 0.0

    def _transport_failure(self, reason: str, rows: int) -> None:
        m.ERRORS.labels(reason=reason).inc()
        s = self.settings
        self.backoff = min(s.publisher_backoff_max_seconds, max(0.5, self.backoff * 2))
        self.backoff_until = time.monotonic() + self.backoff
        if reason == "stream_missing":
            self.recheck_streams = True
            self.streams_ok = False
        log.warning(
            "transport failure, backing off",
            extra={"reason": reason, "rows": rows, "backoff_seconds": self.backoff},
        )

    def _db_success(self) -> None:
        self.db_ok = True
        self.db_backoff = 0.0

    async def _db_failure(self, exc: Exception) -> None:
        """Roll back (done by the transaction block), back off, and come back to drain."""
        m.ERRORS.labels(reason="db_error").inc()
        self.db_ok = False
        self.db_backoff = min(DB_BACKOFF_MAX, max(0.1, self.db_backoff * 2))
        log.warning(
            "database error, batch rolled back: %s",
            exc,
            extra={"retry_in": self.db_backoff},
        )
        if not await self.daemon.sleep(self.db_backoff):
            self.wake.set()

    # --- gauges ---------------------------------------------------------------------------

    async def _stats(self) -> None:
        assert self.pool is not None
        while not self.daemon.stopping.is_set():
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(STATS_SQL)
                    row = await cur.fetchone()
                    cur = await conn.execute(PENDING_SQL)
                    kinds = await cur.fetchall()
                if row is not None:
                    m.OUTBOX_OLDEST.set(row[2])
                for kind, pending in kinds:
                    m.OUTBOX_PENDING.labels(kind=kind).set(pending)
            except (psycopg.Error, PoolTimeout) as exc:
                log.debug("outbox stats failed: %s", exc)
            if await self.daemon.sleep(self.settings.publisher_stats_seconds):
                return


async def main(daemon: Daemon) -> None:
    relay = OutboxRelay(daemon)
    try:
        await relay.run()
    finally:
        await relay.close()


ID_PATTERN = re.compile(r"[0-9]{1,19}")


def requeue_dead_command(settings: Settings, ids: list[str]) -> int:
    """`noetl-server outbox requeue-dead [ids…]`: dead rows back into the outbox."""
    parsed: list[int] = []
    for raw in ids:
        if not ID_PATTERN.fullmatch(raw) or not 1 <= int(raw) <= 2**63 - 1:
            print(f"outbox requeue-dead: invalid outbox id {raw!r}")
            return 2
        parsed.append(int(raw))
    with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
        row = conn.execute(REQUEUE_SQL, {"ids": parsed or None}).fetchone()
    count = row[0] if row else 0
    print(json.dumps({"requeued": count}))
    return 0
