"""Failures the projector rides out: the database dropping its connections mid-stream (the
batch is returned and retried), and its consumer being deleted (recreated, replayed)."""

from __future__ import annotations

import nats
import psycopg
from prometheus_client import REGISTRY

from bench.eventgen import event_stream
from tests.projector.helpers import (
    count_rows,
    dump_tables,
    project_direct,
    publish,
    running,
    settings_for,
    wait_until,
)


def terminate_other_sessions(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


async def test_database_connections_dropped_mid_stream(
    db_url: str, second_db_url: str, streams: str
) -> None:
    events = event_stream(3000, seed=31)
    half = len(events) // 2
    client = await nats.connect(streams)
    js = client.jetstream()
    try:
        settings = settings_for(db_url, streams, projector_batch_size=100)
        errors_before = db_errors()
        async with running(settings) as (pod,):
            await publish(js, events[:half])
            await wait_until(lambda: count_rows(db_url) > 0, 30, "first rows")
            assert terminate_other_sessions(db_url) >= 1
            await publish(js, events[half:])
            await wait_until(lambda: count_rows(db_url) == len(events), 60, "every event")
        assert db_errors() > errors_before  # a batch was returned and retried
    finally:
        await client.close()
    await project_direct(second_db_url, events)
    assert dump_tables(db_url) == dump_tables(second_db_url)


async def test_deleted_consumer_is_recreated(db_url: str, streams: str) -> None:
    events = event_stream(1000, seed=32)
    half = len(events) // 2
    client = await nats.connect(streams)
    js = client.jetstream()
    try:
        settings = settings_for(db_url, streams)
        async with running(settings) as (pod,):
            await publish(js, events[:half])
            await wait_until(lambda: count_rows(db_url) == half, 30, "first half")
            await js.delete_consumer(settings.events_stream, "noetl-projector-0")
            await publish(js, events[half:])
            await wait_until(lambda: count_rows(db_url) == len(events), 60, "second half")
            # the new consumer replays from the start: the first half again, as duplicates
            await wait_until(lambda: pod.stats["duplicate"] >= half, 30, "replayed duplicates")
    finally:
        await client.close()


def db_errors() -> float:
    value = REGISTRY.get_sample_value("noetl_projector_errors_total", {"reason": "db_error"})
    return value or 0.0
