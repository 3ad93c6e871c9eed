"""The relay against real Postgres and NATS, in this process: envelope, subjects and headers,
poison rows, lost connections, a stream that disappears."""

from __future__ import annotations

import nats
import psycopg
from nats.js.api import DiscardPolicy, StreamConfig
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.shard import shard_for
from tests.publisher.helpers import (
    assert_execution_order,
    insert_events,
    new_executions,
    outbox_count,
    read_stream,
    report,
    running_relay,
    wait_until_async,
)
from workers import publisher_metrics as m

SERVER_URL = "http://noetl.test:8082"


def _connect(db_url: str) -> psycopg.Connection:
    return psycopg.connect(db_url, autocommit=True, row_factory=dict_row)


async def _drained(db_url: str, timeout: float = 30) -> None:
    with _connect(db_url) as conn:
        await wait_until_async(lambda: outbox_count(conn) == 0, timeout, "an empty outbox")


async def test_an_append_lands_on_the_stream_with_envelope_subject_and_headers(
    db_url: str, clean_nats: str
) -> None:
    with _connect(db_url) as conn:
        catalog_id = conn.execute(
            "SELECT catalog_id FROM noetl.catalog_register('t/flow', 'playbook', NULL, NULL,"
            " NULL, NULL)"
        ).fetchone()["catalog_id"]
        execution_id = new_executions(conn, 1)[0]
        conn.execute(
            """INSERT INTO noetl.execution
                      (execution_id, catalog_id, pool, status, last_event_id, start_time)
               VALUES (%s, %s, 'default', 'RUNNING', 0, now())""",
            (execution_id, catalog_id),
        )
        async with running_relay(db_url, clean_nats, NOETL_SERVER_URL=SERVER_URL):
            appended = conn.execute(
                "SELECT * FROM noetl.append_events(%s)",
                (
                    Jsonb(
                        [
                            {
                                "execution_id": str(execution_id),
                                "event_type": "command.issued",
                                "node_name": "fetch",
                                "node_type": "http",
                                "status": "PENDING",
                                "context": {"url": "https://example.org"},
                                "meta": {"command_id": "9001"},
                            }
                        ]
                    ),
                ),
            ).fetchone()
            event_id = appended["event_id"]
            conn.execute(
                """INSERT INTO noetl.command (execution_id, command_id, event_id, catalog_id,
                                              step_name, tool_kind, pool, context)
                   VALUES (%s, 9001, %s, %s, 'fetch', 'http', 'default', '{}')""",
                (execution_id, event_id, catalog_id),
            )
            await _drained(db_url)
            stored = conn.execute(
                "SELECT noetl.event_envelope(e) AS env FROM noetl.event e"
                " WHERE execution_id = %s AND event_id = %s",
                (execution_id, event_id),
            ).fetchone()["env"]

    events = await read_stream(clean_nats, "NOETL_EVENTS")
    commands = await read_stream(clean_nats, "NOETL_COMMANDS")
    report("envelope", 2, events + commands)
    assert len(events) == 1 and len(commands) == 1
    (event,) = events
    assert event.subject == f"noetl.events.{shard_for(execution_id, 16)}.{execution_id}"
    assert event.headers["Nats-Msg-Id"] == f"event:{event_id}"
    assert event.headers["Noetl-Event-Type"] == "command.issued"
    assert event.headers["Noetl-Execution-Id"] == str(execution_id)
    assert event.body == stored
    assert event.body["event_id"] == str(event_id) and event.body["payload_ref"] is None
    assert event.body["context"] == {"url": "https://example.org"}

    (command,) = commands
    assert command.subject == f"noetl.commands.default.{execution_id}"
    assert command.headers["Nats-Msg-Id"] == f"command:{event_id}"
    assert command.headers["Noetl-Event-Type"] == "command.issued"
    assert command.headers["Noetl-Execution-Id"] == str(execution_id)
    assert command.body == {
        "execution_id": execution_id,
        "event_id": event_id,
        "command_id": "9001",
        "step": "fetch",
        "pool": "default",
        "execution_pool": "default",
        "server_url": SERVER_URL,
    }


async def test_poison_rows_go_to_the_dead_table_and_the_rest_is_delivered(
    db_url: str, clean_nats: str
) -> None:
    dead_before = {r: m.DEAD.labels(reason=r)._value.get() for r in m.DEAD_REASONS}
    with _connect(db_url) as conn:
        execution_id = new_executions(conn, 1)[0]
        async with running_relay(db_url, clean_nats, NOETL_NATS_MAX_MSG_BYTES="65536"):
            # one statement: a slimmable event, an unsendable one, and ten ordinary ones
            conn.execute(
                """INSERT INTO noetl.event (event_id, execution_id, catalog_id, event_type,
                                            status, node_name, context)
                   SELECT noetl.snowflake_id(), %(x)s, 1, 'step.enter', 'RUNNING', v.node,
                          jsonb_build_object('blob', repeat('c', v.ctx))
                     FROM (VALUES (1, 'big', 200000), (2, repeat('n', 100000), 10),
                                  (3, 'a', 10), (4, 'b', 10), (5, 'c', 10), (6, 'd', 10),
                                  (7, 'e', 10), (8, 'f', 10), (9, 'g', 10), (10, 'h', 10),
                                  (11, 'i', 10), (12, 'j', 10)) AS v(i, node, ctx)
                    ORDER BY v.i""",
                {"x": execution_id},
            )
            # a command whose pool makes an invalid subject
            conn.execute(
                """INSERT INTO noetl.command (execution_id, command_id, event_id, catalog_id,
                                              step_name, tool_kind, pool, context)
                   VALUES (%s, 1, 2, 1, 's', 'http', 'Bad Pool', '{}')""",
                (execution_id,),
            )
            await _drained(db_url)
        dead = conn.execute(
            "SELECT kind, reason, last_error, msg_id FROM noetl.event_outbox_dead"
            " ORDER BY outbox_id"
        ).fetchall()

    events = await read_stream(clean_nats, "NOETL_EVENTS")
    unique, duplicates = report("poison row", 13, events)
    assert [(d["kind"], d["reason"]) for d in dead] == [
        ("event", "too_large"),
        ("command", "permanent"),
    ]
    assert "even after slimming" in dead[0]["last_error"]
    assert "invalid command subject" in dead[1]["last_error"]
    assert unique == 11 and duplicates == 0
    assert_execution_order(events)
    slim = events[0].body
    assert slim["node_name"] == "big" and slim["context"] is None
    assert slim["payload_ref"]["uri"].endswith(f"/event/{slim['event_id']}")
    assert [e.body["node_name"] for e in events[1:]] == list("abcdefghij")
    assert m.DEAD.labels(reason="too_large")._value.get() == dead_before["too_large"] + 1
    assert m.DEAD.labels(reason="permanent")._value.get() == dead_before["permanent"] + 1


async def test_recovers_from_terminated_listen_and_work_connections(
    db_url: str, clean_nats: str
) -> None:
    with _connect(db_url) as conn:
        executions = new_executions(conn, 10)
        async with running_relay(db_url, clean_nats) as relay:
            insert_events(conn, executions, 100)
            await _drained(db_url)
            killed = conn.execute(
                """SELECT application_name, pg_terminate_backend(pid) AS ok
                     FROM pg_stat_activity
                    WHERE datname = current_database()
                      AND application_name LIKE 'noetl-publisher%%'"""
            ).fetchall()
            assert {k["application_name"] for k in killed} == {
                "noetl-publisher",
                "noetl-publisher-listen",
            }
            # appended while the connections are gone: the NOTIFY may be lost, the rows not
            insert_events(conn, executions, 100)
            await _drained(db_url)
            await wait_until_async(lambda: relay.listen_ok and relay.db_ok, 20, "recovered")
            insert_events(conn, executions, 100)
            await _drained(db_url)
            listeners = conn.execute(
                """SELECT count(*) AS n FROM pg_stat_activity
                    WHERE datname = current_database()
                      AND application_name = 'noetl-publisher-listen'"""
            ).fetchone()["n"]
            assert listeners == 1

    events = await read_stream(clean_nats, "NOETL_EVENTS")
    unique, duplicates = report("lost connections", 300, events)
    assert unique == 300 and duplicates == 0
    assert_execution_order(events)


async def test_a_deleted_stream_is_recreated_and_nothing_is_lost(
    db_url: str, clean_nats: str
) -> None:
    with _connect(db_url) as conn:
        executions = new_executions(conn, 4)
        async with running_relay(
            db_url, clean_nats, NOETL_PUBLISHER_BACKOFF_MAX_SECONDS="1"
        ) as relay:
            insert_events(conn, executions, 10)
            await _drained(db_url)
            missing_before = m.ERRORS.labels(reason="stream_missing")._value.get()
            nc = await nats.connect(clean_nats)
            await nc.jetstream().delete_stream("NOETL_EVENTS")
            await nc.close()
            insert_events(conn, executions, 10)
            await _drained(db_url)
            assert relay.streams_ok
            assert m.ERRORS.labels(reason="stream_missing")._value.get() > missing_before
            attempts = conn.execute("SELECT count(*) AS n FROM noetl.event_outbox_dead").fetchone()[
                "n"
            ]
            assert attempts == 0
    events = await read_stream(clean_nats, "NOETL_EVENTS")
    unique, duplicates = report("stream deleted", 10, events)
    assert unique == 10 and duplicates == 0  # the stream was recreated empty


async def test_a_notify_wakes_the_relay_at_once(db_url: str, clean_nats: str) -> None:
    with _connect(db_url) as conn:
        executions = new_executions(conn, 1)
        # a safety poll far away: only the NOTIFY can deliver within the test's deadline
        async with running_relay(db_url, clean_nats, NOETL_PUBLISHER_POLL_SECONDS="60"):
            before = m.NOTIFY_WAKEUPS._value.get()
            insert_events(conn, executions, 3)
            await _drained(db_url, timeout=10)
            assert m.NOTIFY_WAKEUPS._value.get() > before
    events = await read_stream(clean_nats, "NOETL_EVENTS")
    assert len(events) == 3


async def _precreate_events_stream(nats_url: str, **limits: object) -> None:
    nc = await nats.connect(nats_url)
    await nc.jetstream().add_stream(
        StreamConfig(
            name="NOETL_EVENTS",
            subjects=["noetl.events.>"],
            duplicate_window=120.0,
            metadata={"noetl.layout": "1", "noetl.event_shard_count": "16"},
            **limits,
        )
    )
    await nc.close()


async def test_a_republished_row_is_dropped_by_jetstream(db_url: str, clean_nats: str) -> None:
    with _connect(db_url) as conn:
        executions = new_executions(conn, 1)
        async with running_relay(db_url, clean_nats):
            insert_events(conn, executions, 5)
            await _drained(db_url)
            before = m.DUPLICATES.labels(stream="NOETL_EVENTS")._value.get()
            # the crash case: a row published, its delete never committed
            conn.execute(
                """INSERT INTO noetl.event_outbox (execution_id, kind, source_id, lane, msg_id,
                                                   headers, payload)
                   SELECT e.execution_id, 'event', e.event_id, noetl.outbox_lane(e.execution_id),
                          'event:' || e.event_id,
                          jsonb_build_object('Noetl-Event-Type', e.event_type,
                                             'Noetl-Execution-Id', e.execution_id::text),
                          noetl.event_envelope(e)
                     FROM noetl.event e ORDER BY e.event_id LIMIT 2"""
            )
            conn.execute("NOTIFY noetl_outbox")
            await _drained(db_url)
            assert m.DUPLICATES.labels(stream="NOETL_EVENTS")._value.get() == before + 2
    events = await read_stream(clean_nats, "NOETL_EVENTS")
    unique, duplicates = report("republished", 5, events)
    assert unique == 5 and duplicates == 0 and len(events) == 5


async def test_a_retryable_rejection_backs_off_then_dies_after_max_attempts(
    db_url: str, clean_nats: str
) -> None:
    # one message per subject, new ones refused: every later event of an execution is
    # rejected with a retryable error (503 "maximum messages per subject exceeded")
    await _precreate_events_stream(
        clean_nats,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
    )
    rejected_before = m.ERRORS.labels(reason="publish_rejected")._value.get()
    with _connect(db_url) as conn:
        executions = new_executions(conn, 2)
        async with running_relay(
            db_url,
            clean_nats,
            NOETL_PUBLISHER_MAX_ATTEMPTS="3",
            NOETL_PUBLISHER_RETRY_BASE_SECONDS="0.05",
            NOETL_PUBLISHER_RETRY_MAX_SECONDS="0.2",
            NOETL_PUBLISHER_POLL_SECONDS="0.1",
        ):
            insert_events(conn, executions + [executions[0]], 3)  # x0, x1, then x0 again
            await _drained(db_url)
        dead = conn.execute(
            "SELECT reason, attempts, last_error FROM noetl.event_outbox_dead"
        ).fetchall()
    events = await read_stream(clean_nats, "NOETL_EVENTS")
    report("retryable rejection", 3, events)
    assert len(events) == 2
    assert [(d["reason"], d["attempts"]) for d in dead] == [("max_attempts", 3)]
    assert "maximum messages per subject exceeded" in dead[0]["last_error"]
    assert m.ERRORS.labels(reason="publish_rejected")._value.get() == rejected_before + 3


async def test_a_permanent_rejection_goes_dead_at_once(db_url: str, clean_nats: str) -> None:
    with _connect(db_url) as conn:
        executions = new_executions(conn, 1)
        async with running_relay(db_url, clean_nats):
            nc = await nats.connect(clean_nats)
            js = nc.jetstream()
            sealed = (await js.stream_info("NOETL_COMMANDS")).config
            sealed.sealed = True
            await js.update_stream(sealed)  # refuses every message: 400, not retryable
            await nc.close()
            conn.execute(
                """INSERT INTO noetl.command (execution_id, command_id, event_id, catalog_id,
                                              step_name, tool_kind, pool, context)
                   VALUES (%s, 1, 2, 1, 's', 'http', 'default', '{}')""",
                (executions[0],),
            )
            insert_events(conn, executions, 2)
            await _drained(db_url)
        dead = conn.execute(
            "SELECT kind, reason, attempts, last_error FROM noetl.event_outbox_dead"
        ).fetchall()
    assert [(d["kind"], d["reason"], d["attempts"]) for d in dead] == [("command", "permanent", 1)]
    assert "sealed" in dead[0]["last_error"]
    assert len(await read_stream(clean_nats, "NOETL_EVENTS")) == 2
