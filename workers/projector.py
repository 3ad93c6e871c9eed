"""The projector role (envelope.md §7): one durable pull consumer per pod on the events stream,
filtered to the pod's shards, folding batches idempotently into the target database.

Per batch: decode and normalise every message (a bad one becomes a reject, never an error),
one transaction with one `project_events` call plus the reject rows, commit, then ack the
projected messages and term the rejected ones without waiting. A database failure naks the
batch with a growing delay and pauses until the database answers; redelivery is harmless
because every write is idempotent. The next batch is fetched while the current one is being
written (at most two batches in hand), and batches are written one at a time, in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from psycopg_pool import AsyncConnectionPool

from core.envelope import EnvelopeError, decode_stream_message, normalise, readable_ids
from core.projection import (
    QUERIES,
    Projection,
    RejectRow,
    add_rejects,
    is_data_error,
    project,
    project_committed,
)
from core.settings import Settings
from core.shard import owned_shards, shard_for
from core.streams import StreamMismatch, StreamMissing, ensure_stream, stream_specs
from workers.connections import connect_nats
from workers.daemon import Daemon
from workers.projector_metrics import (
    BATCH_SECONDS,
    BATCH_SIZE,
    CONSUMER_ACK_PENDING,
    CONSUMER_PENDING,
    ERRORS,
    EVENTS,
    LAG,
    OWNED_SHARDS,
    init_labels,
)
from workers.projector_pull import BatchPuller, PullError

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
STREAM_RETRY_SECONDS = 5.0
PARTITION_INTERVAL_SECONDS = 3600.0
MAINTENANCE_LEASE = "maintenance"
POOL_TIMEOUT_SECONDS = 10.0
_NOT_DURABLE_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_ORDINAL = re.compile(r"(\d+)$")


class ProjectorConfigError(ValueError):
    """Replicas, ordinal and shard count that cannot work together (§7.1): exit 2."""


@dataclass(frozen=True)
class Identity:
    durable: str
    ordinal: int
    replicas: int
    shards: tuple[int, ...]
    filters: tuple[str, ...]


def identity(settings: Settings) -> Identity:
    """Consumer name, ordinal (trailing digits of the name), owned shards and filter subjects."""
    name = settings.consumer_name
    found = _ORDINAL.search(name)
    ordinal = int(found.group(1)) if found else 0
    replicas, shard_count = settings.projector_replicas, settings.event_shard_count
    if not 1 <= replicas <= shard_count:
        raise ProjectorConfigError(
            f"NOETL_PROJECTOR_REPLICAS={replicas} must be within 1..NOETL_EVENT_SHARD_COUNT"
            f"={shard_count}"
        )
    if ordinal >= replicas:
        raise ProjectorConfigError(
            f"consumer {name!r} has ordinal {ordinal}, not below NOETL_PROJECTOR_REPLICAS"
            f"={replicas}"
        )
    shards = tuple(owned_shards(ordinal, replicas, shard_count))
    if len(shards) == shard_count:
        filters: tuple[str, ...] = ("noetl.events.>",)
    else:
        filters = tuple(f"noetl.events.{s}.*" for s in shards)
    # JetStream names may not hold dots or wildcards; a FQDN hostname keeps its shape
    durable = _NOT_DURABLE_CHARS.sub("_", name) or "noetl-projector-0"
    return Identity(durable, ordinal, replicas, shards, filters)


class _Transient(Exception):
    """The database (target or primary) failed for a reason that may pass: retry the batch."""


@dataclass
class _Item:
    msg: Msg
    raw: Any = None
    envelope: dict[str, Any] | None = None
    reason: str | None = None  # reject reason; None while projectable
    error: str = ""

    def reject(self, reason: str, error: str) -> None:
        self.envelope, self.reason, self.error = None, reason, error


class Projector:
    def __init__(self, settings: Settings, daemon: Daemon) -> None:
        self.settings = settings
        self.daemon = daemon
        self.identity = identity(settings)
        self.stream = settings.events_stream
        self.target_is_primary = settings.target_database_url == settings.database_url
        self.flush_seconds = settings.projector_flush_ms / 1000
        self.stats = {"inserted": 0, "duplicate": 0, "rejected": 0, "batches": 0}
        self.stream_ok = False
        self.consumer_ok = False
        self.last_fetch = time.monotonic()
        self.backoff = BACKOFF_START_SECONDS
        self.pool: AsyncConnectionPool | None = None
        self.primary_pool: AsyncConnectionPool | None = None
        self.nc: NATS | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        init_labels()
        OWNED_SHARDS.set(len(self.identity.shards))
        log.info(
            "projector identity",
            extra={
                "consumer": self.identity.durable,
                "ordinal": self.identity.ordinal,
                "replicas": self.identity.replicas,
                "shards": list(self.identity.shards),
                "target_is_primary": self.target_is_primary,
            },
        )
        self.pool = self._pool(self.settings.target_database_url, "target")
        if not self.target_is_primary:
            self.primary_pool = self._pool(self.settings.database_url, "primary")
        health = self.daemon.health
        health.checks["target"] = self._target_ok
        health.checks["nats"] = lambda: self.nc is not None and self.nc.is_connected
        health.checks["stream"] = lambda: self.stream_ok
        health.checks["consumer"] = lambda: self.consumer_ok
        health.checks["fetch"] = self._fetching
        puller: BatchPuller | None = None
        try:
            await self.pool.open(wait=False)
            if self.primary_pool is not None:
                await self.primary_pool.open(wait=False)
            self.nc = await connect_nats(self.settings, f"noetl-projector-{self.identity.durable}")
            js = self.nc.jetstream()
            if not await self._wait_for_stream(js):
                return
            await self._ensure_consumer(js)
            puller = BatchPuller(self.nc, self.stream, self.identity.durable)
            await puller.start()
            self.daemon.spawn(self._stats_loop(js), "projector-stats")
            if not self.target_is_primary:
                self.daemon.spawn(self._partition_loop(), "projector-partitions")
            await self._loop(puller, js)
        finally:
            await self._close(puller)

    def _pool(self, url: str, name: str) -> AsyncConnectionPool:
        timeout = self.settings.db_statement_timeout_ms
        return AsyncConnectionPool(
            url,
            min_size=self.settings.db_pool_min,
            max_size=self.settings.pool_max("projector"),
            kwargs={"autocommit": True, "options": f"-c statement_timeout={timeout}"},
            name=f"projector-{name}",
            timeout=POOL_TIMEOUT_SECONDS,
            open=False,
        )

    async def _close(self, puller: BatchPuller | None) -> None:
        if puller is not None:
            # let the next owner have at once what was received but never handed to a batch
            for msg in await puller.drain(self.flush_seconds + 1.0):
                with contextlib.suppress(Exception):
                    await msg.nak()
            await puller.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self.nc.close()
        for pool in (self.pool, self.primary_pool):
            if pool is not None:
                with contextlib.suppress(Exception):
                    await pool.close(timeout=5)

    async def _wait_for_stream(self, js: JetStreamContext) -> bool:
        """Verify the events stream; while it is missing, report it and retry every 5 s."""
        spec = next(s for s in stream_specs(self.settings) if s.name == self.stream)
        while not self.daemon.stopping.is_set():
            try:
                await ensure_stream(js, spec, create=False)
                self.stream_ok = True
                return True
            except StreamMissing:
                log.warning("stream_missing", extra={"stream": self.stream})
            except (TimeoutError, NatsError) as exc:
                ERRORS.labels(reason="nats_error").inc()
                log.warning("stream check failed: %s", exc, extra={"stream": self.stream})
            self.daemon.health.turned()
            if await self.daemon.sleep(STREAM_RETRY_SECONDS):
                return False
        return False

    def _consumer_config(self) -> ConsumerConfig:
        filters = list(self.identity.filters)
        return ConsumerConfig(
            durable_name=self.identity.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            max_deliver=-1,
            max_ack_pending=self.settings.projector_max_ack_pending,
            ack_wait=float(self.settings.projector_ack_wait_seconds),
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )

    async def _ensure_consumer(self, js: JetStreamContext) -> None:
        """Create the durable consumer, or bring its filters and limits to the configuration
        (§5.4). A new consumer delivers the whole stream; the deliver policy of an existing
        one cannot change, so a difference is only a warning."""
        wanted = self._consumer_config()
        name = self.identity.durable
        try:
            info = await js.consumer_info(self.stream, name)
        except NotFoundError:
            await js.add_consumer(self.stream, wanted)
            log.info(
                "consumer created", extra={"consumer": name, "filters": wanted_filters(wanted)}
            )
            self.consumer_ok = True
            return
        actual = info.config
        if actual.deliver_policy != DeliverPolicy.ALL:
            log.warning(
                "consumer deliver policy differs",
                extra={"consumer": name, "actual": str(actual.deliver_policy)},
            )
        changes: dict[str, tuple[Any, Any]] = {}
        if wanted_filters(actual) != wanted_filters(wanted):
            changes["filters"] = (wanted_filters(actual), wanted_filters(wanted))
        if actual.max_ack_pending != wanted.max_ack_pending:
            changes["max_ack_pending"] = (actual.max_ack_pending, wanted.max_ack_pending)
        if actual.ack_wait is None or abs(actual.ack_wait - (wanted.ack_wait or 0)) > 0.001:
            changes["ack_wait"] = (actual.ack_wait, wanted.ack_wait)
        if changes:
            update = ConsumerConfig.from_response(actual.as_dict())
            update.filter_subject = wanted.filter_subject
            update.filter_subjects = wanted.filter_subjects
            update.max_ack_pending = wanted.max_ack_pending
            update.ack_wait = wanted.ack_wait
            await js.add_consumer(self.stream, update)
            log.info(
                "consumer updated",
                extra={"consumer": name, "changes": {k: str(v) for k, v in changes.items()}},
            )
        self.consumer_ok = True

    # ------------------------------------------------------------------ health

    async def _target_ok(self) -> bool:
        assert self.pool is not None
        async with self.pool.connection(timeout=1.0) as conn:
            await conn.execute(QUERIES["select_one"])
        return True

    def _fetching(self) -> bool:
        return time.monotonic() - self.last_fetch < 3 * self.flush_seconds + 30

    # ------------------------------------------------------------------ the loop

    async def _loop(self, puller: BatchPuller, js: JetStreamContext) -> None:
        batch_size = self.settings.projector_batch_size
        writing: asyncio.Task | None = None
        try:
            while not self.daemon.stopping.is_set():
                try:
                    msgs = await puller.fetch(batch_size, self.flush_seconds)
                except PullError as exc:
                    ERRORS.labels(reason="nats_error").inc()
                    log.warning("pull refused: %s", exc, extra={"consumer": self.identity.durable})
                    self.consumer_ok = False
                    await self._recover_consumer(js)
                    continue
                except NatsError as exc:
                    ERRORS.labels(reason="nats_error").inc()
                    log.warning("fetch failed: %s", exc)
                    await self.daemon.sleep(self.backoff)
                    continue
                fetched_at = time.monotonic()
                self.last_fetch = fetched_at
                self.daemon.health.turned()
                # decoding overlaps the database's work on the previous batch
                items = await self._decode(msgs)
                if writing is not None:
                    await writing  # one batch at a time, in stream order
                    writing = None
                if not items:
                    LAG.set(0)
                    continue
                writing = asyncio.ensure_future(self._handle(items, fetched_at))
        finally:
            if writing is not None:
                await writing

    async def _recover_consumer(self, js: JetStreamContext) -> None:
        try:
            await self._ensure_consumer(js)
        except (TimeoutError, NatsError) as exc:
            log.warning("consumer check failed: %s", exc)
            await self.daemon.sleep(self.backoff)
            self.backoff = min(self.backoff * 2, BACKOFF_MAX_SECONDS)

    async def _handle(self, items: list[_Item], fetched_at: float) -> None:
        try:
            await self._resolve_slimmed(items)
            await self._write(items)
        except _Transient as exc:
            ERRORS.labels(reason="db_error").inc()
            delay = self.backoff
            log.warning(
                "database unavailable, batch returned: %s",
                exc,
                extra={"messages": len(items), "retry_seconds": delay},
            )
            for item in items:
                with contextlib.suppress(Exception):
                    await item.msg.nak(delay=delay)
            await self._wait_for_database()
            return
        committed = time.time()
        BATCH_SECONDS.observe(time.monotonic() - fetched_at)
        self.backoff = BACKOFF_START_SECONDS
        newest: str | None = None
        for item in items:
            try:
                if item.reason is None:
                    await item.msg.ack()
                    created = item.envelope["created_at"] if item.envelope else None
                    if created and (newest is None or created > newest):
                        newest = created
                else:
                    await item.msg.term()
            except NatsError as exc:  # a lost ack only causes a counted duplicate later
                ERRORS.labels(reason="nats_error").inc()
                log.warning("ack failed: %s", exc)
                break
        BATCH_SIZE.observe(len(items))
        if newest is not None:
            LAG.set(max(0.0, committed - datetime.fromisoformat(newest).timestamp()))

    async def _decode(self, msgs: list[Msg]) -> list[_Item]:
        shard_count = self.settings.event_shard_count
        max_bytes = self.settings.event_max_bytes
        items = []
        for count, msg in enumerate(msgs, start=1):
            if count % 100 == 0:
                await asyncio.sleep(0)  # let the batch being written reach Postgres meanwhile
            item = _Item(msg)
            items.append(item)
            try:
                item.raw = decode_stream_message(msg.data, max_bytes)
                item.envelope = normalise(item.raw, source="stream")
            except EnvelopeError as exc:
                item.reject(exc.kind, str(exc))
                continue
            parts = msg.subject.split(".")
            expected = str(shard_for(int(item.envelope["execution_id"]), shard_count))
            if len(parts) != 4 or parts[2] != expected:
                ERRORS.labels(reason="shard_mismatch").inc()
        return items

    async def _resolve_slimmed(self, items: list[_Item]) -> None:
        """A slimmed body (§2.6) lacks context, result and most of meta: on another database
        the full event is read from the primary; on the primary the row is already there."""
        if self.primary_pool is None:
            return
        slimmed = [i for i in items if i.envelope is not None and i.envelope["payload_ref"]]
        if not slimmed:
            return
        keys = [(int(i.envelope["execution_id"]), int(i.envelope["event_id"])) for i in slimmed]  # type: ignore[index]
        try:
            async with self.primary_pool.connection() as conn:
                cur = await conn.execute(
                    QUERIES["event_envelopes"],
                    {"execution_ids": [k[0] for k in keys], "event_ids": [k[1] for k in keys]},
                )
                found = {(r[0], r[1]): r[2] for r in await cur.fetchall()}
        except psycopg.Error as exc:
            raise _Transient(f"primary: {exc}") from exc
        for item, key in zip(slimmed, keys, strict=True):
            full = found.get(key)
            if full is None:
                ERRORS.labels(reason="unresolved_ref").inc()
                item.reject("unresolved_ref", "slimmed event not found on the primary")
                continue
            try:
                item.envelope = normalise(full, source="stream")
            except EnvelopeError as exc:
                item.reject(exc.kind, f"primary row: {exc}")

    async def _write(self, items: list[_Item]) -> None:
        """Commit the batch: the projection and the reject rows of its bad messages.

        A batch without bad messages (the usual case) is one statement in one round trip. With
        bad messages, or when Postgres refuses one (class 22/23), it is one transaction with
        the reject rows, halving in savepoints to isolate the refused ones (§7.4). Rejects that
        project_events itself reports after a one-statement commit are written right after,
        before any message is acked or termed: a crash in between redelivers the batch, which
        projects as duplicates and rejects the same messages again."""
        assert self.pool is not None
        projectable = [i for i in items if i.envelope is not None]
        envelopes: list[dict[str, Any]] = [i.envelope for i in projectable]  # type: ignore[misc]
        try:
            async with self.pool.connection() as conn:
                result = None
                if len(projectable) == len(items):
                    result = await project_committed(conn, envelopes)
                if result is None:
                    async with conn.transaction():
                        result = await project(conn, envelopes)
                        self._mark_rejected(projectable, result)
                        rejects = [self._reject_row(i) for i in items if i.reason is not None]
                        await add_rejects(conn, self.stream, self.identity.durable, rejects)
                else:
                    self._mark_rejected(projectable, result)
                    rejects = [self._reject_row(i) for i in items if i.reason is not None]
                    if rejects:
                        async with conn.transaction():
                            await add_rejects(conn, self.stream, self.identity.durable, rejects)
        except psycopg.Error as exc:
            if is_data_error(exc):
                log.error("reject rows refused: %s", exc)
            raise _Transient(str(exc)) from exc
        EVENTS.labels(outcome="inserted").inc(result.inserted)
        EVENTS.labels(outcome="duplicate").inc(result.duplicate)
        EVENTS.labels(outcome="rejected").inc(len(rejects))
        self.stats["inserted"] += result.inserted
        self.stats["duplicate"] += result.duplicate
        self.stats["rejected"] += len(rejects)
        self.stats["batches"] += 1
        for row in rejects:
            log.warning(
                "message rejected",
                extra={
                    "reason": row.reason,
                    "error": row.error,
                    "stream_seq": row.stream_seq,
                    "execution_id": str(row.execution_id) if row.execution_id else None,
                    "event_id": str(row.event_id) if row.event_id else None,
                },
            )

    @staticmethod
    def _mark_rejected(projectable: list[_Item], result: Projection) -> None:
        for rejected in result.rejected:
            projectable[rejected.index].reject(rejected.reason, rejected.error)

    def _reject_row(self, item: _Item) -> RejectRow:
        msg = item.msg
        execution_id, event_id = readable_ids(item.raw)
        try:
            meta = msg.metadata
            stream_seq, deliveries = meta.sequence.stream, meta.num_delivered or 1
        except Exception:  # not a JetStream reply subject: cannot happen on a pull consumer
            stream_seq, deliveries = 0, 1
        headers = dict(msg.headers) if msg.headers else None
        return RejectRow(
            stream_seq=stream_seq,
            subject=msg.subject,
            msg_id=headers.get("Nats-Msg-Id") if headers else None,
            execution_id=execution_id,
            event_id=event_id,
            reason=item.reason or "invalid",
            error=item.error,
            deliveries=deliveries,
            headers=headers,
            body=bytes(msg.data),
        )

    async def _wait_for_database(self) -> None:
        """Pause until the target (and the primary, when separate) answers, backing off."""
        while not self.daemon.stopping.is_set():
            self.daemon.health.turned()  # waiting on purpose is not a stalled loop (/livez)
            if await self.daemon.sleep(self.backoff):
                return
            self.backoff = min(self.backoff * 2, BACKOFF_MAX_SECONDS)
            try:
                for pool in (self.pool, self.primary_pool):
                    if pool is not None:
                        async with pool.connection() as conn:
                            await conn.execute(QUERIES["select_one"])
                return
            except psycopg.Error as exc:
                log.warning("database still unavailable: %s", exc)

    # ------------------------------------------------------------------ side tasks

    async def _stats_loop(self, js: JetStreamContext) -> None:
        while True:
            try:
                info = await js.consumer_info(self.stream, self.identity.durable)
                CONSUMER_PENDING.set(info.num_pending or 0)
                CONSUMER_ACK_PENDING.set(info.num_ack_pending or 0)
                self.consumer_ok = True
            except NotFoundError:
                self.consumer_ok = False
                log.warning("consumer missing", extra={"consumer": self.identity.durable})
                with contextlib.suppress(NatsError, asyncio.TimeoutError):
                    await self._ensure_consumer(js)
            except (TimeoutError, NatsError) as exc:
                ERRORS.labels(reason="nats_error").inc()
                log.warning("consumer info failed: %s", exc)
            if await self.daemon.sleep(self.settings.projector_stats_seconds):
                return

    async def _partition_loop(self) -> None:
        """Hourly on another database: create the coming months' event partitions under the
        maintenance lease (the primary's are the system playbooks' job)."""
        assert self.pool is not None
        holder = f"projector:{self.identity.durable}"
        while True:
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(
                        QUERIES["lease_acquire"],
                        {"name": MAINTENANCE_LEASE, "holder": holder, "ttl_s": 300},
                    )
                    row = await cur.fetchone()
                    if row and row[0]:
                        try:
                            cur = await conn.execute(
                                QUERIES["event_partition_ensure"],
                                {"months_ahead": self.settings.event_partition_months_ahead},
                            )
                            created = [r[0] for r in await cur.fetchall()]
                            if created:
                                log.info("partitions created", extra={"partitions": created})
                        finally:
                            await conn.execute(
                                QUERIES["lease_release"],
                                {"name": MAINTENANCE_LEASE, "holder": holder},
                            )
            except psycopg.Error as exc:
                ERRORS.labels(reason="db_error").inc()
                log.warning("partition maintenance failed: %s", exc)
            if await self.daemon.sleep(PARTITION_INTERVAL_SECONDS):
                return


def wanted_filters(config: ConsumerConfig) -> list[str]:
    found = set(config.filter_subjects or [])
    if config.filter_subject:
        found.add(config.filter_subject)
    return sorted(found)


async def main(daemon: Daemon) -> None:
    try:
        projector = Projector(daemon.settings, daemon)
    except ProjectorConfigError as exc:
        log.error("projector configuration: %s", exc)
        raise SystemExit(EXIT_CONFIG) from None
    try:
        await projector.run()
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
        raise SystemExit(EXIT_CONFIG) from None


# ---------------------------------------------------------------------- report

REPORT_COLUMNS = (
    ("path", "path"),
    ("versions", "catalog_ids"),
    ("runs", "runs"),
    ("ok", "completed"),
    ("failed", "failed"),
    ("cancelled", "cancelled"),
    ("running", "running"),
    ("success", "success_rate"),
    ("p50_ms", "p50_ms"),
    ("p95_ms", "p95_ms"),
    ("mean_ms", "mean_ms"),
)


def report_command(settings: Settings, date_from: str | None, date_to: str | None) -> int:
    """`noetl-server projector report`: playbook_report over the target's read models."""
    try:
        last = date.fromisoformat(date_to) if date_to else datetime.now(UTC).date()
        first = date.fromisoformat(date_from) if date_from else last - timedelta(days=7)
    except ValueError as exc:
        print(f"noetl-server projector report: {exc} (dates are YYYY-MM-DD)", file=sys.stderr)
        return EXIT_CONFIG
    if first > last:
        print("noetl-server projector report: --from is after --to", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with psycopg.connect(settings.target_database_url, connect_timeout=10) as conn:
            cur = conn.execute(QUERIES["playbook_report"], {"date_from": first, "date_to": last})
            names = [d.name for d in cur.description or ()]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    except psycopg.Error as exc:
        print(f"noetl-server projector report: {exc}", file=sys.stderr)
        return 1
    print(f"playbook report {first.isoformat()} .. {last.isoformat()}")
    print(format_report(rows))
    return 0


def format_report(rows: list[dict[str, Any]]) -> str:
    """An aligned text table; numbers right-aligned, absent values as '-'."""

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if key == "catalog_ids":
            return ",".join(str(v) for v in value)
        if key == "success_rate":
            return f"{value * 100:.1f}%"
        if isinstance(value, float):
            return f"{value:.0f}"
        return str(value)

    table = [[title for title, _ in REPORT_COLUMNS]]
    table += [[cell(key, row.get(key)) for _, key in REPORT_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(REPORT_COLUMNS))]
    lines = []
    for line in table:
        parts = [
            text.ljust(width) if i < 2 else text.rjust(width)
            for i, (text, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    if not rows:
        lines.append("(no runs in this period)")
    return "\n".join(lines)
