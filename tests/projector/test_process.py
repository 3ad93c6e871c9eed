"""The real `noetl-server --mode=projector` process: kill -9 mid-batch and restart loses and
duplicates nothing; SIGTERM drains and exits 0; health, metrics and bad configuration."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import nats
import psycopg

from bench.eventgen import event_stream
from core.embedded import free_port
from tests.acceptance.helpers import noetl_server, wait_http_ok
from tests.projector.helpers import (
    count_rows,
    dump_tables,
    project_direct,
    publish,
    stats_match_summary,
    wait_until,
)

EVENTS = 20_000


def projector_env(db_url: str, nats_url: str, port: int, **extra: str) -> dict[str, str]:
    return {
        "NOETL_DATABASE_URL": db_url,
        "NOETL_NATS_URL": nats_url,
        "NOETL_METRICS_HOST": "127.0.0.1",
        "NOETL_METRICS_PORT": str(port),
        "NOETL_PROJECTOR_CONSUMER": "noetl-projector-0",
        "NOETL_PROJECTOR_BATCH_SIZE": "100",
        "NOETL_PROJECTOR_ACK_WAIT_SECONDS": "2",
        "NOETL_PROJECTOR_STATS_SECONDS": "0.5",
        "NOETL_SHUTDOWN_GRACE_SECONDS": "10",
        **extra,
    }


def start(env: dict[str, str]) -> subprocess.Popen:
    return noetl_server("--mode=projector", env=env, stderr=subprocess.DEVNULL)


async def test_kill_mid_batch_then_restart(db_url: str, second_db_url: str, streams: str) -> None:
    events = event_stream(EVENTS, seed=21)
    client = await nats.connect(streams)
    try:
        await publish(client.jetstream(), events)
    finally:
        await client.close()

    port = free_port()
    env = projector_env(db_url, streams, port)
    proc = start(env)
    try:
        await wait_until(lambda: count_rows(db_url) >= 2000, 60, "projection under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    interrupted_at = count_rows(db_url)
    assert interrupted_at < len(events), "finished before the kill: nothing was tested"

    proc = start(env)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", 30, proc)
        await wait_until(lambda: count_rows(db_url) == len(events), 120, "every event projected")
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
        assert health["status"] == "ok" and health["role"] == "projector"
        assert set(health["checks"]) >= {"target", "nats", "stream", "consumer", "fetch"}
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for line in (
            'noetl_projector_events_total{outcome="inserted"}',
            'noetl_projector_events_total{outcome="rejected"} 0.0',
            'noetl_projector_errors_total{reason="shard_mismatch"} 0.0',
            "noetl_projector_owned_shards 16.0",
            "noetl_projector_lag_seconds",
            'noetl_build_info{role="projector"',
        ):
            assert line in metrics, line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    await project_direct(second_db_url, events)
    assert dump_tables(db_url) == dump_tables(second_db_url)
    assert stats_match_summary(db_url)


def test_replicas_above_shards_exit_2(db_url: str) -> None:
    env = projector_env(
        db_url,
        "nats://127.0.0.1:1",
        free_port(),
        NOETL_PROJECTOR_REPLICAS="17",
        NOETL_EVENT_SHARD_COUNT="16",
    )
    assert start(env).wait(60) == 2


def test_ordinal_not_below_replicas_exit_2(db_url: str) -> None:
    env = projector_env(
        db_url,
        "nats://127.0.0.1:1",
        free_port(),
        NOETL_PROJECTOR_REPLICAS="3",
        NOETL_PROJECTOR_CONSUMER="noetl-projector-3",
    )
    assert start(env).wait(60) == 2


async def test_missing_stream_is_reported_not_created(db_url: str, clean_nats: str) -> None:
    port = free_port()
    proc = start(projector_env(db_url, clean_nats, port))
    try:
        url = f"http://127.0.0.1:{port}/health"
        deadline = time.monotonic() + 30
        body = None
        while time.monotonic() < deadline:
            try:
                response = httpx.get(url, timeout=2)
                body = response.json()
                if response.status_code == 503 and body["checks"].get("stream") == "failing":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert body is not None and body["status"] == "unavailable", body
        assert body["checks"]["stream"] == "failing"
        client = await nats.connect(clean_nats)
        try:
            assert await client.jetstream().streams_info() == []
        finally:
            await client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_report_prints_a_table(db_url: str) -> None:
    events = event_stream(300, seed=4, catalogs=3, days=1)
    asyncio.run(project_direct(db_url, events))
    catalogs = sorted({int(e["catalog_id"]) for e in events})
    with psycopg.connect(db_url, autocommit=True) as conn:
        # two versions of one path; the third catalog id has no row in this database
        for version, catalog_id in enumerate(catalogs[:2], start=1):
            conn.execute(
                "INSERT INTO noetl.catalog (catalog_id, path, version, kind)"
                " VALUES (%s, 'examples/report', %s, 'playbook')",
                (catalog_id, version),
            )
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "projector", "report", "--from", "2000-01-01"],
        env={**os.environ, "NOETL_DATABASE_URL": db_url, "NOETL_LOG_FORMAT": "text"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split()[:4] == ["path", "versions", "runs", "ok"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"examples/report", "-"}
    assert rows["examples/report"][1] == ",".join(str(c) for c in catalogs[:2])
    assert rows["-"][1] == str(catalogs[2])
    executions = len({e["execution_id"] for e in events})
    assert sum(int(r[2]) for r in rows.values()) == executions


def test_report_rejects_bad_dates(db_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "projector", "report", "--from", "yesterday"],
        env={**os.environ, "NOETL_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "YYYY-MM-DD" in out.stderr
