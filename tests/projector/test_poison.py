"""Poison messages become projector_reject rows and are termed; the good ones in the same
batch are projected (envelope.md §7.4)."""

from __future__ import annotations

import random

import nats
import orjson
import psycopg

from bench.eventgen import event_stream, subject
from tests.projector.helpers import (
    count_rows,
    publish,
    publish_raw,
    running,
    settings_for,
    wait_until,
)

MAX_BYTES = 8192


def poison_cases(template: dict) -> list[tuple[bytes, str, str]]:
    """(body, reason, what the error names)."""

    def variant(**changes: object) -> bytes:
        body = {**template, "event_id": str(int(template["event_id"]) + 7_000_000)}
        for key, value in changes.items():
            if value is ...:
                body.pop(key)
            else:
                body[key] = value
        return orjson.dumps(body)

    return [
        (b"not json {", "decode", "body"),
        (b"\xff\xfe\x00garbage", "decode", "body"),
        (b"[1, 2, 3]", "invalid", "body"),
        (variant(execution_id=...), "invalid", "execution_id"),
        (variant(event_id=...), "invalid", "event_id"),
        (variant(event_id="12x"), "invalid", "event_id"),
        (variant(duration="slow"), "invalid", "duration"),
        (variant(context=[1, 2]), "invalid", "context"),
        (variant(status=5), "invalid", "status"),
        (variant(created_at="2026-03-15T12:34:56"), "invalid", "created_at"),
        (variant(event_type="has spaces"), "invalid", "event_type"),
        (variant(context={"pad": "x" * MAX_BYTES}), "too_large", "body"),
    ]


async def test_poison_is_rejected_and_good_events_projected(db_url: str, streams: str) -> None:
    good = event_stream(400, seed=3)
    template = good[0]
    cases = poison_cases(template)
    # a valid-looking event whose producer id collides with a stored one: a unique violation
    # (class 23) that only the database sees, isolated by halving the batch
    first = {**good[1], "meta": {**good[1]["meta"], "producer_event_id": "42"}}
    clash = {**good[2], "meta": {**good[2]["meta"], "producer_event_id": "42"}}
    good[1], good[2] = first, clash
    clash_id = int(clash["event_id"])

    rng = random.Random(1)
    positions = sorted(rng.sample(range(len(good)), len(cases)))
    client = await nats.connect(streams)
    js = client.jetstream()
    try:
        case_iter = iter(cases)
        for index, envelope in enumerate(good):
            await publish(js, [envelope])
            if positions and index == positions[0]:
                positions.pop(0)
                body, _, _ = next(case_iter)
                await publish_raw(js, subject(template, 16), body, f"poison:{index}")
        settings = settings_for(db_url, streams, event_max_bytes=MAX_BYTES)
        async with running(settings) as (pod,):
            await wait_until(
                lambda: pod.stats["inserted"] + pod.stats["rejected"] == len(good) + len(cases),
                60,
                "every message handled",
            )
            await wait_until(
                lambda: _ack_pending(js, settings.events_stream, "noetl-projector-0"),
                30,
                "nothing left unacknowledged",
            )
            assert pod.stats["batches"] == 1  # poison and good events shared one batch
    finally:
        await client.close()

    assert count_rows(db_url) == len(good) - 1
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT reason, error, body, subject, msg_id, deliveries, event_id"
            " FROM noetl.projector_reject ORDER BY stream_seq"
        ).fetchall()
        stored = conn.execute(
            "SELECT count(*) FROM noetl.event WHERE event_id = %s", (clash_id,)
        ).fetchone()
    assert stored == (0,)
    constraint = [r for r in rows if r[0] == "constraint"]
    assert len(constraint) == 1 and constraint[0][6] == clash_id
    poison = [r for r in rows if r[0] != "constraint"]
    assert [(r[0], r[2]) for r in poison] == [(reason, body) for body, reason, _ in cases]
    for row, (_, _, field) in zip(poison, cases, strict=True):
        assert row[1].startswith(field), row[1]
        assert row[3].startswith("noetl.events.") and row[4].startswith("poison:")
        assert row[5] == 1


async def _ack_pending(js, stream: str, consumer: str) -> bool:
    info = await js.consumer_info(stream, consumer)
    return info.num_ack_pending == 0 and info.num_redelivered == 0
