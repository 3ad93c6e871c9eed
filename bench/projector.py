"""`python -m bench projector`: the projector against the physical limits, in one run.

(a) raw fetch: nats-py fetching and acking the same 100,000 messages from the events
    stream (a durable pull consumer, `PullSubscription.fetch`, the projector's batch size and
    flush interval), no Postgres. Reported as well: the same with the projector's own puller
    (workers/projector_pull.py), which speaks the pull protocol without nats-py's per-message
    tasks and is several times faster; `ratio_vs_puller` divides by that.
(b) raw insert: Postgres inserting the same rows into noetl.event, 500 per statement and
    transaction from one JSON array (jsonb_populate_recordset), no NATS, no read models.
(c) the projector (`Projector`, the code `--mode=projector` runs) projecting those 100,000
    messages into a second database (a non-primary target, so every insert is real), with
    its read models; timed from its first committed batch to its last.

The three alternate for NOETL_BENCH_ROUNDS rounds (default 2), each on a fresh consumer and
fresh databases, and the best of each counts, so a neighbour's burst on the machine does not
decide the ratio. Embedded Postgres (fsync off, as in tests) and NATS in a temporary folder;
ends with one JSON line. Targets: throughput >= 15,000 events/s and >= 0.5 x the smaller
raw limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nats
import orjson
import psycopg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.eventgen import event_stream, subject
from core.dburl import with_dbname
from core.embedded import EmbeddedNats, EmbeddedPostgres
from core.migrate import upgrade
from core.settings import Settings
from core.streams import ensure_stream, stream_specs
from workers.daemon import Daemon
from workers.projector import Projector
from workers.projector_pull import BatchPuller

EVENTS = 100_000
BATCH = 500
TARGET_EPS = 15_000.0
TARGET_RATIO = 0.5
PG_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

# the same rows as the projector's, command_id and producer_event_id included (they feed two
# of noetl.event's indexes)
RAW_INSERT_SQL = """
INSERT INTO noetl.event
SELECT r.event_id, r.execution_id, r.catalog_id, r.parent_event_id, r.parent_execution_id,
       r.prev_event_id, r.event_type, r.node_id, r.node_name, r.node_type, r.status, r.context,
       r.result, r.meta, r.error, r.duration, r.worker_id, r.created_at, r.tenant_id,
       r.organization_id, (r.meta ->> 'command_id')::bigint,
       (r.meta ->> 'producer_event_id')::bigint
  FROM jsonb_populate_recordset(NULL::noetl.event, %s::jsonb) AS r
"""


def say(msg: str) -> None:
    print(f"bench projector: {msg}", file=sys.stderr, flush=True)


def fresh_database(admin_url: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        source = f' TEMPLATE "{template}"' if template else ""
        admin.execute(f'CREATE DATABASE "{name}"{source}')
    return with_dbname(admin_url, name)


async def publish_all(nats_url: str, settings: Settings, bodies: list[tuple[str, bytes, str]]):
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        for spec in stream_specs(settings):
            await ensure_stream(js, spec, create=True)
        started = time.perf_counter()
        for index, (subj, body, msg_id) in enumerate(bodies, start=1):
            await js.publish_async(subj, body, headers={"Nats-Msg-Id": msg_id})
            if index % BATCH == 0:
                await js.publish_async_completed()
        await js.publish_async_completed()
        info = await js.stream_info(settings.events_stream)
        assert info.state.messages == len(bodies), info.state
        return len(bodies) / (time.perf_counter() - started)
    finally:
        await client.close()


async def raw_fetch(
    nats_url: str, settings: Settings, name: str, total: int, own_puller: bool
) -> float:
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        await js.add_consumer(
            settings.events_stream,
            ConsumerConfig(
                durable_name=name,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                max_ack_pending=settings.projector_max_ack_pending,
                filter_subject="noetl.events.>",
            ),
        )
        flush = settings.projector_flush_ms / 1000
        if own_puller:
            puller = BatchPuller(client, settings.events_stream, name)
            await puller.start()
            fetch = lambda: puller.fetch(BATCH, flush)  # noqa: E731
        else:
            sub = await js.pull_subscribe_bind(durable=name, stream=settings.events_stream)

            async def fetch() -> list:
                try:
                    return await sub.fetch(BATCH, timeout=flush)
                except nats.errors.TimeoutError:
                    return []

        received = 0
        started = time.perf_counter()
        while received < total:
            msgs = await fetch()
            for msg in msgs:
                await msg.ack()
            received += len(msgs)
        await client.flush()
        return received / (time.perf_counter() - started)
    finally:
        await client.close()


def raw_insert(url: str, bodies: list[bytes]) -> float:
    arrays = [
        (b"[" + b",".join(bodies[i : i + BATCH]) + b"]").decode()
        for i in range(0, len(bodies), BATCH)
    ]
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        for array in arrays:
            # as project_events does: projected rows stay out of the outbox
            conn.execute("SET LOCAL noetl.outbox_suppress = 'on'")
            conn.execute(RAW_INSERT_SQL, (array,))
            conn.commit()
        elapsed = time.perf_counter() - started
        row = conn.execute("SELECT count(*) FROM noetl.event").fetchone()
    assert row is not None and row[0] == len(bodies), row
    return len(bodies) / elapsed


async def run_projector(settings: Settings, total: int) -> float:
    """Events/s from the first committed batch to the last (start-up is not projection)."""
    daemon = Daemon("projector", settings)
    projector = Projector(settings, daemon)
    task = asyncio.create_task(projector.run())
    deadline = time.perf_counter() + 600
    first: tuple[float, int] | None = None
    while projector.stats["inserted"] < total:
        if task.done():
            task.result()
            raise RuntimeError("projector stopped early")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"projector too slow: {projector.stats}")
        if first is None and projector.stats["inserted"]:
            first = (time.perf_counter(), projector.stats["inserted"])
        await asyncio.sleep(0.005)
    assert first is not None
    elapsed = time.perf_counter() - first[0]
    projected = total - first[1]
    daemon.stopping.set()
    await asyncio.wait_for(task, 30)
    for side in list(daemon._tasks):
        side.cancel()
    await asyncio.gather(*daemon._tasks, return_exceptions=True)
    assert projector.stats["rejected"] == 0 and projector.stats["duplicate"] == 0, projector.stats
    return projected / elapsed


def main() -> int:
    rounds = int(os.environ.get("NOETL_BENCH_ROUNDS", "2"))
    workdir = Path(tempfile.mkdtemp(prefix="noetl-bench-projector-"))
    pg = EmbeddedPostgres(workdir / "pg", PG_SETTINGS)
    nats_server = EmbeddedNats(workdir / "nats")
    try:
        pg.start()
        nats_server.start()
        admin = pg.url("postgres")
        template = "bench_template"
        upgrade(fresh_database(admin, template))
        primary = fresh_database(admin, "bench_primary", template)
        settings = dataclasses.replace(
            Settings(),
            database_url=primary,
            nats_url=nats_server.url,
            projector_consumer="noetl-projector-0",
            projector_batch_size=BATCH,
            shutdown_grace_seconds=30,
        )
        events = event_stream(EVENTS, seed=1)[:EVENTS]
        bodies = [orjson.dumps(e) for e in events]
        messages = [
            (subject(e, settings.event_shard_count), b, f"event:{e['event_id']}")
            for e, b in zip(events, bodies, strict=True)
        ]
        publish_eps = asyncio.run(publish_all(nats_server.url, settings, messages))
        say(f"published {len(messages)} messages at {publish_eps:,.0f}/s")

        fetch, pull, insert, projected = [], [], [], []
        for r in range(rounds):
            url = nats_server.url
            fetch.append(asyncio.run(raw_fetch(url, settings, f"raw-{r}", EVENTS, False)))
            say(f"round {r + 1}: raw fetch (nats-py fetch) {fetch[-1]:,.0f} msg/s")
            pull.append(asyncio.run(raw_fetch(url, settings, f"pull-{r}", EVENTS, True)))
            say(f"round {r + 1}: raw fetch (projector's puller) {pull[-1]:,.0f} msg/s")
            raw_db = fresh_database(admin, f"bench_raw_{r}", template)
            insert.append(raw_insert(raw_db, bodies))
            say(f"round {r + 1}: raw insert {insert[-1]:,.0f} rows/s")
            target = fresh_database(admin, f"bench_target_{r}", template)
            run = dataclasses.replace(
                settings, projector_database_url=target, projector_consumer=f"bench-{r}-0"
            )
            projected.append(asyncio.run(run_projector(run, EVENTS)))
            say(f"round {r + 1}: projector {projected[-1]:,.0f} events/s")
    finally:
        nats_server.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    throughput, raw_fetch_eps, raw_insert_rps = max(projected), max(fetch), max(insert)
    raw_pull_eps = max(pull)
    ratio = throughput / min(raw_fetch_eps, raw_insert_rps)
    result = {
        "bench": "projector",
        "events": EVENTS,
        "rounds": rounds,
        "throughput_eps": round(throughput),
        "raw_fetch_eps": round(raw_fetch_eps),
        "raw_insert_rps": round(raw_insert_rps),
        "ratio": round(ratio, 3),
        "raw_pull_eps": round(raw_pull_eps),
        "ratio_vs_puller": round(throughput / min(raw_pull_eps, raw_insert_rps), 3),
        "targets": {"throughput_eps": TARGET_EPS, "ratio": TARGET_RATIO},
        "targets_met": throughput >= TARGET_EPS and ratio >= TARGET_RATIO,
    }
    print(json.dumps(result))
    return 0
