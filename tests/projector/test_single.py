"""One message through the whole projector: stream → noetl.event and the read models."""

from __future__ import annotations

import nats
import psycopg

from bench.eventgen import event_stream
from tests.projector.helpers import count_rows, publish, running, settings_for, wait_until


async def test_single_message_reaches_event_and_read_models(db_url: str, streams: str) -> None:
    execution = event_stream(1, seed=7)
    issued = next(e for e in execution if e["event_type"] == "command.issued")
    client = await nats.connect(streams)
    try:
        await publish(client.jetstream(), [issued])
    finally:
        await client.close()

    async with running(settings_for(db_url, streams)) as (pod,):
        await wait_until(lambda: count_rows(db_url) == 1, what="event row")
        await wait_until(lambda: pod.stats["batches"] >= 1, what="batch committed")

    with psycopg.connect(db_url) as conn:
        event = conn.execute(
            "SELECT execution_id, event_id, event_type, command_id, node_name FROM noetl.event"
        ).fetchone()
        summary = conn.execute(
            "SELECT execution_id, status, first_event_id, last_event_type"
            " FROM noetl.execution_summary"
        ).fetchone()
        step = conn.execute("SELECT command_id, status, step_name FROM noetl.step_run").fetchone()
        outbox = conn.execute("SELECT count(*) FROM noetl.event_outbox").fetchone()
    assert event == (
        int(issued["execution_id"]),
        int(issued["event_id"]),
        "command.issued",
        int(issued["meta"]["command_id"]),
        issued["node_name"],
    )
    assert summary == (
        int(issued["execution_id"]),
        "RUNNING",
        int(issued["event_id"]),
        "command.issued",
    )
    assert step == (int(issued["meta"]["command_id"]), "PENDING", issued["node_name"])
    assert outbox == (0,)  # projected rows never re-enter the outbox
