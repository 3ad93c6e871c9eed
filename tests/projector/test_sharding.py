"""Shards (envelope.md §7.1): three pods project every event exactly once between them, and
growing from one pod to three while events flow loses nothing."""

from __future__ import annotations

import asyncio
import dataclasses

import nats
import pytest

from bench.eventgen import event_stream
from core.settings import Settings
from core.shard import shard_for
from tests.projector.helpers import (
    count_rows,
    dump_tables,
    project_direct,
    publish,
    running,
    settings_for,
    wait_until,
)
from workers.projector import ProjectorConfigError, identity

PODS = ("noetl-projector-0", "noetl-projector-1", "noetl-projector-2")


def test_identity_owns_every_shard_once() -> None:
    owned: list[int] = []
    for pod in PODS:
        me = identity(Settings(projector_consumer=pod, projector_replicas=3))
        assert me.filters == tuple(f"noetl.events.{s}.*" for s in me.shards)
        owned += me.shards
    assert sorted(owned) == list(range(16))
    alone = identity(Settings(projector_consumer="host.example.com", projector_replicas=1))
    assert alone.filters == ("noetl.events.>",) and alone.durable == "host_example_com"
    with pytest.raises(ProjectorConfigError):
        identity(Settings(projector_consumer="noetl-projector-3", projector_replicas=3))
    with pytest.raises(ProjectorConfigError):
        identity(Settings(projector_replicas=17))


async def test_three_pods_project_every_event_exactly_once(db_url: str, streams: str) -> None:
    events = event_stream(3000, seed=8)
    client = await nats.connect(streams)
    try:
        await publish(client.jetstream(), events)
    finally:
        await client.close()
    pods = [settings_for(db_url, streams, projector_consumer=p, projector_replicas=3) for p in PODS]
    async with running(*pods) as projectors:
        await wait_until(
            lambda: sum(p.stats["inserted"] for p in projectors) == len(events), 60, "all events"
        )
        assert sum(p.stats["duplicate"] for p in projectors) == 0
        assert sum(p.stats["rejected"] for p in projectors) == 0
        for pod, projector in zip(PODS, projectors, strict=True):
            shards = set(projector.projector.identity.shards)
            mine = [e for e in events if shard_for(int(e["execution_id"]), 16) in shards]
            assert projector.stats["inserted"] == len(mine), pod
    assert count_rows(db_url) == len(events)


async def test_growing_from_one_pod_to_three_loses_nothing(
    db_url: str, second_db_url: str, streams: str
) -> None:
    events = event_stream(6000, seed=9)
    chunks = [events[i : i + 500] for i in range(0, len(events), 500)]
    client = await nats.connect(streams)
    js = client.jetstream()
    published = asyncio.Event()

    async def producer() -> None:
        for chunk in chunks:
            await publish(js, chunk)
            await asyncio.sleep(0.02)  # pacing, so events keep flowing across the rescale
        published.set()

    one = settings_for(db_url, streams, projector_replicas=1)
    three = [dataclasses.replace(one, projector_consumer=p, projector_replicas=3) for p in PODS]
    try:
        flow = asyncio.create_task(producer())
        async with running(one):
            await wait_until(lambda: count_rows(db_url) >= 1000, 60, "first pod under way")
        assert not published.is_set(), "the stream ended before the rescale"
        async with running(*three) as projectors:
            await flow
            await wait_until(lambda: count_rows(db_url) == len(events), 120, "every event")
            await wait_until(
                lambda: all(p.projector.consumer_ok for p in projectors), 10, "consumers"
            )
        info = await js.consumer_info(one.events_stream, PODS[0])
        assert info.config.filter_subjects == [f"noetl.events.{s}.*" for s in range(0, 16, 3)]
    finally:
        await client.close()
    await project_direct(second_db_url, events)
    assert dump_tables(db_url) == dump_tables(second_db_url)
