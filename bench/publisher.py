"""`python -m bench publisher`: the outbox relay against the physical limit, in one run.

(a) raw: nats-py publishing the same envelopes pipelined (publish_async, 500 at a time, the
    same subjects and headers), no Postgres: the limit of this machine and client.
(b) drain: the publisher's own loop (OutboxRelay.drain) emptying a 100,000-row backlog.
(c) latency: 1,000 single-event commits at 200/s through a running `--mode=publisher`
    process, from the producer's commit to receipt by a NATS subscriber, on a vacuumed
    outbox (the steady state; see settle()).

(a) and (b) alternate for NOETL_BENCH_ROUNDS rounds (default 3), each on fresh streams. Each
round's ratio compares two runs made seconds apart; the round with the median ratio is
reported, so one burst of other work on the machine decides neither way.
Embedded Postgres and NATS in a temporary folder; ends with one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import psycopg

from core.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from core.migrate import upgrade
from core.settings import Settings
from core.shard import shard_for
from core.streams import stream_specs
from workers.daemon import Daemon
from workers.publisher import OutboxRelay

BACKLOG = 100_000
LATENCY_EVENTS = 1_000
LATENCY_RATE = 200.0
EXECUTIONS = 1_000
BATCH = 500
TARGETS = {"ratio": 0.6, "latency_p50_ms": 5.0, "latency_p99_ms": 20.0}

FILL_SQL = """
INSERT INTO noetl.event (event_id, execution_id, catalog_id, event_type, status, node_name,
                         context, meta)
SELECT b.base + g, (%(execs)s::bigint[])[1 + g %% cardinality(%(execs)s::bigint[])], 1,
       'call.done', 'COMPLETED', 'step_' || (g %% 7),
       jsonb_build_object('url', 'https://example.org/items/' || g, 'rows', g %% 100,
                          'note', repeat('x', 300)),
       jsonb_build_object('command_id', (b.base + g)::text, 'worker_id', 'bench-worker')
  FROM generate_series(0, %(n)s - 1) AS g, (SELECT noetl.snowflake_id() AS base) b
 ORDER BY g
"""
BODIES_SQL = """
SELECT execution_id, msg_id, headers, payload::text FROM noetl.event_outbox ORDER BY outbox_id
"""


def log(msg: str) -> None:
    print(f"bench publisher: {msg}", file=sys.stderr, flush=True)


def settings_for(db_url: str, nats_url: str) -> Settings:
    return Settings.from_env({"NOETL_DATABASE_URL": db_url, "NOETL_NATS_URL": nats_url})


async def reset_streams(nats_url: str, settings: Settings) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for spec in stream_specs(settings):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(spec.name)
        await js.add_stream(spec.config)
    await nc.close()


def fill(db_url: str, executions: list[int]) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("TRUNCATE noetl.event, noetl.event_outbox, noetl.event_outbox_dead")
        conn.execute(FILL_SQL, {"execs": executions, "n": BACKLOG})
        conn.execute("VACUUM ANALYZE noetl.event_outbox")


def settle(db_url: str) -> None:
    """Steady state for (c): the drains left 100,000s of dead outbox rows that autovacuum
    would clean within its naptime; clean them now, and checkpoint, so neither runs
    during the latency run."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) noetl.event_outbox")
        conn.execute("VACUUM (ANALYZE) noetl.event")
        conn.execute("CHECKPOINT")


async def raw(nats_url: str, settings: Settings, db_url: str) -> float:
    """(a): the same messages straight from memory, pipelined, 500 per wait."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(BODIES_SQL).fetchall()
    n = settings.event_shard_count
    messages = [
        (
            f"noetl.events.{shard_for(x, n)}.{x}",
            body.encode(),
            {**headers, "Nats-Msg-Id": msg_id},
        )
        for x, msg_id, headers, body in rows
    ]
    await reset_streams(nats_url, settings)
    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=BATCH * 2)
    started = time.perf_counter()
    for i in range(0, len(messages), BATCH):
        for subject, body, headers in messages[i : i + BATCH]:
            await js.publish_async(subject, body, headers=dict(headers))
        await js.publish_async_completed()
    elapsed = time.perf_counter() - started
    stored = (await js.stream_info(settings.events_stream)).state.messages
    await nc.close()
    if stored != len(messages):
        raise RuntimeError(f"raw: {stored} stored of {len(messages)}")
    return len(messages) / elapsed


async def drain(nats_url: str, settings: Settings, db_url: str) -> float:
    """(b): the relay's drain loop on the backlog, from the first claim to an empty outbox."""
    await reset_streams(nats_url, settings)
    daemon = Daemon("publisher", settings)
    relay = OutboxRelay(daemon)
    if not await relay.start():
        raise RuntimeError("relay did not start")
    try:
        started = time.perf_counter()
        moved = 0
        while True:
            claimed = await relay.drain()
            moved += claimed
            if claimed == 0:
                break
        elapsed = time.perf_counter() - started
    finally:
        daemon.stopping.set()
        await relay.close()
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM noetl.event_outbox").fetchone()
    left = row[0] if row else -1
    nc = await nats.connect(nats_url)
    stored = (await nc.jetstream().stream_info(settings.events_stream)).state.messages
    await nc.close()
    if left != 0 or stored != BACKLOG:
        raise RuntimeError(f"drain: {left} rows left, {stored} stored of {BACKLOG}")
    return BACKLOG / elapsed


async def latency(db_url: str, nats_url: str, workdir: Path) -> list[float]:
    """(c): commit → subscriber receipt for single-event transactions at a fixed rate."""
    await reset_streams(nats_url, settings_for(db_url, nats_url))
    port = free_port()
    env = {
        **os.environ,
        "NOETL_DATABASE_URL": db_url,
        "NOETL_NATS_URL": nats_url,
        "NOETL_METRICS_HOST": "127.0.0.1",
        "NOETL_METRICS_PORT": str(port),
        "NOETL_LOG_LEVEL": "WARNING",
    }
    with (workdir / "publisher.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "--mode=publisher"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    received: dict[str, float] = {}
    committed: dict[str, float] = {}
    nc = await nats.connect(nats_url)
    try:

        async def on_msg(msg: Any) -> None:
            received.setdefault(json.loads(msg.data)["event_id"], time.perf_counter())

        await nc.subscribe("noetl.events.>", cb=on_msg)
        await nc.flush()
        conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
        async with conn:
            catalog = 1
            minted = await (await conn.execute("SELECT noetl.snowflake_id()")).fetchone()
            assert minted is not None
            execution = minted[0]
            warm = await _append_one(conn, execution, catalog)
            deadline = time.monotonic() + 60
            while warm not in received:  # the publisher is up and draining
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("publisher did not deliver the warm-up event")
                await asyncio.sleep(0.05)
            started = time.perf_counter()
            for i in range(LATENCY_EVENTS):
                pause = started + i / LATENCY_RATE - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)  # paces the producer at 200/s
                event_id = await _append_one(conn, execution, catalog)
                committed[event_id] = time.perf_counter()
            deadline = time.monotonic() + 30
            while any(e not in received for e in committed) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    finally:
        await nc.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    missing = [e for e in committed if e not in received]
    if missing:
        raise RuntimeError(f"latency: {len(missing)} events never arrived")
    return sorted((received[e] - t) * 1000 for e, t in committed.items())


async def _append_one(conn: psycopg.AsyncConnection, execution: int, catalog: int) -> str:
    event = {
        "execution_id": str(execution),
        "catalog_id": str(catalog),
        "event_type": "step.enter",
        "node_name": "step",
        "status": "ENTERED",
        "meta": {},
    }
    cur = await conn.execute(
        "SELECT event_id FROM noetl.append_events(%s::jsonb)", (json.dumps([event]),)
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]


async def run(workdir: Path) -> dict[str, Any]:
    pg = EmbeddedPostgres(workdir / "pg", {"max_connections": "100"})
    server = EmbeddedNats(workdir / "nats")
    pg.start()
    server.start()
    try:
        db_url = pg.url("noetl")
        upgrade(db_url)
        settings = settings_for(db_url, server.url)
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(
                "SELECT noetl.snowflake_id() FROM generate_series(1, %s)", (EXECUTIONS,)
            ).fetchall()
        executions = [r[0] for r in rows]
        raws: list[float] = []
        drains: list[float] = []
        for round_no in range(int(os.environ.get("NOETL_BENCH_ROUNDS", "3"))):
            fill(db_url, executions)
            raws.append(await raw(server.url, settings, db_url))
            drains.append(await drain(server.url, settings, db_url))
            log(f"round {round_no + 1}: raw {raws[-1]:.0f}/s, drain {drains[-1]:.0f}/s")
        settle(db_url)
        latencies = await latency(db_url, server.url, workdir)
        log(
            f"latency ms: p50 {percentile(latencies, 0.5):.2f} p90 "
            f"{percentile(latencies, 0.9):.2f} p99 {percentile(latencies, 0.99):.2f} "
            f"max {latencies[-1]:.2f} mean {statistics.fmean(latencies):.2f}"
        )
    finally:
        server.stop()
        pg.stop()
    rounds = sorted(zip(raws, drains, strict=True), key=lambda r: r[1] / r[0])
    raw_eps, throughput = rounds[len(rounds) // 2]
    return {
        "throughput_eps": round(throughput),
        "raw_eps": round(raw_eps),
        "ratio": round(throughput / raw_eps, 3),
        "latency_p50_ms": round(percentile(latencies, 0.5), 2),
        "latency_p99_ms": round(percentile(latencies, 0.99), 2),
    }


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="noetl-bench-publisher-"))
    try:
        result = asyncio.run(run(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    met = (
        result["ratio"] >= TARGETS["ratio"]
        and result["latency_p50_ms"] < TARGETS["latency_p50_ms"]
        and result["latency_p99_ms"] < TARGETS["latency_p99_ms"]
    )
    log("targets met" if met else f"targets missed: {TARGETS}")
    print(json.dumps(result))
    return 0
