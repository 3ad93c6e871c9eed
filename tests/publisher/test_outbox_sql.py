"""The relay's SQL functions (envelope.md §2.6, §4.1): outbox_claim, outbox_complete,
outbox_requeue_dead, outbox_stats."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.publisher.helpers import insert_events, new_executions

SERVER_URL = "http://noetl.test:8082"
MB = 1024 * 1024


def claim(conn: psycopg.Connection, limit: int = 500, max_body: int = MB, batch: int = 8 * MB):
    return conn.execute(
        "SELECT * FROM noetl.outbox_claim(%s, %s, %s, %s)", (limit, max_body, batch, SERVER_URL)
    ).fetchall()


def complete(conn: psycopg.Connection, published=(), failed=(), max_attempts: int = 3):
    return conn.execute(
        "SELECT * FROM noetl.outbox_complete(%s, %s, %s, 1, 60)",
        (Jsonb(list(published)), Jsonb(list(failed)), max_attempts),
    ).fetchone()


def test_claim_returns_rows_in_outbox_order_and_locks_their_lanes(db_url: str) -> None:
    with (
        psycopg.connect(db_url, row_factory=dict_row) as a,
        psycopg.connect(db_url, row_factory=dict_row) as b,
    ):
        executions = new_executions(a, 40)
        insert_events(a, executions, 400)
        a.commit()
        rows = claim(a, limit=1000)
        assert len(rows) == 400
        assert [r["outbox_id"] for r in rows] == sorted(r["outbox_id"] for r in rows)
        # every lane with rows is now owned by transaction a: b finds nothing
        assert claim(b, limit=1000) == []
        b.rollback()
        a.rollback()
        # released at rollback: nothing was marked in flight
        assert len(claim(b, limit=1000)) == 400


def test_two_claims_take_disjoint_lanes(db_url: str) -> None:
    with (
        psycopg.connect(db_url, row_factory=dict_row) as a,
        psycopg.connect(db_url, row_factory=dict_row) as b,
    ):
        executions = new_executions(a, 64)
        insert_events(a, executions, 640)
        a.commit()
        first = claim(a, limit=10)  # fills from one lane (or a few), locks only those
        second = claim(b, limit=1000)
        lanes = lambda rows: {  # noqa: E731 - a one-line projection
            r["lane"]
            for r in a.execute(
                "SELECT lane FROM noetl.event_outbox WHERE outbox_id = ANY(%s)",
                ([x["outbox_id"] for x in rows],),
            ).fetchall()
        }
        assert first and second
        assert not {r["outbox_id"] for r in first} & {r["outbox_id"] for r in second}
        assert not lanes(first) & lanes(second)


def test_claim_respects_the_byte_budget_but_takes_at_least_one_row(conn) -> None:
    executions = new_executions(conn, 1)
    insert_events(conn, executions, 5, pad=1000)
    with conn.transaction():
        sizes = [len(r["body"].encode()) for r in claim(conn)]
        conn.execute("SELECT 1")
    budget = sizes[0] + sizes[1] + sizes[2] // 2
    with conn.transaction():
        assert [len(r["body"].encode()) for r in claim(conn, batch=budget)] == sizes[:2]
    with conn.transaction():
        assert len(claim(conn, batch=10)) == 1


def test_claim_skips_rows_not_yet_due(conn) -> None:
    executions = new_executions(conn, 1)
    insert_events(conn, executions, 3)
    conn.execute("UPDATE noetl.event_outbox SET available_at = now() + interval '1 hour'")
    with conn.transaction():
        assert claim(conn) == []


def test_claim_renders_event_and_command_bodies(conn) -> None:
    executions = new_executions(conn, 1)
    insert_events(conn, executions, 1)
    conn.execute(
        """INSERT INTO noetl.command (execution_id, command_id, event_id, catalog_id, step_name,
                                      tool_kind, pool, context)
           VALUES (%s, 77, 78, 1, 'fetch', 'http', 'default', '{}')""",
        (executions[0],),
    )
    with conn.transaction():
        event, command = claim(conn)
    stored = conn.execute(
        "SELECT noetl.event_envelope(e) AS env FROM noetl.event e WHERE execution_id = %s",
        (executions[0],),
    ).fetchone()["env"]
    assert json.loads(event["body"]) == stored
    assert event["kind"] == "event" and event["subject"] is None
    assert event["slimmed"] is False and event["dead"] is False
    assert json.loads(command["body"]) == {
        "execution_id": executions[0],
        "event_id": 78,
        "command_id": "77",
        "step": "fetch",
        "pool": "default",
        "execution_pool": "default",
        "server_url": SERVER_URL,
    }
    assert command["subject"] == f"noetl.commands.default.{executions[0]}"


def test_claim_slims_large_bodies(conn) -> None:
    executions = new_executions(conn, 1)
    error = "é" * 10000  # 20000 bytes: the 8 KiB cut must not split a character
    conn.execute(
        """INSERT INTO noetl.event (event_id, execution_id, catalog_id, event_type, status,
                                    context, result, meta, error)
           VALUES (noetl.snowflake_id(), %s, 1, 'call.done', 'COMPLETED',
                   jsonb_build_object('blob', repeat('x', 300000)), '{"status": "COMPLETED"}',
                   '{"command_id": "5", "worker_id": "w", "attempts": 2, "secret": "drop"}',
                   %s)""",
        (executions[0], error),
    )
    full = conn.execute("SELECT octet_length(payload::text) AS n FROM noetl.event_outbox")
    full_bytes = full.fetchone()["n"]
    with conn.transaction():
        (row,) = claim(conn, max_body=100_000)
    body = json.loads(row["body"])
    event_id = body["event_id"]
    assert row["slimmed"] is True and row["dead"] is False
    assert len(row["body"].encode()) <= 100_000
    assert body["context"] is None and body["result"] is None
    assert body["meta"] == {"command_id": "5", "worker_id": "w", "attempts": 2}
    assert len(body["error"].encode()) <= 8192 and body["error"] == error[: len(body["error"])]
    assert len(body["error"]) == 4096
    assert body["payload_ref"] == {
        "kind": "event",
        "uri": f"noetl://execution/{executions[0]}/event/{event_id}",
        "bytes": full_bytes,
    }
    assert body["event_type"] == "call.done" and body["status"] == "COMPLETED"


def test_claim_moves_a_body_too_large_after_slimming_to_the_dead_table(conn) -> None:
    executions = new_executions(conn, 1)
    conn.execute(
        """INSERT INTO noetl.event (event_id, execution_id, catalog_id, event_type, status,
                                    node_name)
           SELECT noetl.snowflake_id(), %s, 1, 'step.enter', 'RUNNING', n
             FROM unnest(ARRAY[repeat('n', 200000), 'ok']) AS n""",
        (executions[0],),
    )
    with conn.transaction():
        rows = claim(conn, max_body=100_000)
    assert [(r["dead"], r["body"] is None) for r in rows] == [(True, True), (False, False)]
    dead = conn.execute("SELECT * FROM noetl.event_outbox_dead").fetchall()
    assert [d["reason"] for d in dead] == ["too_large"]
    assert "even after slimming" in dead[0]["last_error"]
    assert dead[0]["outbox_id"] == rows[0]["outbox_id"]
    left = conn.execute("SELECT outbox_id FROM noetl.event_outbox").fetchall()
    assert [r["outbox_id"] for r in left] == [rows[1]["outbox_id"]]


def test_complete_deletes_retries_and_buries(conn) -> None:
    executions = new_executions(conn, 1)
    insert_events(conn, executions, 5)
    with conn.transaction():
        rows = claim(conn)
        x = executions[0]
        ids = [r["outbox_id"] for r in rows]
        conn.execute("UPDATE noetl.event_outbox SET attempts = 2 WHERE outbox_id = %s", (ids[2],))
        conn.execute("UPDATE noetl.event_outbox SET attempts = 3 WHERE outbox_id = %s", (ids[1],))
        settled = complete(
            conn,
            published=[{"execution_id": x, "outbox_id": ids[0]}],
            failed=[
                {
                    "execution_id": x,
                    "outbox_id": ids[1],
                    "error": "ack timeout",
                    "class": "transient",
                },
                {
                    "execution_id": str(x),
                    "outbox_id": str(ids[2]),
                    "error": "e" * 5000,
                    "class": "transient",
                },
                {"execution_id": x, "outbox_id": ids[3], "error": "big", "class": "too_large"},
                {"execution_id": x, "outbox_id": ids[4], "error": "bad", "class": "permanent"},
            ],
            max_attempts=4,
        )
    assert settled == {"deleted": 1, "retried": 1, "dead": 3}
    kept = conn.execute(
        "SELECT outbox_id, attempts, length(last_error) AS n,"
        " available_at - now() AS wait FROM noetl.event_outbox"
    ).fetchall()
    # old attempts 2: retry after min(60, 1 * 2^2) = 4 s; the error cut to 2000 chars
    assert len(kept) == 1 and kept[0]["outbox_id"] == ids[2]
    assert kept[0]["attempts"] == 3 and kept[0]["n"] == 2000
    assert timedelta(seconds=3) < kept[0]["wait"] <= timedelta(seconds=4)
    dead = conn.execute(
        "SELECT outbox_id, reason, attempts FROM noetl.event_outbox_dead ORDER BY outbox_id"
    ).fetchall()
    assert [(d["outbox_id"], d["reason"]) for d in dead] == [
        (ids[1], "max_attempts"),
        (ids[3], "too_large"),
        (ids[4], "permanent"),
    ]
    assert dead[0]["attempts"] == 4


def test_complete_rejects_an_unknown_class(conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        complete(conn, failed=[{"execution_id": 1, "outbox_id": 1, "error": "", "class": "x"}])


def test_requeue_dead_moves_rows_back_and_notifies(db_url: str, conn) -> None:
    executions = new_executions(conn, 1)
    insert_events(conn, executions, 3)
    with conn.transaction():
        rows = claim(conn)
        complete(
            conn,
            failed=[
                {
                    "execution_id": r["execution_id"],
                    "outbox_id": r["outbox_id"],
                    "error": "x",
                    "class": "permanent",
                }
                for r in rows
            ],
        )
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN noetl_outbox")
        one = conn.execute(
            "SELECT noetl.outbox_requeue_dead(%s) AS n", ([rows[0]["outbox_id"]],)
        ).fetchone()
        assert one["n"] == 1
        assert [n.channel for n in listener.notifies(timeout=2, stop_after=1)] == ["noetl_outbox"]
    back = conn.execute("SELECT * FROM noetl.event_outbox").fetchall()
    assert [(r["outbox_id"], r["attempts"]) for r in back] == [(rows[0]["outbox_id"], 0)]
    rest = conn.execute("SELECT noetl.outbox_requeue_dead(NULL) AS n").fetchone()
    assert rest["n"] == 2
    assert conn.execute("SELECT count(*) AS n FROM noetl.event_outbox_dead").fetchone()["n"] == 0
    with conn.transaction():
        again = claim(conn)
    assert [r["outbox_id"] for r in again] == [r["outbox_id"] for r in rows]
    assert [r["msg_id"] for r in again] == [r["msg_id"] for r in rows]


def test_stats(conn) -> None:
    empty = conn.execute("SELECT * FROM noetl.outbox_stats()").fetchone()
    assert empty == {"pending": 0, "due": 0, "oldest_seconds": 0, "dead": 0}
    executions = new_executions(conn, 1)
    insert_events(conn, executions, 4)
    conn.execute(
        "UPDATE noetl.event_outbox SET created_at = now() - interval '90 seconds',"
        " available_at = now() + interval '1 minute'"
        " WHERE outbox_id = (SELECT min(outbox_id) FROM noetl.event_outbox)"
    )
    stats = conn.execute("SELECT * FROM noetl.outbox_stats()").fetchone()
    assert stats["pending"] == 4 and stats["due"] == 3 and stats["dead"] == 0
    assert 89 < stats["oldest_seconds"] < 120
    kinds = conn.execute("SELECT * FROM noetl.outbox_pending_by_kind() ORDER BY kind").fetchall()
    assert kinds == [{"kind": "command", "pending": 0}, {"kind": "event", "pending": 4}]
