"""The publisher as a real process (`noetl-server --mode=publisher`): kill -9 mid-drain, a NATS
outage, SIGTERM under load, two publishers on one outbox, stream checks, requeue-dead.

Each fault test prints events in / unique events out / duplicates."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import psycopg
from psycopg.rows import dict_row

from core.embedded import EmbeddedNats, EmbeddedPostgres
from core.migrate import upgrade
from tests.publisher.helpers import (
    PublisherProcess,
    assert_execution_order,
    insert_events,
    new_executions,
    outbox_count,
    read_stream,
    report,
    wait_until,
    wait_until_async,
)

MB = 1024 * 1024


def _connect(db_url: str) -> psycopg.Connection:
    return psycopg.connect(db_url, autocommit=True, row_factory=dict_row)


async def _stream_messages(nats_url: str, stream: str = "NOETL_EVENTS") -> int:
    nc = await nats.connect(nats_url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()


async def test_kill_9_mid_drain_loses_nothing_and_duplicates_nothing(
    db_url: str, clean_nats: str, tmp_path: Path
) -> None:
    total = 50_000
    with _connect(db_url) as conn:
        insert_events(conn, new_executions(conn, 200), total)
        first = PublisherProcess(db_url, clean_nats, tmp_path).start()
        try:
            await wait_until_async(
                lambda: _stream_messages_at_least(clean_nats, 5_000), 60, "a partial drain"
            )
            first.kill9()
        finally:
            first.stop()
        left = outbox_count(conn)
        assert 0 < left < total, "the kill must land mid-drain"
        second = PublisherProcess(db_url, clean_nats, tmp_path).start()
        try:
            second.wait_healthy()
            wait_until(lambda: outbox_count(conn) == 0, 120, "the rest of the backlog")
            republished = second.metric("noetl_publisher_duplicates_total")
        finally:
            second.terminate()
    messages = await read_stream(clean_nats, "NOETL_EVENTS")
    unique, duplicates = report("kill -9", total, messages)
    print(f"kill -9: {left} rows left at the kill, {republished:.0f} republished copies dropped")
    assert unique == total and duplicates == 0
    assert_execution_order(messages)


async def _stream_messages_at_least(nats_url: str, count: int) -> bool:
    return await _stream_messages(nats_url) >= count


async def test_nats_outage_of_30_seconds(db_url: str, tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats-outage")
    server.start()
    publisher = PublisherProcess(
        db_url, server.url, tmp_path, NOETL_PUBLISHER_BACKOFF_MAX_SECONDS="30"
    ).start()
    appended = 0
    peak_rss = 0
    try:
        publisher.wait_healthy()
        with _connect(db_url) as conn:
            executions = new_executions(conn, 100)
            appended += insert_events(conn, executions, 100)
            wait_until(lambda: outbox_count(conn) == 0, 30, "the warm-up events")

            server.stop()
            wait_until(lambda: publisher.health()[0] == 503, 30, "/health 503 without NATS")
            outage_end = time.monotonic() + 30
            while time.monotonic() < outage_end:  # 10,000 events spread over the outage
                if appended < 10_100:
                    appended += insert_events(conn, executions, 250)
                peak_rss = max(peak_rss, publisher.rss_bytes())
                await asyncio.sleep(0.5)  # paces the load; nothing waits on it
            assert appended == 10_100
            held = conn.execute(
                "SELECT count(*) AS n, max(attempts) AS a FROM noetl.event_outbox"
            ).fetchone()
            assert held["n"] == 10_000, "nothing may be published, nothing lost"
            assert held["a"] == 0, "a transport failure never burns attempts"
            status, body = publisher.health()
            assert status == 503 and body["checks"]["nats"] != "ok"

            server.start()
            wait_until(lambda: outbox_count(conn) == 0, 90, "the outbox to drain after NATS")
            publisher.wait_healthy(30)
            peak_rss = max(peak_rss, publisher.rss_bytes())
            dead = conn.execute("SELECT count(*) AS n FROM noetl.event_outbox_dead").fetchone()
            assert dead["n"] == 0
        assert publisher.metric("noetl_publisher_errors_total", reason="nats_unavailable") > 0
        messages = await read_stream(server.url, "NOETL_EVENTS")
    finally:
        publisher.stop()
        server.stop()
    unique, duplicates = report("nats outage", appended, messages)
    print(f"nats outage: publisher peak RSS {peak_rss / MB:.1f} MB")
    assert unique == appended and duplicates == 0
    assert_execution_order(messages)
    assert peak_rss < 200 * MB


async def test_sigterm_under_load_exits_0_within_the_grace_period(
    db_url: str, clean_nats: str, tmp_path: Path
) -> None:
    grace = 10
    total = 30_000
    with _connect(db_url) as conn:
        executions = new_executions(conn, 100)
        insert_events(conn, executions, total - 5_000)
        publisher = PublisherProcess(
            db_url, clean_nats, tmp_path, NOETL_SHUTDOWN_GRACE_SECONDS=str(grace)
        ).start()
        try:
            await wait_until_async(
                lambda: _stream_messages_at_least(clean_nats, 3_000), 60, "a partial drain"
            )
            insert_events(conn, executions, 5_000)  # still appending when the signal comes
            code, took = publisher.terminate(timeout=grace + 10)
        finally:
            publisher.stop()
        log = publisher.log()
        assert code == 0, log
        assert took < grace, f"took {took:.1f}s"
        assert '"publisher stopped"' in log
        left = outbox_count(conn)
        after = PublisherProcess(db_url, clean_nats, tmp_path).start()
        try:
            wait_until(lambda: outbox_count(conn) == 0, 120, "the rest after the restart")
        finally:
            after.terminate()
    messages = await read_stream(clean_nats, "NOETL_EVENTS")
    unique, duplicates = report("sigterm", total, messages)
    print(f"sigterm: exit 0 after {took:.2f}s, {left} rows left for the next publisher")
    assert unique == total and duplicates == 0
    assert_execution_order(messages)


async def test_two_publishers_deliver_each_event_once_in_append_order(
    db_url: str, clean_nats: str, tmp_path: Path
) -> None:
    total = 20_000
    with _connect(db_url) as conn:
        executions = new_executions(conn, 300)
        insert_events(conn, executions, total // 2)
        pair = [PublisherProcess(db_url, clean_nats, tmp_path).start() for _ in range(2)]
        try:
            for publisher in pair:
                publisher.wait_healthy()
            for _ in range(10):  # and more while both run
                insert_events(conn, executions, total // 20)
            wait_until(lambda: outbox_count(conn) == 0, 120, "both publishers to drain")
            shares = [p.metric("noetl_publisher_published_total") for p in pair]
        finally:
            for publisher in pair:
                publisher.terminate()
    messages = await read_stream(clean_nats, "NOETL_EVENTS")
    unique, duplicates = report("two publishers", total, messages)
    print(f"two publishers: published {shares[0]:.0f} + {shares[1]:.0f}")
    assert unique == total and duplicates == 0
    assert_execution_order(messages)


async def test_a_stream_with_other_subjects_is_fatal(
    db_url: str, clean_nats: str, tmp_path: Path
) -> None:
    nc = await nats.connect(clean_nats)
    await nc.jetstream().add_stream(name="NOETL_EVENTS", subjects=["noetl.events.x.>"])
    await nc.close()
    publisher = PublisherProcess(db_url, clean_nats, tmp_path).start()
    try:
        assert publisher.proc is not None
        code = publisher.proc.wait(timeout=60)
    finally:
        publisher.stop()
    log = publisher.log()
    assert code == 2, log
    assert "stream_config_mismatch" in log and '"field": "subjects"' in log
    nc = await nats.connect(clean_nats)
    info = await nc.jetstream().stream_info("NOETL_EVENTS")
    await nc.close()
    assert info.config.subjects == ["noetl.events.x.>"], "an existing stream is never changed"


async def test_a_mutable_field_mismatch_is_reported_not_changed(
    db_url: str, clean_nats: str, tmp_path: Path
) -> None:
    nc = await nats.connect(clean_nats)
    await nc.jetstream().add_stream(
        name="NOETL_EVENTS",
        subjects=["noetl.events.>"],
        duplicate_window=60.0,
        max_age=604800.0,
        max_msg_size=1048576,
        metadata={"noetl.layout": "1", "noetl.event_shard_count": "16"},
    )
    await nc.close()
    publisher = PublisherProcess(db_url, clean_nats, tmp_path).start()
    try:
        publisher.wait_healthy()
        gauge = "noetl_stream_config_mismatch"
        assert publisher.metric(gauge, stream="NOETL_EVENTS", field="duplicate_window") == 1
        assert publisher.metric(gauge, stream="NOETL_EVENTS", field="max_age") == 0
        assert publisher.metric(gauge, stream="NOETL_COMMANDS", field="duplicate_window") == 0
        assert httpx.get(publisher.url("/livez"), timeout=2).status_code == 200
    finally:
        publisher.terminate()
    nc = await nats.connect(clean_nats)
    info = await nc.jetstream().stream_info("NOETL_EVENTS")
    await nc.close()
    assert info.config.duplicate_window == 60.0


def test_requeue_dead_command(db_url: str) -> None:
    with _connect(db_url) as conn:
        insert_events(conn, new_executions(conn, 1), 3)
        conn.execute(
            """WITH moved AS (DELETE FROM noetl.event_outbox RETURNING *)
               INSERT INTO noetl.event_outbox_dead
                      (outbox_id, execution_id, kind, source_id, lane, subject, msg_id,
                       headers, payload, attempts, last_error, created_at, reason)
               SELECT outbox_id, execution_id, kind, source_id, lane, subject, msg_id,
                      headers, payload, 10, 'ack timeout', created_at, 'max_attempts'
                 FROM moved"""
        )
        ids = [
            r["outbox_id"]
            for r in conn.execute(
                "SELECT outbox_id FROM noetl.event_outbox_dead ORDER BY outbox_id"
            ).fetchall()
        ]

        def requeue(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "cli.main", "outbox", "requeue-dead", *args],
                env={**os.environ, "NOETL_DATABASE_URL": db_url},
                capture_output=True,
                text=True,
                timeout=60,
            )

        one = requeue(str(ids[0]))
        assert one.returncode == 0, one.stderr
        assert json.loads(one.stdout) == {"requeued": 1}
        back = conn.execute("SELECT outbox_id, attempts FROM noetl.event_outbox").fetchall()
        assert [(r["outbox_id"], r["attempts"]) for r in back] == [(ids[0], 0)]

        bad = requeue("12x")
        assert bad.returncode == 2 and "invalid outbox id" in bad.stdout

        rest = requeue()
        assert rest.returncode == 0 and json.loads(rest.stdout) == {"requeued": 2}
        assert outbox_count(conn) == 3


async def test_a_postgres_restart_is_survived(clean_nats: str, tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg-restart", {"fsync": "off"})
    server.start()
    db_url = server.url("noetl")
    upgrade(db_url)
    publisher = PublisherProcess(db_url, clean_nats, tmp_path).start()
    try:
        publisher.wait_healthy()
        with _connect(db_url) as conn:
            executions = new_executions(conn, 10)
            insert_events(conn, executions, 100)
            wait_until(lambda: outbox_count(conn) == 0, 30, "the first events")
        server.stop()
        wait_until(lambda: publisher.health()[0] == 503, 30, "/health 503 without Postgres")
        server.start()
        with _connect(db_url) as conn:
            insert_events(conn, executions, 100)
            wait_until(lambda: outbox_count(conn) == 0, 60, "the events after the restart")
        publisher.wait_healthy(30)
        assert publisher.metric("noetl_publisher_errors_total", reason="db_error") > 0
    finally:
        publisher.stop()
        server.stop()
    messages = await read_stream(clean_nats, "NOETL_EVENTS")
    unique, duplicates = report("postgres restart", 200, messages)
    assert unique == 200 and duplicates == 0
    assert_execution_order(messages)
