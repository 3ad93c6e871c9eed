"""A projector pointed at another database fills it from the stream; slimmed bodies are
completed from the primary (envelope.md §2.6, §7.2)."""

from __future__ import annotations

import nats
import psycopg

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


def slimmed(envelope: dict) -> dict:
    meta = {k: v for k, v in envelope["meta"].items() if k in ("command_id", "worker_id")}
    ref = f"noetl://execution/{envelope['execution_id']}/event/{envelope['event_id']}"
    return {
        **envelope,
        "context": None,
        "result": None,
        "meta": meta,
        "payload_ref": {"kind": "event", "uri": ref, "bytes": 2_000_000},
    }


async def test_projector_fills_another_database(
    db_url: str, second_db_url: str, streams: str
) -> None:
    events = event_stream(2000, seed=12)
    # the primary holds the events (as the server wrote them); some bodies on the stream are
    # slimmed, one of them refers to an event the primary does not have
    await project_direct(db_url, events)
    stream = [slimmed(e) if i % 10 == 0 else e for i, e in enumerate(events)]
    missing = slimmed({**events[1], "event_id": str(int(events[1]["event_id"]) + 999_999)})
    with psycopg.connect(second_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM noetl.event").fetchone() == (0,)
    client = await nats.connect(streams)
    try:
        await publish(client.jetstream(), [*stream, missing])
    finally:
        await client.close()

    # the target's partitions are the projector's job: drop the furthest one
    with psycopg.connect(second_db_url, autocommit=True) as conn:
        furthest = partitions(conn)[-1]
        conn.execute(f"DROP TABLE noetl.{furthest}")

    settings = settings_for(db_url, streams, projector_database_url=second_db_url)
    async with running(settings) as (pod,):
        await wait_until(lambda: pod.stats["rejected"] == 1, 60, "unresolved reference parked")
        await wait_until(lambda: count_rows(second_db_url) == len(events), 60, "target filled")
        assert pod.stats["inserted"] == len(events)

    assert dump_tables(second_db_url) == dump_tables(db_url)
    with psycopg.connect(second_db_url) as conn:
        reject = conn.execute("SELECT reason, event_id FROM noetl.projector_reject").fetchall()
        recreated = partitions(conn)
    assert reject == [("unresolved_ref", int(missing["event_id"]))]
    assert furthest in recreated
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM noetl.projector_reject").fetchone() == (0,)


def partitions(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'noetl.event'::regclass AND c.relname ~ '^event_[0-9]{4}_[0-9]{2}$'"
        " ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]
