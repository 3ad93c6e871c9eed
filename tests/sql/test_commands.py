"""Command functions (envelope.md §4.1; worker-protocol.md §6, §8; api.md §7.6, §8.1, §13):
issue_commands, command_apply_event, command_renotify, runtime_deregister,
cancel_executions, finalize_execution, find_stuck_executions, dashboard_stats."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from core.ids import new_id
from tests.sql.commands_helpers import (
    HARD_TIMEOUT_S,
    LEASE_S,
    STALE_S,
    age_claim,
    claim,
    command_row,
    events,
    execution,
    issue,
    worker,
)

RENOTIFY = "SELECT noetl.command_renotify(%s, %s, %s, %s, %s) AS n"
PENDING_AFTER_S = 60.0


def _renotify(conn: psycopg.Connection, lim: int = 100) -> int:
    return conn.execute(
        RENOTIFY, (PENDING_AFTER_S, LEASE_S, STALE_S, HARD_TIMEOUT_S, lim)
    ).fetchone()["n"]


def _outbox(conn: psycopg.Connection, event_id: int) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT * FROM noetl.event_outbox WHERE kind = 'command' AND source_id = %s"
        " ORDER BY outbox_id",
        (event_id,),
    ).fetchall()


def _age_notification(conn: psycopg.Connection, execution_id: int, seconds: float) -> None:
    conn.execute(
        "UPDATE noetl.command SET notified_at = now() - make_interval(secs => %s)"
        " WHERE execution_id = %s",
        (seconds, execution_id),
    )


def _post(
    conn: psycopg.Connection,
    execution_id: int,
    cmd: dict[str, Any],
    event_type: str,
    *,
    worker_id: str = "w1",
    status: str | None = None,
    context: dict[str, Any] | None = None,
    outcome: str | None = None,
    error: str | None = None,
) -> tuple[int, str | None]:
    """A worker event appended as the events route does, then applied to the command row."""
    event = {
        "execution_id": str(execution_id),
        "event_type": event_type,
        "node_name": cmd["step"],
        "worker_id": worker_id,
        "context": {"command_id": str(cmd["command_id"]), **(context or {})},
        "meta": {"command_id": str(cmd["command_id"])},
    }
    if status is not None:
        event["status"] = status
    (row,) = conn.execute("SELECT * FROM noetl.append_events(%s)", (Jsonb([event]),)).fetchall()
    applied = conn.execute(
        "SELECT noetl.command_apply_event(%s, %s, %s, %s) AS status",
        (execution_id, row["event_id"], outcome, error),
    ).fetchone()["status"]
    return row["event_id"], applied


# ---------------------------------------------------------------- start_execution, issue


def test_start_execution_creates_the_row_once(conn: psycopg.Connection) -> None:
    catalog_id, parent_id = execution(conn, pool="gpu")
    child_id = new_id()
    assert conn.execute(
        "SELECT noetl.start_execution(%s, %s, 'cpu', %s, 42) AS c",
        (child_id, catalog_id, parent_id),
    ).fetchone()["c"]
    assert not conn.execute(
        "SELECT noetl.start_execution(%s, %s, 'other') AS c", (child_id, catalog_id)
    ).fetchone()["c"]
    row = conn.execute(
        "SELECT * FROM noetl.execution WHERE execution_id = %s", (child_id,)
    ).fetchone()
    assert (row["pool"], row["status"], row["parent_execution_id"], row["parent_event_id"]) == (
        "cpu",
        "RUNNING",
        parent_id,
        42,
    )
    assert row["catalog_id"] == catalog_id and row["last_event_id"] == 0


def test_issue_commands_inserts_rows_and_one_notification_each(conn: psycopg.Connection) -> None:
    _, parent_id = execution(conn)
    catalog_id, execution_id = execution(conn, pool="gpu", parent=parent_id)
    command_id = new_id()
    issued = {
        "execution_id": execution_id,  # a number is accepted as well as a string
        "command_id": str(command_id),
        "event_id": "777",
        "step_name": "fetch",
        "tool_kind": "http",
        "pool": "ignored-when-the-execution-has-one",
        "context": {"tool_config": {"url": "http://x"}},
        "meta": {"iteration_index": 0},
    }
    assert (
        conn.execute("SELECT noetl.issue_commands(%s) AS n", (Jsonb([issued]),)).fetchone()["n"]
        == 1
    )
    row = command_row(conn, execution_id, command_id)
    assert (row["event_id"], row["step_name"], row["tool_kind"], row["pool"]) == (
        777,
        "fetch",
        "http",
        "gpu",
    )
    assert (row["catalog_id"], row["parent_execution_id"]) == (catalog_id, parent_id)
    assert (row["status"], row["attempts"], row["notify_count"]) == ("PENDING", 0, 0)
    assert row["context"] == issued["context"] and row["meta"] == issued["meta"]
    (note,) = _outbox(conn, 777)
    assert note["msg_id"] == "command:777"
    assert note["subject"] == f"noetl.commands.gpu.{execution_id}"

    # a retried transaction issues nothing twice
    again = conn.execute("SELECT noetl.issue_commands(%s) AS n", (Jsonb([issued]),)).fetchone()
    assert again["n"] == 0
    assert len(_outbox(conn, 777)) == 1
    assert conn.execute("SELECT noetl.issue_commands('[]') AS n").fetchone()["n"] == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"step_name": None}, "step"),
        ({"tool_kind": ""}, "tool_kind"),
        ({"context": "text"}, "context"),
        ({"command_id": "12x"}, "command_id"),
        ({"event_id": None}, "event_id"),
        ({"execution_id": "1"}, "noetl.execution row"),
    ],
)
def test_issue_commands_rejects_bad_input_naming_the_field(
    conn: psycopg.Connection, change: dict[str, Any], field: str
) -> None:
    _, execution_id = execution(conn)
    item = {
        "execution_id": str(execution_id),
        "command_id": "5",
        "event_id": "6",
        "step_name": "s",
        "tool_kind": "python",
        "context": {},
    }
    item.update(change)
    item = {k: v for k, v in item.items() if v is not None}
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=field):
        conn.execute("SELECT noetl.issue_commands(%s)", (Jsonb([item]),))
    assert conn.execute("SELECT count(*) AS n FROM noetl.command").fetchone()["n"] == 0


# ---------------------------------------------------------------- command_apply_event


def test_worker_events_move_the_command_row(conn: psycopg.Connection) -> None:
    _, execution_id = execution(conn)
    (cmd,) = issue(conn, execution_id, ["start"])
    worker(conn, "w1")
    claim(conn, cmd["event_id"], "w1")

    started_id, status = _post(conn, execution_id, cmd, "command.started", status="STARTED")
    assert status == "RUNNING"
    row = command_row(conn, execution_id, cmd["command_id"])
    assert row["started_at"] is not None and row["heartbeat_at"] is not None
    assert row["latest_event_id"] == started_id

    # a heartbeat of another worker (the reclaimed one) does not extend this claim
    conn.execute(
        "UPDATE noetl.command SET heartbeat_at = now() - interval '1 hour' WHERE execution_id = %s",
        (execution_id,),
    )
    _post(conn, execution_id, cmd, "command.heartbeat", worker_id="w0")
    assert conn.execute(
        "SELECT heartbeat_at < now() - interval '30 minutes' AS old FROM noetl.command"
        " WHERE execution_id = %s",
        (execution_id,),
    ).fetchone()["old"]
    _post(conn, execution_id, cmd, "command.heartbeat")
    assert conn.execute(
        "SELECT heartbeat_at > now() - interval '1 minute' AS fresh FROM noetl.command"
        " WHERE execution_id = %s",
        (execution_id,),
    ).fetchone()["fresh"]

    result = {"status": "success", "context": {"status": "success", "data": {"rows": 3}}}
    done_id, status = _post(
        conn, execution_id, cmd, "call.done", status="COMPLETED", context={"result": result}
    )
    assert status == "COMPLETED"
    row = command_row(conn, execution_id, cmd["command_id"])
    assert row["result"] == result and row["error"] is None
    assert row["completed_at"] is not None and row["latest_event_id"] == done_id

    # bookkeeping and late events change nothing but latest_event_id; terminal is sticky
    completed_id, status = _post(conn, execution_id, cmd, "command.completed")
    assert status == "COMPLETED"
    cancelled_id, status = _post(conn, execution_id, cmd, "command.cancelled")
    assert status == "COMPLETED"
    _, status = _post(conn, execution_id, cmd, "command.heartbeat")
    assert status == "COMPLETED"
    row = command_row(conn, execution_id, cmd["command_id"])
    assert row["result"] == result
    assert row["latest_event_id"] > cancelled_id > completed_id


@pytest.mark.parametrize(
    ("event_type", "status", "context", "outcome", "expected", "error"),
    [
        (
            "call.error",
            "FAILED",
            {"error": {"kind": "http", "message": "HTTP 503"}},
            None,
            "FAILED",
            "HTTP 503",
        ),
        ("command.failed", "FAILED", {"error": "boom"}, None, "FAILED", "boom"),
        ("call.done", "ERROR", {"result": {"status": "error"}}, None, "FAILED", None),
        (
            "call.done",
            "COMPLETED",
            {"result": {"status": "success", "context": {"status": "error", "error": "bad"}}},
            None,
            "FAILED",
            "bad",
        ),
        ("call.done", "COMPLETED", {"result": {"status": "success"}}, "error", "FAILED", "given"),
        ("call.done", "COMPLETED", {"result": {"status": "error"}}, "ok", "COMPLETED", None),
        ("command.completed", "COMPLETED", {}, None, "COMPLETED", None),
        ("command.cancelled", "CANCELLED", {"reason": "stop"}, None, "CANCELLED", "stop"),
    ],
)
def test_first_terminal_event_sets_the_outcome(
    conn: psycopg.Connection,
    event_type: str,
    status: str,
    context: dict[str, Any],
    outcome: str | None,
    expected: str,
    error: str | None,
) -> None:
    _, execution_id = execution(conn)
    (cmd,) = issue(conn, execution_id, ["start"])
    worker(conn, "w1")
    claim(conn, cmd["event_id"], "w1")
    given = "given" if outcome == "error" else None
    _, applied = _post(
        conn,
        execution_id,
        cmd,
        event_type,
        status=status,
        context=context,
        outcome=outcome,
        error=given,
    )
    assert applied == expected
    row = command_row(conn, execution_id, cmd["command_id"])
    assert (row["status"], row["error"]) == (expected, error)


def test_apply_event_without_a_command_changes_nothing(conn: psycopg.Connection) -> None:
    _, execution_id = execution(conn)
    (row,) = conn.execute(
        "SELECT * FROM noetl.append_events(%s)",
        (Jsonb([{"execution_id": str(execution_id), "event_type": "step.enter"}]),),
    ).fetchall()
    assert (
        conn.execute(
            "SELECT noetl.command_apply_event(%s, %s) AS s", (execution_id, row["event_id"])
        ).fetchone()["s"]
        is None
    )
    assert (
        conn.execute("SELECT noetl.command_apply_event(%s, 1) AS s", (execution_id,)).fetchone()[
            "s"
        ]
        is None
    )


# ---------------------------------------------------------------- command_renotify


@pytest.fixture
def outbox_listener(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("LISTEN noetl_outbox")
        yield c


def _woken(listener: psycopg.Connection) -> int:
    """noetl_outbox notifications committed so far (a sentinel bounds the wait)."""
    with psycopg.connect(listener.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_notify('noetl_outbox', 'sentinel')")
    for count, note in enumerate(listener.notifies(timeout=10)):
        if note.payload == "sentinel":
            return count
    raise AssertionError("sentinel not received")


def test_renotify_picks_stranded_pending_commands(
    conn: psycopg.Connection, outbox_listener: psycopg.Connection
) -> None:
    _, execution_id = execution(conn, pool="gpu")
    stranded, fresh = issue(conn, execution_id, ["a", "b"])
    _woken(outbox_listener)  # drain the trigger's wake-up
    conn.execute(
        "UPDATE noetl.command SET notified_at = now() - interval '2 minutes'"
        " WHERE execution_id = %s AND command_id = %s",
        (execution_id, stranded["command_id"]),
    )
    (original,) = _outbox(conn, stranded["event_id"])

    assert _renotify(conn) == 1
    assert _woken(outbox_listener) == 1
    first, again = _outbox(conn, stranded["event_id"])
    assert again["msg_id"] == f"command:{stranded['event_id']}:1"
    for key in ("execution_id", "kind", "source_id", "lane", "subject", "headers", "payload"):
        assert again[key] == original[key], key
    row = command_row(conn, execution_id, stranded["command_id"])
    assert row["notify_count"] == 1 and row["status"] == "PENDING"
    assert len(_outbox(conn, fresh["event_id"])) == 1
    assert command_row(conn, execution_id, fresh["command_id"])["notify_count"] == 0

    # notified just now: not again until pending_after_s has passed
    assert _renotify(conn) == 0
    _age_notification(conn, execution_id, 120)
    assert _renotify(conn) == 2
    assert _outbox(conn, stranded["event_id"])[-1]["msg_id"] == f"command:{stranded['event_id']}:2"
    assert _outbox(conn, fresh["event_id"])[-1]["msg_id"] == f"command:{fresh['event_id']}:1"
    # the reaper writes no event and moves no status
    assert [e["event_type"] for e in events(conn, execution_id)] == ["command.issued"] * 2


def test_renotify_picks_commands_of_dead_workers_only(conn: psycopg.Connection) -> None:
    _, execution_id = execution(conn)
    dead, offline, healthy, leased = issue(conn, execution_id, ["dead", "off", "ok", "leased"])
    for name, cmd in (("wd", dead), ("wo", offline), ("wh", healthy), ("wl", leased)):
        worker(conn, name)
        claim(conn, cmd["event_id"], name)
    age_claim(conn, execution_id, dead["command_id"], 300)
    age_claim(conn, execution_id, healthy["command_id"], 300)
    worker(conn, "wd", "ready", heartbeat_age_s=120)  # stale heartbeat, lease over
    worker(conn, "wo", "offline")  # deregistered, inside its lease
    conn.execute("DELETE FROM noetl.runtime WHERE name = 'wl'")  # no row, but leased
    _age_notification(conn, execution_id, 30)  # below pending_after_s: it must not matter

    assert _renotify(conn) == 2
    counts = {
        cmd["step"]: command_row(conn, execution_id, cmd["command_id"])["notify_count"]
        for cmd in (dead, offline, healthy, leased)
    }
    assert counts == {"dead": 1, "off": 1, "ok": 0, "leased": 0}
    assert _outbox(conn, dead["event_id"])[-1]["msg_id"] == f"command:{dead['event_id']}:1"
    statuses = {
        command_row(conn, execution_id, cmd["command_id"])["status"]
        for cmd in (dead, offline, healthy, leased)
    }
    assert statuses == {"CLAIMED"}


def test_renotify_skips_terminal_executions_and_honours_the_limit(
    conn: psycopg.Connection,
) -> None:
    _, finished = execution(conn)
    issue(conn, finished, ["a"])
    conn.execute(
        "UPDATE noetl.execution SET status = 'COMPLETED' WHERE execution_id = %s", (finished,)
    )
    _age_notification(conn, finished, 600)
    _, running = execution(conn)
    cmds = issue(conn, running, ["a", "b", "c"])
    # b waited longest, then c, then a
    for cmd, age in zip(cmds, (200, 400, 300), strict=True):
        conn.execute(
            "UPDATE noetl.command SET notified_at = now() - make_interval(secs => %s)"
            " WHERE execution_id = %s AND command_id = %s",
            (age, running, cmd["command_id"]),
        )
    assert _renotify(conn, lim=2) == 2
    counts = [command_row(conn, running, c["command_id"])["notify_count"] for c in cmds]
    assert counts == [0, 1, 1]
    assert (
        conn.execute(
            "SELECT notify_count FROM noetl.command WHERE execution_id = %s", (finished,)
        ).fetchone()["notify_count"]
        == 0
    )
    assert _renotify(conn, lim=2) == 1
    assert _renotify(conn, lim=0) == 0


# ---------------------------------------------------------------- runtime_deregister


def test_deregister_renotifies_the_workers_open_commands(conn: psycopg.Connection) -> None:
    _, execution_id = execution(conn)
    claimed, running, other, pending = issue(conn, execution_id, ["a", "b", "c", "d"])
    worker(conn, "w1")
    worker(conn, "w2")
    claim(conn, claimed["event_id"], "w1")
    claim(conn, running["event_id"], "w1")
    claim(conn, other["event_id"], "w2")
    _post(conn, execution_id, running, "command.started", status="STARTED")

    row = conn.execute("SELECT * FROM noetl.runtime_deregister('w1')").fetchone()
    assert row["renotified"] == 2 and row["runtime_id"] is not None
    assert (
        conn.execute("SELECT status FROM noetl.runtime WHERE name = 'w1'").fetchone()["status"]
        == "offline"
    )
    counts = [
        command_row(conn, execution_id, c["command_id"])["notify_count"]
        for c in (claimed, running, other, pending)
    ]
    assert counts == [1, 1, 0, 0]
    assert _outbox(conn, running["event_id"])[-1]["msg_id"] == f"command:{running['event_id']}:1"

    # the next worker takes it at once (rule 5), inside w1's lease
    worker(conn, "w3")
    taken = claim(conn, running["event_id"], "w3")
    assert (taken["outcome"], taken["reclaimed_reason"]) == ("claimed", "worker_offline")

    again = conn.execute("SELECT * FROM noetl.runtime_deregister('w1')").fetchone()
    assert again["renotified"] == 1  # only `claimed` is still w1's
    unknown = conn.execute("SELECT * FROM noetl.runtime_deregister('nobody')").fetchone()
    assert (unknown["runtime_id"], unknown["renotified"]) == (None, 0)


# ---------------------------------------------------------------- cancel, finalize, cleanup


def test_cancel_with_cascade_stops_parent_child_and_their_commands(
    conn: psycopg.Connection,
) -> None:
    _, parent = execution(conn)
    _, child = execution(conn, parent=parent)
    _, grandchild = execution(conn, parent=child)
    _, finished_child = execution(conn, parent=parent)
    _, stranger = execution(conn)
    p_pending, p_running = issue(conn, parent, ["p1", "p2"])
    (c_pending,) = issue(conn, child, ["c1"])
    (s_pending,) = issue(conn, stranger, ["s1"])
    worker(conn, "w1")
    claim(conn, p_running["event_id"], "w1")
    _post(conn, parent, p_running, "command.started", status="STARTED")
    conn.execute(
        "SELECT noetl.execution_save(%s, NULL, NULL, 'COMPLETED', NULL, NULL, NULL, NULL, NULL)",
        (finished_child,),
    )
    conn.execute(
        "INSERT INTO noetl.keychain (cache_key, keychain_name, catalog_id, credential_type,"
        " cache_type, scope_type, execution_id, data_encrypted, expires_at)"
        " SELECT 'k:' || %s, 'k', catalog_id, 't', 'secret', 'local', %s, 'x',"
        " now() + interval '1 hour' FROM noetl.execution WHERE execution_id = %s",
        (child, child, child),
    )

    ids = [
        r["cancel_executions"]
        for r in conn.execute(
            "SELECT * FROM noetl.cancel_executions(%s, 'stop it', true, 'api')", (parent,)
        ).fetchall()
    ]
    assert ids[0] == parent
    assert sorted(ids[1:]) == ids[1:]
    assert set(ids) == {parent, child, grandchild}

    for execution_id, parent_cancel_id in (
        (parent, None),
        (child, str(parent)),
        (grandchild, str(parent)),
    ):
        row = conn.execute(
            "SELECT * FROM noetl.execution WHERE execution_id = %s", (execution_id,)
        ).fetchone()
        assert row["status"] == "CANCELLED" and row["end_time"] is not None
        (cancelled,) = events(conn, execution_id, "execution.cancelled")
        details = {
            "reason": "stop it",
            "cancelled_by": "api",
            "cascade": True,
            "parent_cancel_id": parent_cancel_id,
        }
        assert cancelled["meta"] == {**details, "actionable": True}
        assert cancelled["context"] == details
        assert (cancelled["node_name"], cancelled["status"]) == ("cancel", "CANCELLED")
        # the terminal event is the execution's last one
        assert cancelled["event_id"] == max(e["event_id"] for e in events(conn, execution_id))
        assert row["last_event_id"] == cancelled["event_id"]

    for execution_id, cmd in ((parent, p_pending), (parent, p_running), (child, c_pending)):
        row = command_row(conn, execution_id, cmd["command_id"])
        (event,) = [
            e
            for e in events(conn, execution_id, "command.cancelled")
            if e["command_id"] == cmd["command_id"]
        ]
        assert (row["status"], row["error"]) == ("CANCELLED", "stop it")
        assert row["latest_event_id"] == event["event_id"]
        assert event["parent_event_id"] == cmd["event_id"]
        assert event["meta"] == {
            "command_id": str(cmd["command_id"]),
            "reason": "stop it",
            "cancelled_by": "api",
        }
        assert claim(conn, cmd["event_id"], "w9")["reason"] == "command_cancelled"

    untouched = conn.execute(
        "SELECT status FROM noetl.execution WHERE execution_id = %s", (finished_child,)
    ).fetchone()
    assert untouched["status"] == "COMPLETED"
    assert events(conn, finished_child, "execution.cancelled") == []
    assert command_row(conn, stranger, s_pending["command_id"])["status"] == "PENDING"
    assert conn.execute("SELECT count(*) AS n FROM noetl.keychain").fetchone()["n"] == 0

    # idempotent: a repeat cancels nothing and writes nothing
    before = conn.execute("SELECT count(*) AS n FROM noetl.event").fetchone()["n"]
    assert conn.execute("SELECT * FROM noetl.cancel_executions(%s)", (parent,)).fetchall() == []
    assert conn.execute("SELECT * FROM noetl.cancel_executions(%s)", (child,)).fetchall() == []
    assert conn.execute("SELECT count(*) AS n FROM noetl.event").fetchone()["n"] == before


def test_cancel_without_cascade_and_of_unknown_or_finished_executions(
    conn: psycopg.Connection,
) -> None:
    _, parent = execution(conn)
    _, child = execution(conn, parent=parent)
    ids = conn.execute(
        "SELECT * FROM noetl.cancel_executions(%s, NULL, false, NULL)", (parent,)
    ).fetchall()
    assert [r["cancel_executions"] for r in ids] == [parent]
    (cancelled,) = events(conn, parent, "execution.cancelled")
    assert cancelled["meta"]["cascade"] is False
    assert cancelled["meta"]["reason"] == "User requested cancellation"
    assert cancelled["meta"]["cancelled_by"] == "api"
    assert (
        conn.execute(
            "SELECT status FROM noetl.execution WHERE execution_id = %s", (child,)
        ).fetchone()["status"]
        == "RUNNING"
    )

    assert conn.execute("SELECT * FROM noetl.cancel_executions(1)").fetchall() == []
    # an execution-terminal event decides even when the row was not saved terminal yet
    _, done = execution(conn)
    conn.execute(
        "SELECT * FROM noetl.append_events(%s)",
        (Jsonb([{"execution_id": str(done), "event_type": "playbook.completed"}]),),
    )
    assert conn.execute("SELECT * FROM noetl.cancel_executions(%s)", (done,)).fetchall() == []


def test_finalize_fails_the_execution_and_cancels_its_commands(conn: psycopg.Connection) -> None:
    _, execution_id = execution(conn)
    (cmd,) = issue(conn, execution_id, ["slow"])
    finalize = "SELECT noetl.finalize_execution(%s, %s) AS s"
    assert conn.execute(finalize, (execution_id, "gone")).fetchone()["s"] == "finalized"
    row = conn.execute(
        "SELECT * FROM noetl.execution WHERE execution_id = %s", (execution_id,)
    ).fetchone()
    assert (row["status"], row["error"]) == ("FAILED", "gone")
    types = [e["event_type"] for e in events(conn, execution_id)]
    assert types == ["command.issued", "command.cancelled", "playbook.failed"]
    (failed,) = events(conn, execution_id, "playbook.failed")
    assert failed["error"] == "gone"
    assert command_row(conn, execution_id, cmd["command_id"])["status"] == "CANCELLED"
    assert conn.execute(finalize, (execution_id, "again")).fetchone()["s"] == "already_completed"
    assert len(events(conn, execution_id)) == 3
    assert conn.execute(finalize, (1, None)).fetchone()["s"] == "not_found"


def test_find_stuck_executions(conn: psycopg.Connection) -> None:
    _, old = execution(conn)
    _, recent = execution(conn)
    _, old_done = execution(conn)
    _, old_terminal_event = execution(conn)
    conn.execute(
        "UPDATE noetl.execution SET start_time = now() - interval '10 minutes'"
        " WHERE execution_id = ANY (%s)",
        ([old, old_done, old_terminal_event],),
    )
    conn.execute(
        "UPDATE noetl.execution SET status = 'FAILED' WHERE execution_id = %s", (old_done,)
    )
    conn.execute(
        "SELECT * FROM noetl.append_events(%s)",
        (Jsonb([{"execution_id": str(old_terminal_event), "event_type": "playbook.failed"}]),),
    )
    found = conn.execute("SELECT * FROM noetl.find_stuck_executions(5)").fetchall()
    assert [r["find_stuck_executions"] for r in found] == [old]
    assert conn.execute("SELECT * FROM noetl.find_stuck_executions(60)").fetchall() == []


# ---------------------------------------------------------------- dashboard


def test_dashboard_stats_sum_the_read_models(conn: psycopg.Connection) -> None:
    empty = conn.execute("SELECT * FROM noetl.dashboard_stats()").fetchone()
    assert empty == {
        "total_executions": 0,
        "successful_executions": 0,
        "failed_executions": 0,
        "cancelled_executions": 0,
        "active_workflows": 0,
        "total_playbooks": 0,
        "as_of": None,
    }
    for path, kind in (("a", "playbook"), ("a", "playbook"), ("b", "agent"), ("c", "credential")):
        conn.execute("SELECT noetl.catalog_register(%s, %s, NULL, NULL, NULL, NULL)", (path, kind))
    conn.execute("SELECT noetl.catalog_register('gone', 'playbook', NULL, NULL, NULL, NULL)")
    conn.execute("SELECT noetl.catalog_archive('gone', NULL)")
    conn.execute(
        """INSERT INTO noetl.playbook_stats (catalog_id, day, runs, completed, failed, cancelled)
           VALUES (1, '2026-01-01', 10, 5, 2, 1), (2, '2026-01-02', 4, 1, 0, 0)"""
    )
    last_event = new_id()
    conn.execute(
        """INSERT INTO noetl.execution_summary (execution_id, catalog_id, tenant_id,
                  organization_id, day, status, started_at, first_event_id, last_event_id)
           VALUES (%s, 1, 'default', 'default', '2026-01-01', 'RUNNING', now(), %s, %s)""",
        (last_event - 5, last_event - 5, last_event),
    )
    stats = conn.execute(
        "SELECT *, as_of = noetl.snowflake_time(%s) AS as_of_ok FROM noetl.dashboard_stats()",
        (last_event,),
    ).fetchone()
    assert {k: v for k, v in stats.items() if k not in ("as_of", "as_of_ok")} == {
        "total_executions": 14,
        "successful_executions": 6,
        "failed_executions": 2,
        "cancelled_executions": 1,
        "active_workflows": 5,
        "total_playbooks": 2,
    }
    assert stats["as_of_ok"]
