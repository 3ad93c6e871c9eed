"""Replays leave every projected table identical to one clean pass (envelope.md §4.4)."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import nats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.eventgen import event_stream
from tests.projector.helpers import (
    count_rows,
    dump_tables,
    project_direct,
    publish,
    running,
    settings_for,
    stats_match_summary,
    truncate_projection,
    wait_until,
)

STREAM_SIZE = 20_000


async def test_replays_equal_one_clean_pass(db_url: str, second_db_url: str, streams: str) -> None:
    events = event_stream(STREAM_SIZE, seed=11)
    types = {e["event_type"] for e in events}
    assert {"playbook.completed", "workflow.failed", "execution.cancelled", "call.error"} <= types
    client = await nats.connect(streams)
    try:
        await publish(client.jetstream(), events)
    finally:
        await client.close()

    # one clean pass through the projector
    base = settings_for(db_url, streams)
    async with running(base) as (pod,):
        await wait_until(lambda: pod.stats["inserted"] == len(events), 120, "clean pass")
    clean = dump_tables(db_url)
    assert len(clean["event"]) == len(events)
    assert stats_match_summary(db_url)

    # the same stream again, by a second consumer into the same database: all duplicates
    replay = dataclasses.replace(base, projector_consumer="replay-0")
    async with running(replay) as (pod,):
        await wait_until(lambda: pod.stats["duplicate"] == len(events), 120, "replay pass")
        assert pod.stats["inserted"] == 0
    assert dump_tables(db_url) == clean

    # into another database: the stream twice
    await project_direct(second_db_url, events)
    await project_direct(second_db_url, events, batch_size=777)
    assert dump_tables(second_db_url) == clean

    # shuffled, with 10% duplicates, in other batch sizes
    truncate_projection(second_db_url)
    rng = random.Random(5)
    shuffled = events + rng.sample(events, len(events) // 10)
    rng.shuffle(shuffled)
    await project_direct(second_db_url, shuffled, batch_size=313)
    assert dump_tables(second_db_url) == clean
    assert stats_match_summary(second_db_url)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 10_000),
    size=st.integers(1, 300),
    duplicates=st.floats(0, 0.5),
    batch=st.integers(1, 120),
    order=st.randoms(use_true_random=False),
)
def test_shuffled_duplicated_stream_projects_like_the_clean_one(
    db_url: str, seed: int, size: int, duplicates: float, batch: int, order: random.Random
) -> None:
    events = event_stream(size, seed=seed, catalogs=2, days=2)
    truncate_projection(db_url)
    asyncio.run(project_direct(db_url, events))
    clean = dump_tables(db_url)

    noisy = events + [order.choice(events) for _ in range(int(len(events) * duplicates))]
    order.shuffle(noisy)
    truncate_projection(db_url)
    asyncio.run(project_direct(db_url, noisy, batch_size=batch))
    assert dump_tables(db_url) == clean
    assert count_rows(db_url) == len(events)
    assert stats_match_summary(db_url)
