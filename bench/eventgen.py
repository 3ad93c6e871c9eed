"""Synthetic event streams for the projector's tests and benchmark.

`event_stream(n, seed)` returns canonical envelopes (envelope.md §2.1) of many executions,
each with ids that grow in append order and every event type of §2.4: starts, commands with
claims, reclaims, heartbeats, call results, step events, loops, and every terminal outcome
(some executions stay open, some are sub-executions). Deterministic for a seed.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from core.ids import EPOCH_MS, make_id
from core.shard import shard_for
from core.timefmt import rfc3339

START_TYPES = (
    "playbook.initialized",
    "workflow.initialized",
    "playbook.started",
    "playbook_started",
)
TERMINALS = (
    ("playbook.completed", "COMPLETED"),
    ("workflow.completed", "COMPLETED"),
    ("playbook.failed", "FAILED"),
    ("workflow.failed", "FAILED"),
    ("execution.cancelled", "CANCELLED"),
)
TOOLS = ("http", "python", "postgres", "noop", "playbook")


class _Ids:
    """Snowflake-shaped ids minted at a chosen moment, unique in the stream, and increasing
    along one execution when `after` is its last id."""

    def __init__(self, node: int) -> None:
        self.node = node
        self.seq = 0
        self.used: set[int] = set()

    def at(self, moment: datetime, after: int = 0) -> int:
        ms = int(moment.timestamp() * 1000)
        self.seq = (self.seq + 1) % 4096
        candidate = max(make_id(ms, self.node, self.seq), after + 1)
        while candidate in self.used:
            candidate += 1
        self.used.add(candidate)
        return candidate


def event_stream(
    count: int,
    seed: int = 0,
    *,
    catalogs: int = 5,
    days: int = 3,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """About `count` envelopes (whole executions, so it stops at the first one past `count`)."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    base = now - timedelta(days=days - 1)
    ids = _Ids(node=64 + seed % 900)
    catalog_ids = [make_id(EPOCH_MS + 10_000 + i, 1, i) for i in range(catalogs)]
    events: list[dict[str, Any]] = []
    parents: list[int] = []
    while len(events) < count:
        # executions spread over `days` days, so playbook_stats gets several rows per catalog
        day = rng.randrange(days)
        started = base + timedelta(days=day)
        started = min(started, now) - timedelta(seconds=rng.randrange(0, 3600))
        execution_id = ids.at(started)
        parent = rng.choice(parents) if parents and rng.random() < 0.15 else None
        parents.append(execution_id)
        events.extend(_execution(rng, ids, execution_id, rng.choice(catalog_ids), parent, started))
    return events


def _execution(rng, ids, execution_id, catalog_id, parent, started) -> list[dict[str, Any]]:
    clock = [started]
    out: list[dict[str, Any]] = []
    prev: list[int | None] = [None]

    def emit(event_type: str, status: str, **fields: Any) -> dict[str, Any]:
        # producers' clocks are not the ids' clock: created_at jitters around the id time
        clock[0] += timedelta(milliseconds=rng.randrange(1, 4000))
        event_id = ids.at(clock[0], prev[0] or execution_id)
        created = clock[0] + timedelta(milliseconds=rng.randrange(-500, 500))
        meta = fields.pop("meta", {})
        envelope = {
            "event_id": str(event_id),
            "execution_id": str(execution_id),
            "catalog_id": str(catalog_id),
            "parent_event_id": fields.pop("parent_event_id", None),
            "parent_execution_id": str(parent) if parent else None,
            "prev_event_id": str(prev[0]) if prev[0] else None,
            "event_type": event_type,
            "node_id": fields.get("node_name"),
            "node_name": None,
            "node_type": None,
            "status": status,
            "context": None,
            "result": None,
            "meta": meta,
            "error": None,
            "duration": None,
            "worker_id": None,
            "created_at": rfc3339(created),
            "tenant_id": "default",
            "organization_id": "default",
            "payload_ref": None,
        }
        envelope.update(fields)
        prev[0] = event_id
        out.append(envelope)
        return envelope

    emit(rng.choice(START_TYPES), "STARTED", context={"workload": {"n": rng.randrange(100)}})
    steps = rng.randrange(1, 6)
    open_run = rng.random() < 0.15
    for step in range(steps):
        name = f"step_{step}"
        emit("step.enter", "ENTERED", node_name=name)
        command_id = ids.at(clock[0])
        cmd = {"command_id": str(command_id)}
        issued = emit(
            "command.issued",
            "PENDING",
            node_name=name,
            node_type=rng.choice(TOOLS),
            meta=dict(cmd),
            context={"tool": "x", "args": {"i": step}},
        )
        issued_id = issued["event_id"]
        claims = 2 if rng.random() < 0.1 else 1
        for attempt in range(1, claims + 1):
            worker = f"worker-{rng.randrange(8)}"
            meta = {**cmd, "worker_id": worker, "attempts": attempt}
            if attempt > 1:
                meta.update(reclaimed=True, reclaimed_reason="worker_heartbeat_stale")
            emit(
                "command.claimed",
                "RUNNING",
                node_name=name,
                worker_id=worker,
                meta=meta,
                parent_event_id=issued_id,
            )
            emit("command.started", "STARTED", node_name=name, meta=dict(cmd), worker_id=worker)
            for _ in range(rng.randrange(3)):
                emit("command.heartbeat", "RUNNING", node_name=name, meta=dict(cmd))
        if open_run and step == steps - 1 and rng.random() < 0.5:
            return out  # still running: no result yet
        roll = rng.random()
        if roll < 0.75:
            emit(
                "call.done",
                "COMPLETED",
                node_name=name,
                meta=dict(cmd),
                result={"status": "COMPLETED", "context": {"rows": rng.randrange(10)}},
                duration=float(rng.randrange(5, 5000)),
            )
            emit("step.exit", "COMPLETED", node_name=name, meta=dict(cmd))
            emit("command.completed", "COMPLETED", node_name=name, meta=dict(cmd))
        elif roll < 0.85:
            emit("call.error", "FAILED", node_name=name, meta=dict(cmd), error="boom " * 3)
            emit("command.failed", "FAILED", node_name=name, meta=dict(cmd), error="boom")
        elif roll < 0.92:
            emit(
                "call.done",
                rng.choice(("FAILED", "ERROR")),
                node_name=name,
                meta=dict(cmd),
                error="bad",
            )
        else:
            emit("command.cancelled", "CANCELLED", node_name=name, meta={**cmd, "reason": "user"})
        if rng.random() < 0.3:
            emit("loop.done", "COMPLETED", node_name=name)
    if open_run:
        return out
    event_type, status = rng.choice(TERMINALS)
    emit(event_type, status, error="failed here" if status == "FAILED" else None)
    if rng.random() < 0.05:
        # a second terminal: the lowest id must win whatever the order
        emit("execution.cancelled", "CANCELLED")
    return out


def subject(envelope: dict[str, Any], shard_count: int) -> str:
    execution_id = int(envelope["execution_id"])
    return f"noetl.events.{shard_for(execution_id, shard_count)}.{execution_id}"
