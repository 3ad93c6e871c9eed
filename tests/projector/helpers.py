"""Helpers of the projector tests: publishing envelopes as the publisher does, running
projectors in-process, and reading every projected table in key order."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import nats
import orjson
import psycopg
from nats.js import JetStreamContext

from bench.eventgen import subject
from core.projection import project
from core.settings import Settings
from core.streams import ensure_stream, stream_specs
from workers.daemon import Daemon
from workers.projector import Projector

# Every table the projection writes, with the key it is compared in.
PROJECTED_TABLES = {
    "event": "execution_id, event_id",
    "execution_summary": "execution_id",
    "step_run": "execution_id, command_id",
    "playbook_stats": "catalog_id, day",
}


def settings_for(db_url: str, nats_url: str, **overrides: Any) -> Settings:
    base = Settings(
        database_url=db_url,
        nats_url=nats_url,
        projector_consumer="noetl-projector-0",
        projector_flush_ms=50,
        projector_stats_seconds=0.5,
        shutdown_grace_seconds=10,
    )
    return dataclasses.replace(base, **overrides)


async def create_streams(nats_url: str, settings: Settings) -> None:
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        for spec in stream_specs(settings):
            await ensure_stream(js, spec, create=True)
    finally:
        await client.close()


async def publish(
    js: JetStreamContext,
    envelopes: Iterable[dict[str, Any]],
    shard_count: int = 16,
) -> int:
    """As the publisher sends them: canonical JSON, `Nats-Msg-Id: event:<id>`, the shard
    subject, pipelined."""
    count = 0
    for envelope in envelopes:
        await js.publish_async(
            subject(envelope, shard_count),
            orjson.dumps(envelope),
            headers={
                "Nats-Msg-Id": f"event:{envelope['event_id']}",
                "Noetl-Event-Type": envelope["event_type"],
                "Noetl-Execution-Id": envelope["execution_id"],
            },
        )
        count += 1
    await js.publish_async_completed()
    return count


async def publish_raw(js: JetStreamContext, subject_: str, body: bytes, msg_id: str) -> None:
    ack = await js.publish(subject_, body, headers={"Nats-Msg-Id": msg_id})
    assert not ack.duplicate


class RunningProjector:
    def __init__(self, settings: Settings) -> None:
        self.daemon = Daemon("projector", settings)
        self.projector = Projector(settings, self.daemon)
        self.task: asyncio.Task | None = None

    @property
    def stats(self) -> dict[str, int]:
        return self.projector.stats

    async def start(self) -> RunningProjector:
        self.task = asyncio.create_task(self.projector.run())
        return self

    async def stop(self) -> None:
        self.daemon.stopping.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)
        for task in list(self.daemon._tasks):
            task.cancel()
        await asyncio.gather(*self.daemon._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def running(*settings: Settings) -> AsyncIterator[list[RunningProjector]]:
    projectors = [await RunningProjector(s).start() for s in settings]
    try:
        yield projectors
    finally:
        for p in projectors:
            await p.stop()


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0, what: str = ""
) -> None:
    """Poll an effect until it holds, failing after a bounded deadline."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = predicate()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {what}")
        await asyncio.sleep(0.05)


def count_rows(db_url: str, table: str = "event") -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM noetl.{table}").fetchone()
    assert row is not None
    return int(row[0])


def dump_tables(db_url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(db_url) as conn:
        return {
            table: conn.execute(f"SELECT * FROM noetl.{table} ORDER BY {key}").fetchall()
            for table, key in PROJECTED_TABLES.items()
        }


def truncate_projection(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE noetl.event, noetl.execution_summary, noetl.step_run, "
            "noetl.playbook_stats, noetl.projector_reject, noetl.event_outbox"
        )


async def project_direct(
    db_url: str, envelopes: Sequence[dict[str, Any]], batch_size: int = 500
) -> None:
    """Project through project_events without NATS, one transaction per batch."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for start in range(0, len(envelopes), batch_size):
            async with conn.transaction():
                result = await project(conn, envelopes[start : start + batch_size])
            assert not result.rejected, result.rejected


def stats_match_summary(db_url: str) -> bool:
    """playbook_stats equals the GROUP BY over execution_summary (envelope.md §3.2)."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            """
            WITH g AS (
                SELECT catalog_id, day, count(*) AS runs,
                       count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
                       count(*) FILTER (WHERE status = 'FAILED') AS failed,
                       count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
                       coalesce(sum(duration_ms) FILTER (
                           WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED')), 0) AS dsum,
                       (SELECT array_agg((SELECT count(*) FROM noetl.execution_summary s2
                                           WHERE s2.catalog_id = s.catalog_id AND s2.day = s.day
                                             AND s2.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
                                             AND noetl.duration_bucket(s2.duration_ms) = b)
                                         ORDER BY b)
                          FROM generate_series(0, 17) b) AS hist
                  FROM noetl.execution_summary s GROUP BY catalog_id, day
            )
            SELECT (SELECT count(*) FROM g FULL JOIN noetl.playbook_stats p USING (catalog_id, day)
                     WHERE g.runs IS DISTINCT FROM p.runs
                        OR g.completed IS DISTINCT FROM p.completed
                        OR g.failed IS DISTINCT FROM p.failed
                        OR g.cancelled IS DISTINCT FROM p.cancelled
                        OR g.dsum IS DISTINCT FROM p.duration_ms_sum
                        OR g.hist IS DISTINCT FROM p.duration_hist) AS differences,
                   (SELECT count(*) FROM noetl.playbook_stats) AS rows
            """
        ).fetchone()
    assert row is not None
    return row[0] == 0 and row[1] > 0
