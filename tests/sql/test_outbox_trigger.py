"""append_events and the statement-level outbox / notify triggers (envelope.md §2, §4.1-§4.3)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.types.json import Jsonb

ENVELOPE_KEYS = {
    "event_id",
    "execution_id",
    "catalog_id",
    "parent_event_id",
    "parent_execution_id",
    "prev_event_id",
    "event_type",
    "node_id",
    "node_name",
    "node_type",
    "status",
    "context",
    "result",
    "meta",
    "error",
    "duration",
    "worker_id",
    "created_at",
    "tenant_id",
    "organization_id",
    "payload_ref",
}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


@pytest.fixture
def listener(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("LISTEN noetl_outbox")
        c.execute("LISTEN noetl_event")
        yield c


SENTINEL = "sentinel"


def _notes(listener: psycopg.Connection, channel: str, timeout: float = 10.0) -> list:
    """Notifications on `channel` committed so far: a sentinel NOTIFY sent now arrives after
    every earlier commit's notifications, so reading up to it needs no guessed wait."""
    with psycopg.connect(listener.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_notify(%s, %s)", (channel, SENTINEL))
    found = []
    for note in listener.notifies(timeout=timeout):
        if note.channel == channel and note.payload == SENTINEL:
            return found
        if note.channel == channel:
            found.append(note)
    raise AssertionError(f"sentinel on {channel} not received within {timeout}s")


def _execution(conn: psycopg.Connection, pool: str = "default") -> tuple[int, int]:
    """A catalog entry and a RUNNING execution with a real (current-month) snowflake id."""
    catalog_id = conn.execute(
        "SELECT catalog_id"
        " FROM noetl.catalog_register('t/flow', 'playbook', NULL, NULL, NULL, NULL)"
    ).fetchone()["catalog_id"]
    execution_id = conn.execute(
        """INSERT INTO noetl.execution
                  (execution_id, catalog_id, pool, status, last_event_id, start_time)
           VALUES (noetl.snowflake_id(), %s, %s, 'RUNNING', 0, now()) RETURNING execution_id""",
        (catalog_id, pool),
    ).fetchone()["execution_id"]
    return catalog_id, execution_id


def _append(conn: psycopg.Connection, events: list[dict]) -> list[dict]:
    return conn.execute("SELECT * FROM noetl.append_events(%s)", (Jsonb(events),)).fetchall()


def test_thousand_events_one_statement_one_notification(
    conn: psycopg.Connection, listener: psycopg.Connection
) -> None:
    catalog_id, execution_id = _execution(conn)
    _notes(listener, "noetl_outbox")  # drain anything from the setup
    events = [
        {
            "execution_id": str(execution_id),
            "event_type": "step.enter",
            "node_name": f"s{i}",
            "status": "ENTERED",
            "context": {"i": i},
        }
        for i in range(1000)
    ]
    rows = _append(conn, events)

    assert [r["ord"] for r in rows] == list(range(1000))
    assert all(r["inserted"] for r in rows)
    ids = [r["event_id"] for r in rows]
    assert all(b > a for a, b in zip(ids, ids[1:], strict=False)), "ids follow array order"

    outbox = conn.execute(
        "SELECT * FROM noetl.event_outbox WHERE kind = 'event' ORDER BY outbox_id"
    ).fetchall()
    assert len(outbox) == 1000
    assert [o["source_id"] for o in outbox] == ids
    assert [o["msg_id"] for o in outbox] == [f"event:{i}" for i in ids]
    assert {o["subject"] for o in outbox} == {None}
    lane = conn.execute("SELECT noetl.outbox_lane(%s) AS lane", (execution_id,)).fetchone()["lane"]
    assert 0 <= lane <= 15 and {o["lane"] for o in outbox} == {lane}
    assert outbox[0]["headers"] == {
        "Noetl-Event-Type": "step.enter",
        "Noetl-Execution-Id": str(execution_id),
    }
    assert outbox[7]["payload"]["context"] == {"i": 7}
    assert outbox[7]["payload"]["catalog_id"] == str(catalog_id)
    # the chain: one null root, each row points at the previous one
    assert outbox[0]["payload"]["prev_event_id"] is None
    assert outbox[7]["payload"]["prev_event_id"] == str(ids[6])

    assert len(_notes(listener, "noetl_outbox")) == 1

    last = conn.execute(
        "SELECT last_event_id FROM noetl.execution WHERE execution_id = %s", (execution_id,)
    ).fetchone()["last_event_id"]
    assert last == ids[-1]


def test_rolled_back_append_leaves_no_rows_and_no_notification(
    conn: psycopg.Connection, listener: psycopg.Connection
) -> None:
    _, execution_id = _execution(conn)
    _notes(listener, "noetl_outbox")
    with conn.transaction(force_rollback=True):
        _append(
            conn,
            [
                {
                    "execution_id": str(execution_id),
                    "event_type": "step.enter",
                    "node_name": "a",
                    "status": "ENTERED",
                }
            ],
        )
        assert conn.execute("SELECT count(*) AS n FROM noetl.event_outbox").fetchone()["n"] == 1
    assert conn.execute("SELECT count(*) AS n FROM noetl.event_outbox").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM noetl.event").fetchone()["n"] == 0
    assert _notes(listener, "noetl_outbox") == []
    assert _notes(listener, "noetl_event") == []


def test_outbox_suppress_skips_the_outbox_only(
    conn: psycopg.Connection, listener: psycopg.Connection
) -> None:
    _, execution_id = _execution(conn)
    _notes(listener, "noetl_outbox")
    with conn.transaction():
        conn.execute("SELECT set_config('noetl.outbox_suppress', 'on', true)")
        _append(
            conn,
            [
                {
                    "execution_id": str(execution_id),
                    "event_type": "step.enter",
                    "node_name": "a",
                    "status": "ENTERED",
                }
            ],
        )
    assert conn.execute("SELECT count(*) AS n FROM noetl.event_outbox").fetchone()["n"] == 0
    assert _notes(listener, "noetl_outbox") == []


def test_event_notification_per_execution(
    conn: psycopg.Connection, listener: psycopg.Connection
) -> None:
    _, first = _execution(conn)
    _, second = _execution(conn)
    _notes(listener, "noetl_event")
    rows = _append(
        conn,
        [
            {"execution_id": str(first), "event_type": "step.enter", "node_name": "a"},
            {"execution_id": str(second), "event_type": "step.enter", "node_name": "a"},
            {"execution_id": str(second), "event_type": "playbook.completed", "node_name": "end"},
        ],
    )
    payloads = sorted(
        (json.loads(n.payload) for n in _notes(listener, "noetl_event")),
        key=lambda p: p["execution_id"],
    )
    assert payloads == [
        {
            "execution_id": str(first),
            "event_id": str(rows[0]["event_id"]),
            "count": 1,
            "terminal": False,
        },
        {
            "execution_id": str(second),
            "event_id": str(rows[2]["event_id"]),
            "count": 2,
            "terminal": True,
        },
    ]


def test_command_rows_become_command_notifications(
    conn: psycopg.Connection, listener: psycopg.Connection
) -> None:
    catalog_id, execution_id = _execution(conn, pool="gpu")
    issued = _append(
        conn,
        [
            {
                "execution_id": str(execution_id),
                "event_type": "command.issued",
                "node_name": step,
                "status": "PENDING",
                "meta": {"command_id": str(command_id)},
            }
            for step, command_id in (("fetch", 9001), ("store", 9002))
        ],
    )
    conn.execute("DELETE FROM noetl.event_outbox")
    _notes(listener, "noetl_outbox")

    conn.execute(
        """INSERT INTO noetl.command (execution_id, command_id, event_id, catalog_id, step_name,
                                      tool_kind, pool, context)
           VALUES (%(x)s, 9001, %(e1)s, %(c)s, 'fetch', 'http', 'gpu', '{}'),
                  (%(x)s, 9002, %(e2)s, %(c)s, 'store', 'postgres', 'gpu', '{}')""",
        {
            "x": execution_id,
            "e1": issued[0]["event_id"],
            "e2": issued[1]["event_id"],
            "c": catalog_id,
        },
    )
    rows = conn.execute("SELECT * FROM noetl.event_outbox ORDER BY outbox_id").fetchall()
    assert [r["kind"] for r in rows] == ["command", "command"]
    assert {r["subject"] for r in rows} == {f"noetl.commands.gpu.{execution_id}"}
    assert [r["msg_id"] for r in rows] == [
        f"command:{issued[0]['event_id']}",
        f"command:{issued[1]['event_id']}",
    ]
    assert rows[0]["source_id"] == issued[0]["event_id"]
    assert rows[0]["headers"] == {
        "Noetl-Event-Type": "command.issued",
        "Noetl-Execution-Id": str(execution_id),
    }
    # §2.7 without server_url; execution_id and event_id are JSON numbers
    assert rows[0]["payload"] == {
        "execution_id": execution_id,
        "event_id": issued[0]["event_id"],
        "command_id": "9001",
        "step": "fetch",
        "pool": "gpu",
        "execution_pool": "gpu",
    }
    text = conn.execute(
        "SELECT payload::text AS t FROM noetl.event_outbox ORDER BY outbox_id LIMIT 1"
    ).fetchone()["t"]
    assert f'"event_id": {issued[0]["event_id"]}' in text
    assert len(_notes(listener, "noetl_outbox")) == 1


def test_dedup_by_producer_event_id(conn: psycopg.Connection) -> None:
    _, execution_id = _execution(conn)
    event = {
        "execution_id": execution_id,
        "event_type": "step.enter",
        "node_name": "a",
        "meta": {"producer_event_id": "123456789"},
    }
    first = _append(conn, [event])[0]
    assert first["inserted"] is True
    again = _append(conn, [event, event])
    assert [(r["ord"], r["event_id"], r["inserted"]) for r in again] == [
        (0, first["event_id"], False),
        (1, first["event_id"], False),
    ]
    # a repeat inside one array is found too
    inside = _append(conn, [dict(event, meta={"producer_event_id": "77"})] * 2)
    assert inside[0]["inserted"] and not inside[1]["inserted"]
    assert inside[1]["event_id"] == inside[0]["event_id"]
    stored = conn.execute(
        "SELECT producer_event_id FROM noetl.event WHERE execution_id = %s ORDER BY event_id",
        (execution_id,),
    ).fetchall()
    assert [r["producer_event_id"] for r in stored] == [123456789, 77]
    assert conn.execute("SELECT count(*) AS n FROM noetl.event_outbox").fetchone()["n"] == 2


def test_worker_events_dedup_parent_and_duplicate_terminal(conn: psycopg.Connection) -> None:
    catalog_id, execution_id = _execution(conn)
    x = str(execution_id)
    issued = _append(
        conn,
        [
            {
                "execution_id": x,
                "event_type": "command.issued",
                "node_name": "fetch",
                "meta": {"command_id": "5001"},
            }
        ],
    )[0]
    conn.execute(
        """INSERT INTO noetl.command (execution_id, command_id, event_id, catalog_id, step_name,
                                      tool_kind, pool, context)
           VALUES (%s, 5001, %s, %s, 'fetch', 'http', 'default', '{}')""",
        (execution_id, issued["event_id"], catalog_id),
    )

    def worker(event_type: str) -> dict:
        return {
            "execution_id": x,
            "event_type": event_type,
            "node_name": "fetch",
            "meta": {"command_id": "5001", "worker_id": "w1"},
        }

    rows = _append(
        conn,
        [
            worker("call.done"),
            worker("call.done"),
            worker("call.error"),
            worker("command.completed"),
            worker("command.failed"),
        ],
    )
    assert [r["inserted"] for r in rows] == [True, False, True, True, True]
    assert rows[1]["event_id"] == rows[0]["event_id"]
    stored = {
        r["event_type"]: r
        for r in conn.execute(
            "SELECT * FROM noetl.event WHERE execution_id = %s AND command_id = 5001",
            (execution_id,),
        )
    }
    assert "ignored" not in stored["call.done"]["meta"]
    assert stored["call.error"]["meta"]["ignored"] == "duplicate_terminal"
    assert "ignored" not in stored["command.completed"]["meta"]  # bookkeeping after call.*
    assert stored["command.failed"]["meta"]["ignored"] == "duplicate_terminal"
    assert stored["call.done"]["parent_event_id"] == issued["event_id"]
    assert stored["call.done"]["worker_id"] == "w1"
    assert stored["call.done"]["catalog_id"] == catalog_id
    assert stored["call.done"]["status"] == "COMPLETED"  # derived when absent

    # a later retry of the same call.done is still a repeat
    retry = _append(conn, [worker("call.done")])[0]
    assert retry["event_id"] == rows[0]["event_id"] and retry["inserted"] is False


def test_missing_required_fields_raise_22023(conn: psycopg.Connection) -> None:
    _, execution_id = _execution(conn)
    good = {"execution_id": str(execution_id), "event_type": "step.enter"}
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"events\[1\].*event_type"):
        _append(conn, [good, {"execution_id": str(execution_id)}])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"events\[0\].*execution_id"):
        _append(conn, [{"event_type": "x"}])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="catalog_id"):
        _append(conn, [{"execution_id": "12345", "event_type": "x"}])
    assert conn.execute("SELECT count(*) AS n FROM noetl.event").fetchone()["n"] == 0


def test_event_envelope_has_every_key(conn: psycopg.Connection) -> None:
    _, execution_id = _execution(conn)
    _append(
        conn,
        [
            {
                "execution_id": str(execution_id),
                "event_type": "step.enter",
                "node_name": "a",
                "duration": 12.5,
                "created_at": "2026-03-15T12:34:56.789+02:00",
            }
        ],
    )
    envelope = conn.execute(
        "SELECT noetl.event_envelope(e) AS env FROM noetl.event e WHERE e.execution_id = %s",
        (execution_id,),
    ).fetchone()["env"]
    assert set(envelope) == ENVELOPE_KEYS
    assert envelope["execution_id"] == str(execution_id)
    assert isinstance(envelope["event_id"], str) and envelope["event_id"].isdigit()
    assert envelope["payload_ref"] is None and envelope["parent_event_id"] is None
    assert envelope["node_id"] == "a"
    assert envelope["meta"] == {}
    assert envelope["duration"] == 12.5
    assert envelope["tenant_id"] == envelope["organization_id"] == "default"
    assert envelope["created_at"] == "2026-03-15T10:34:56.789000Z"
    assert RFC3339.match(envelope["created_at"])
    outbox = conn.execute("SELECT payload FROM noetl.event_outbox").fetchone()["payload"]
    assert outbox == envelope
