"""Builders shared by the command and claim tests: an execution, issued commands, workers."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from core.ids import new_id

LEASE_S = 120.0
STALE_S = 30.0
HARD_TIMEOUT_S = 1800.0
CLAIM = "SELECT * FROM noetl.claim_command(%s, %s, %s, %s, %s, %s)"


def execution(
    conn: psycopg.Connection, pool: str = "default", parent: int | None = None
) -> tuple[int, int]:
    """A catalog entry and a RUNNING execution created as the execute route does."""
    catalog_id = conn.execute(
        "SELECT catalog_id"
        " FROM noetl.catalog_register('t/commands', 'playbook', NULL, NULL, NULL, NULL)"
    ).fetchone()["catalog_id"]
    execution_id = new_id()
    created = conn.execute(
        "SELECT noetl.start_execution(%s, %s, %s, %s) AS created",
        (execution_id, catalog_id, pool, parent),
    ).fetchone()["created"]
    assert created is True
    return catalog_id, execution_id


def issue(
    conn: psycopg.Connection,
    execution_id: int,
    steps: list[str],
    meta: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One command per step: its command.issued event appended, then the command row, the
    way the engine's decision is stored. Returns {command_id, event_id, step, context}."""
    commands = []
    for step in steps:
        command_id = new_id()
        context = {"tool_config": {"kind": "python", "code": f"# {step}"}, "args": {}}
        commands.append(
            {
                "command_id": str(command_id),
                "step": step,
                "tool_kind": "python",
                "context": context,
                "meta": {"command_id": str(command_id), "step": step, **(meta or {})},
            }
        )
    events = [
        {
            "execution_id": str(execution_id),
            "event_type": "command.issued",
            "node_name": c["step"],
            "node_type": "python",
            "status": "PENDING",
            "context": c["context"],
            "meta": {**c["meta"], "source": "engine"},
        }
        for c in commands
    ]
    rows = conn.execute(
        "SELECT * FROM noetl.append_events(%s) ORDER BY ord", (Jsonb(events),)
    ).fetchall()
    for c, row in zip(commands, rows, strict=True):
        c["event_id"] = row["event_id"]
        c["execution_id"] = str(execution_id)
    inserted = conn.execute("SELECT noetl.issue_commands(%s) AS n", (Jsonb(commands),)).fetchone()[
        "n"
    ]
    assert inserted == len(commands)
    return [
        {
            "command_id": int(c["command_id"]),
            "event_id": c["event_id"],
            "step": c["step"],
            "context": c["context"],
        }
        for c in commands
    ]


def worker(
    conn: psycopg.Connection, name: str, status: str = "ready", heartbeat_age_s: float = 0
) -> None:
    """A worker_pool registry row, its heartbeat `heartbeat_age_s` seconds old."""
    conn.execute(
        """INSERT INTO noetl.runtime (kind, name, status, heartbeat)
           VALUES ('worker_pool', %s, %s, now() - make_interval(secs => %s))
           ON CONFLICT (kind, name) DO UPDATE SET status = EXCLUDED.status,
                                                  heartbeat = EXCLUDED.heartbeat""",
        (name, status, heartbeat_age_s),
    )


def claim(
    conn: psycopg.Connection,
    event_id: int,
    worker_id: str,
    *,
    lease_s: float = LEASE_S,
    stale_s: float = STALE_S,
    hard_timeout_s: float = HARD_TIMEOUT_S,
    locality: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return conn.execute(
        CLAIM,
        (
            event_id,
            worker_id,
            lease_s,
            stale_s,
            hard_timeout_s,
            None if locality is None else Jsonb(locality),
        ),
    ).fetchone()


def age_claim(
    conn: psycopg.Connection,
    execution_id: int,
    command_id: int,
    claimed_s: float,
    heartbeat_s: float | None = None,
) -> None:
    """Move a claim `claimed_s` seconds into the past (and its last heartbeat, if given)."""
    conn.execute(
        """UPDATE noetl.command
              SET claimed_at = now() - make_interval(secs => %s),
                  heartbeat_at = CASE WHEN %s::float8 IS NULL THEN NULL
                                      ELSE now() - make_interval(secs => %s::float8) END
            WHERE execution_id = %s AND command_id = %s""",
        (claimed_s, heartbeat_s, heartbeat_s, execution_id, command_id),
    )


def command_row(conn: psycopg.Connection, execution_id: int, command_id: int) -> dict[str, Any]:
    return conn.execute(
        "SELECT * FROM noetl.command WHERE execution_id = %s AND command_id = %s",
        (execution_id, command_id),
    ).fetchone()


def events(
    conn: psycopg.Connection, execution_id: int, event_type: str | None = None
) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT * FROM noetl.event
            WHERE execution_id = %s AND (%s::text IS NULL OR event_type = %s)
            ORDER BY event_id""",
        (execution_id, event_type, event_type),
    ).fetchall()
