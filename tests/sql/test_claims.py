"""claim_command (envelope.md §4.5; worker-protocol.md §5): races, idempotency, every reclaim
row, terminal and unknown commands."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.sql.commands_helpers import (
    CLAIM,
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

PAYLOAD_KEYS = (
    "execution_id",
    "command_id",
    "event_id",
    "catalog_id",
    "step_name",
    "tool_kind",
    "pool",
    "context",
    "meta",
)


def test_fifty_concurrent_claims_grant_exactly_one(db_url: str, conn: psycopg.Connection) -> None:
    _, execution_id = execution(conn)
    (cmd,) = issue(conn, execution_id, ["start"])
    threads = 50
    for i in range(threads):
        worker(conn, f"w{i}")
    barrier = threading.Barrier(threads)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
                barrier.wait(timeout=60)
                row = claim(c, cmd["event_id"], f"w{i}")
                with lock:
                    results.append({**row, "claimant": f"w{i}"})
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == threads

    winners = [r for r in results if r["outcome"] == "claimed"]
    assert len(winners) == 1
    winner = winners[0]["claimant"]
    losers = [r for r in results if r["outcome"] != "claimed"]
    assert {r["outcome"] for r in losers} == {"active_claim"}
    assert {r["holder"] for r in losers} == {winner}
    assert all(r["claim_event_id"] is None for r in losers)

    claimed = events(conn, execution_id, "command.claimed")
    assert len(claimed) == 1
    assert claimed[0]["event_id"] == winners[0]["claim_event_id"]
    assert claimed[0]["worker_id"] == winner
    row = command_row(conn, execution_id, cmd["command_id"])
    assert (row["status"], row["worker_id"], row["attempts"]) == ("CLAIMED", winner, 1)


def test_claim_writes_command_claimed_and_returns_the_payload(conn: psycopg.Connection) -> None:
    catalog_id, execution_id = execution(conn, pool="gpu")
    (cmd,) = issue(conn, execution_id, ["fetch"], meta={"iteration_index": 3})
    worker(conn, "w1")
    row = claim(conn, cmd["event_id"], "w1", locality={"zone": "a"})

    assert row["outcome"] == "claimed"
    assert row["holder"] == "w1"
    assert row["reason"] is None
    assert row["reclaimed_from_worker"] is None and row["reclaimed_reason"] is None
    assert (row["execution_id"], row["command_id"], row["event_id"]) == (
        execution_id,
        cmd["command_id"],
        cmd["event_id"],
    )
    assert (row["step_name"], row["tool_kind"], row["pool"], row["catalog_id"]) == (
        "fetch",
        "python",
        "gpu",
        catalog_id,
    )
    assert row["context"] == cmd["context"]
    assert row["meta"] == {
        "command_id": str(cmd["command_id"]),
        "step": "fetch",
        "tool_kind": "python",
        "pool": "gpu",
        "attempts": 1,
        "lease_seconds": LEASE_S,
        "execution_id": str(execution_id),
        "catalog_id": str(catalog_id),
        "iteration_index": 3,
    }

    (claimed,) = events(conn, execution_id, "command.claimed")
    assert claimed["event_id"] == row["claim_event_id"]
    assert claimed["parent_event_id"] == cmd["event_id"]
    assert claimed["command_id"] == cmd["command_id"]
    assert (claimed["status"], claimed["worker_id"], claimed["node_name"]) == (
        "RUNNING",
        "w1",
        "fetch",
    )
    assert claimed["meta"] == {
        "command_id": str(cmd["command_id"]),
        "worker_id": "w1",
        "attempts": 1,
        "actionable": False,
        "informative": True,
        "locality": {"zone": "a"},
    }
    stored = command_row(conn, execution_id, cmd["command_id"])
    assert stored["status"] == "CLAIMED"
    assert stored["attempts"] == 1
    assert stored["claimed_at"] is not None
    assert stored["latest_event_id"] == row["claim_event_id"]


def test_same_worker_claiming_again_gets_the_same_payload_and_no_event(
    conn: psycopg.Connection,
) -> None:
    _, execution_id = execution(conn)
    (cmd,) = issue(conn, execution_id, ["start"])
    worker(conn, "w1")
    first = claim(conn, cmd["event_id"], "w1")
    again = claim(conn, cmd["event_id"], "w1")
    assert first["outcome"] == again["outcome"] == "claimed"
    assert first["claim_event_id"] is not None
    assert again["claim_event_id"] is None
    assert {k: again[k] for k in PAYLOAD_KEYS} == {k: first[k] for k in PAYLOAD_KEYS}
    assert again["attempts"] == 1
    assert len(events(conn, execution_id, "command.claimed")) == 1

    # also once the row is RUNNING (command.started applied)
    conn.execute(
        "UPDATE noetl.command SET status = 'RUNNING' WHERE execution_id = %s", (execution_id,)
    )
    third = claim(conn, cmd["event_id"], "w1")
    assert third["outcome"] == "claimed" and third["claim_event_id"] is None
    assert third["meta"] == first["meta"]
    assert len(events(conn, execution_id, "command.claimed")) == 1


# (holder row: status or None for no row, heartbeat age s), claim age s, heartbeat_at age s,
# expected outcome, expected reclaim reason
CASES = {
    # row 5: deregistered holder, taken at once even inside the lease
    "offline": (("offline", 0), 5, None, "claimed", "worker_offline"),
    # row 6: the lease protects even a holder without a registry row
    "lease_active": ((None, 0), 5, None, "active_claim", None),
    "lease_kept_by_heartbeat": ((None, 0), 600, 10, "active_claim", None),
    # row 7
    "no_registry_row": ((None, 0), 200, None, "claimed", "worker_inactive"),
    "registry_row_not_ready_nor_busy": (("draining", 0), 200, None, "claimed", "worker_inactive"),
    # row 8
    "stale_heartbeat": (("ready", 60), 200, None, "claimed", "worker_heartbeat_stale"),
    # row 9
    "hard_timeout": (("busy", 1), 1900, 150, "claimed", "hard_timeout"),
    # row 10: healthy holder, lease over, below the hard timeout
    "healthy_holder": (("busy", 1), 200, 130, "active_claim", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_claim_of_another_workers_command(conn: psycopg.Connection, case: str) -> None:
    (holder_status, holder_age), claimed_s, heartbeat_s, outcome, reason = CASES[case]
    _, execution_id = execution(conn)
    (cmd,) = issue(conn, execution_id, ["start"])
    worker(conn, "w1")
    assert claim(conn, cmd["event_id"], "w1")["outcome"] == "claimed"
    if holder_status is None:
        conn.execute("DELETE FROM noetl.runtime WHERE name = 'w1'")
    else:
        worker(conn, "w1", holder_status, holder_age)
    age_claim(conn, execution_id, cmd["command_id"], claimed_s, heartbeat_s)
    worker(conn, "w2")

    row = claim(conn, cmd["event_id"], "w2")
    assert row["outcome"] == outcome
    stored = command_row(conn, execution_id, cmd["command_id"])
    claimed = events(conn, execution_id, "command.claimed")
    if outcome == "active_claim":
        assert row["holder"] == "w1"
        assert row["claim_event_id"] is None
        assert len(claimed) == 1
        assert (stored["worker_id"], stored["attempts"]) == ("w1", 1)
        return

    assert row["holder"] == "w2"
    assert (row["reclaimed_from_worker"], row["reclaimed_reason"]) == ("w1", reason)
    assert row["attempts"] == 2 and row["meta"]["attempts"] == 2
    assert len(claimed) == 2
    assert claimed[-1]["event_id"] == row["claim_event_id"]
    assert claimed[-1]["worker_id"] == "w2"
    assert claimed[-1]["meta"] == {
        "command_id": str(cmd["command_id"]),
        "worker_id": "w2",
        "attempts": 2,
        "actionable": False,
        "informative": True,
        "reclaimed": True,
        "reclaimed_from_worker": "w1",
        "reclaimed_reason": reason,
    }
    assert (stored["status"], stored["worker_id"], stored["attempts"]) == ("CLAIMED", "w2", 2)
    assert stored["heartbeat_at"] is None
    fresh = conn.execute(
        "SELECT %s::timestamptz > now() - interval '1 minute' AS fresh", (stored["claimed_at"],)
    ).fetchone()
    assert fresh["fresh"]


@pytest.mark.parametrize(
    ("command_status", "execution_status", "reason"),
    [
        ("COMPLETED", "RUNNING", "command_completed"),
        ("FAILED", "RUNNING", "command_failed"),
        ("CANCELLED", "RUNNING", "command_cancelled"),
        ("PENDING", "COMPLETED", "execution_completed"),
        ("CLAIMED", "FAILED", "execution_failed"),
        ("PENDING", "CANCELLED", "execution_cancelled"),
    ],
)
def test_terminal_command_or_execution_is_already_terminal(
    conn: psycopg.Connection, command_status: str, execution_status: str, reason: str
) -> None:
    _, execution_id = execution(conn)
    (cmd,) = issue(conn, execution_id, ["start"])
    conn.execute(
        "UPDATE noetl.command SET status = %s, worker_id = 'w1', claimed_at = now()"
        " WHERE execution_id = %s",
        (command_status, execution_id),
    )
    conn.execute(
        "UPDATE noetl.execution SET status = %s WHERE execution_id = %s",
        (execution_status, execution_id),
    )
    row = claim(conn, cmd["event_id"], "w2")
    assert (row["outcome"], row["reason"], row["claim_event_id"]) == (
        "already_terminal",
        reason,
        None,
    )
    assert events(conn, execution_id, "command.claimed") == []
    stored = command_row(conn, execution_id, cmd["command_id"])
    assert (stored["status"], stored["worker_id"], stored["attempts"]) == (
        command_status,
        "w1",
        0,
    )


def test_unknown_command_is_not_found(conn: psycopg.Connection) -> None:
    row = conn.execute(CLAIM, (123456789, "w1", LEASE_S, STALE_S, HARD_TIMEOUT_S, None)).fetchall()
    assert len(row) == 1
    assert row[0]["outcome"] == "not_found"
    assert all(value is None for key, value in row[0].items() if key != "outcome")


def test_get_command_returns_the_claim_payload_without_claiming(conn: psycopg.Connection) -> None:
    _, execution_id = execution(conn)
    (cmd,) = issue(conn, execution_id, ["start"])
    got = conn.execute(
        "SELECT * FROM noetl.get_command(%s, %s)", (cmd["event_id"], LEASE_S)
    ).fetchone()
    assert got["status"] == "PENDING" and got["attempts"] == 0
    assert events(conn, execution_id, "command.claimed") == []
    worker(conn, "w1")
    claimed = claim(conn, cmd["event_id"], "w1")
    after = conn.execute(
        "SELECT * FROM noetl.get_command(%s, %s)", (cmd["event_id"], LEASE_S)
    ).fetchone()
    assert {k: after[k] for k in PAYLOAD_KEYS} == {k: claimed[k] for k in PAYLOAD_KEYS}
    assert conn.execute("SELECT * FROM noetl.get_command(1, 120)").fetchall() == []
