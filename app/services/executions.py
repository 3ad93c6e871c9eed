"""Execution reads (api.md §7.3-§7.5): EventRows, the status derivation, listings.

Reusable by the SSE streams:

- `list_events_after(session, execution_id, after_event_id, limit) -> list[EventRow dict]`:
  the execution's events with `event_id > after_event_id`, oldest first, at most `limit`,
  each an EventRow of api.md §7.3 (redacted; `event_id` a JSON integer, other ids strings).
- `event_row(row)`: one EventRow from a row of the `events_after` query's shape.
- `TERMINAL_EVENT_TYPES`: the execution-terminal event types (api.md §7.4).

`session` is an `app.db.Session` (`async with state.db.session() as session`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

import engine
from app.db import Session
from app.errors import ApiError, problem
from app.fields import json_size
from app.redact import redact
from app.services.catalog import path_problem
from app.services.catalog_cache import CatalogEntry
from app.services.engine_runner import ID_LOW_WATER, EngineRunner, IdsExhausted, command_rows
from app.services.execution_metrics import ENGINE_DURATION
from core.settings import Settings
from core.timefmt import rfc3339, utcnow

log = logging.getLogger(__name__)
LIST_TIMEOUT_MS = 8000  # api.md §2: the executions list has its own statement timeout
TERMINAL_STATUSES = ("COMPLETED", "FAILED", "CANCELLED")

TERMINAL_EVENT_TYPES = {
    "playbook.completed": "COMPLETED",
    "workflow.completed": "COMPLETED",
    "playbook.failed": "FAILED",
    "workflow.failed": "FAILED",
    "execution.cancelled": "CANCELLED",
}


def _str_id(value: Any) -> str | None:
    return None if value is None else str(value)


def _time(value: Any) -> str | None:
    if value is None:
        return None
    return rfc3339(value) if isinstance(value, datetime) else str(value)


def event_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """An EventRow (api.md §7.3): redacted, `event_id` an integer, other ids strings."""
    created = _time(row["created_at"])
    duration = row.get("duration")
    return {
        "execution_id": str(row["execution_id"]),
        "event_id": int(row["event_id"]),
        "event_type": row["event_type"],
        "node_id": row.get("node_id"),
        "node_name": row.get("node_name"),
        "status": row["status"],
        "created_at": created,
        "timestamp": created,
        "context": redact(row.get("context")),
        "result": redact(row.get("result")),
        "error": redact(row.get("error")),
        "catalog_id": _str_id(row.get("catalog_id")),
        "parent_execution_id": _str_id(row.get("parent_execution_id")),
        "parent_event_id": _str_id(row.get("parent_event_id")),
        "duration": None if duration is None else float(duration),
    }


async def list_events_after(
    session: Session, execution_id: int, after_event_id: int, limit: int
) -> list[dict[str, Any]]:
    """EventRows of one execution with `event_id > after_event_id`, oldest first."""
    rows = await session.all(
        "events_after", execution_id=execution_id, after_event_id=after_event_id, limit=limit
    )
    return [event_row(r) for r in rows]


# ---------------------------------------------------------------------- status (§7.4)

INFERRED_TYPES = frozenset({"command.completed", "call.done", "step.exit", "batch.completed"})


def duration_human(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    total = int(max(0.0, seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    if total or not parts:
        parts.append(f"{total}s")
    return " ".join(parts)


@dataclass(frozen=True)
class Derived:
    """The one status derivation of api.md §7.4, over an `execution_get` row."""

    execution_id: int
    status: str
    inferred: bool
    start_time: datetime | None
    end_time: datetime | None
    error: str | None
    latest_type: str | None
    cancelled: bool
    row: Mapping[str, Any]

    @property
    def duration_seconds(self) -> float | None:
        if self.start_time is None:
            return None
        end = self.end_time or utcnow()
        return round(max(0.0, (end - self.start_time).total_seconds()), 3)

    def entry(self) -> dict[str, Any]:
        """ExecutionEntry (api.md §7.3)."""
        row = self.row
        seconds = self.duration_seconds
        return {
            "execution_id": str(self.execution_id),
            "catalog_id": _str_id(row.get("catalog_id")) or "",
            "path": row.get("path") or "unknown",
            "version": int(row.get("version") or 0),
            "status": self.status,
            "start_time": _time(self.start_time),
            "end_time": _time(self.end_time),
            "duration_seconds": seconds,
            "duration_human": duration_human(seconds),
            "progress": 0 if self.status == "RUNNING" else 100,
            "result": None,
            "error": redact(self.error),
            "parent_execution_id": _str_id(row.get("parent_execution_id")),
        }


def derive(row: Mapping[str, Any]) -> Derived | None:
    """None for an unknown execution (neither a row nor an event)."""
    if not row.get("has_row") and row.get("latest_id") is None:
        return None
    start = row.get("first_at") or row.get("row_start_time")
    inferred = False
    terminal = row.get("terminal_type")
    if terminal is not None:
        status, end, error = (
            TERMINAL_EVENT_TYPES[terminal],
            row["terminal_at"],
            row["terminal_error"],
        )
    elif (
        row.get("latest_status") == "COMPLETED"
        and row.get("latest_type") in INFERRED_TYPES
        and not row.get("has_open_commands")
    ):
        status, end, error, inferred = "COMPLETED", row["latest_at"], row.get("latest_error"), True
    else:
        status, end, error = "RUNNING", None, None
    if error is None:
        error = row.get("latest_error")
    return Derived(
        execution_id=int(row["execution_id"]),
        status=status,
        inferred=inferred,
        start_time=start,
        end_time=end,
        error=error,
        latest_type=row.get("latest_type"),
        cancelled=bool(row.get("cancelled")),
        row=row,
    )


async def get_derived(session: Session, execution_id: int) -> Derived | None:
    """The derived status of one execution (None when unknown); for the SSE `end` frame too."""
    row = await session.one("execution_get", execution_id=execution_id)
    return derive(row) if row is not None else None


def truncate_value(value: Any, max_bytes: int) -> Any:
    """api.md §7.5: a value above the limit becomes a preview (5 items per level, 3 levels)."""
    size = json_size(value)
    if size <= max_bytes:
        return value
    return {"_truncated": True, "_original_size_bytes": size, "_preview": _preview(value, 3)}


def _preview(value: Any, depth: int) -> Any:
    if isinstance(value, dict):
        if depth <= 0:
            return "…"
        return {k: _preview(v, depth - 1) for k, v in list(value.items())[:5]}
    if isinstance(value, list):
        if depth <= 0:
            return "…"
        return [_preview(v, depth - 1) for v in value[:5]]
    if isinstance(value, str) and len(value) > 256:
        return value[:256] + "…"
    return value


# ---------------------------------------------------------------------- the service


@dataclass(frozen=True)
class ExecuteRequest:
    """A validated §7.2 body."""

    path: str | None
    catalog_id: int | None
    version: int | None
    resource_kind: str | None
    workload: dict[str, Any]
    parent_execution_id: int | None
    execution_pool: str | None
    trace: dict[str, Any] | None
    dedup_key: str | None
    dedup_window: int


@dataclass(frozen=True)
class Started:
    execution_id: int
    status: str  # started | duplicate
    commands_generated: int


EXECUTABLE_KINDS = ("playbook", "agent")


class ExecutionService:
    def __init__(self, runner: EngineRunner, settings: Settings) -> None:
        self.runner = runner
        self.db = runner.db
        self.settings = settings

    # ------------------------------------------------------------------ execute (§7.2)
    async def _entry(self, request: ExecuteRequest) -> CatalogEntry:
        shown = str(request.catalog_id) if request.catalog_id is not None else request.path
        entry = None
        if request.catalog_id is not None or path_problem(request.path or "") is None:
            entry = await self.runner.catalog.lookup(
                catalog_id=request.catalog_id, path=request.path, version=request.version
            )
        if entry is not None and entry.archived_at is not None:
            entry = None  # archived entries keep running executions, but start none
        if entry is not None and request.resource_kind and entry.kind != request.resource_kind:
            entry = None
        if entry is None:
            raise ApiError(
                404, "catalog_entry_not_found", f"Executable catalog entry not found: {shown}"
            )
        if entry.kind not in EXECUTABLE_KINDS:
            raise ApiError(422, "not_executable", f"Catalog kind '{entry.kind}' is not executable")
        return entry

    async def execute(self, request: ExecuteRequest) -> Started:
        entry = await self._entry(request)
        runner = self.runner
        playbook = runner.playbook(entry)
        pool = engine.choose_pool(
            request.execution_pool, playbook, entry.path, self.settings.default_pool
        )
        async with self.db.session() as session:
            for attempt in range(4):
                await runner.ids.ensure(session, ID_LOW_WATER * (4**attempt))
                execution_id = runner.ids.take()
                ref = engine.ExecutionRef(
                    execution_id=execution_id,
                    catalog_id=entry.catalog_id,
                    path=entry.path,
                    version=entry.version,
                    pool=pool,
                    parent_execution_id=request.parent_execution_id,
                    trace=request.trace,
                )
                started = time.perf_counter()
                try:
                    decision = engine.start(
                        playbook,
                        ref,
                        request.workload,
                        ids=runner.ids.take,
                        now=utcnow(),
                        limits=runner.limits,
                    )
                except IdsExhausted:
                    continue
                finally:
                    ENGINE_DURATION.observe(time.perf_counter() - started)
                break
            else:  # pragma: no cover - needs a pass issuing thousands of commands
                raise ApiError(
                    503, "engine_busy", "could not draw ids", headers={"Retry-After": "1"}
                )
            result = await session.value(
                "execute_start",
                execution_id=execution_id,
                catalog_id=entry.catalog_id,
                pool=pool,
                parent_execution_id=request.parent_execution_id,
                dedup_key=request.dedup_key,
                dedup_window_s=request.dedup_window,
                events=Jsonb(decision.events),
                commands=Jsonb(command_rows(decision)),
                state=Jsonb(decision.state.to_json()),
                status=decision.status,
                error=decision.error,
            )
        outcome = result["outcome"]
        if outcome == "parent_not_found":
            raise ApiError(
                422,
                "parent_not_found",
                [problem(["body", "parent_execution_id"], "unknown execution", "parent_not_found")],
            )
        if outcome == "duplicate":
            return Started(int(result["execution_id"]), "duplicate", 0)
        decision.commit([int(i) for i in result["ids"]])
        runner.count_decision(decision)
        runner.keep_state(execution_id, decision.state, request.trace)
        log.info(
            "execution started",
            extra={"execution_id": str(execution_id), "path": entry.path, "pool": pool},
        )
        return Started(execution_id, "started", len(decision.commands))

    # ------------------------------------------------------------------ reads (§7.1)
    async def derived(self, execution_id: int) -> Derived:
        async with self.db.session() as session:
            found = await get_derived(session, execution_id)
        if found is None:
            raise not_found_execution(execution_id)
        return found

    async def listing(self, page: int, page_size: int) -> list[dict[str, Any]]:
        async with self.db.transaction() as session:
            await session.value("executions_list_timeout", timeout_ms=LIST_TIMEOUT_MS)
            rows = await session.all(
                "executions_list", limit=page_size, offset=(page - 1) * page_size
            )
        out = []
        for r in rows:
            start, end = r["started_at"], r["ended_at"]
            status = r["status"] if r["status"] in TERMINAL_STATUSES else "RUNNING"
            seconds = None
            if start is not None:
                seconds = round(max(0.0, ((end or utcnow()) - start).total_seconds()), 3)
            out.append(
                {
                    "execution_id": str(r["execution_id"]),
                    "catalog_id": _str_id(r["catalog_id"]) or "",
                    "path": r["path"] or "unknown",
                    "version": int(r["version"] or 0),
                    "status": status,
                    "start_time": _time(start),
                    "end_time": _time(end) if status != "RUNNING" else None,
                    "duration_seconds": seconds,
                    "duration_human": duration_human(seconds),
                    "progress": 0 if status == "RUNNING" else 100,
                    "result": None,
                    "error": redact(r["error"]),
                    "parent_execution_id": _str_id(r["parent_execution_id"]),
                }
            )
        return out

    async def events_page(
        self,
        execution_id: int,
        *,
        page: int,
        page_size: int,
        since_event_id: int | None,
        event_type: str | None,
    ) -> tuple[Derived, list[dict[str, Any]], dict[str, Any]]:
        async with self.db.session() as session:
            found = await get_derived(session, execution_id)
            if found is None:
                raise not_found_execution(execution_id)
            filters = {
                "execution_id": execution_id,
                "since_event_id": since_event_id,
                "event_type": event_type,
            }
            total = int(await session.value("execution_events_count", **filters) or 0)
            rows = await session.all(
                "execution_events_page", **filters, limit=page_size, offset=(page - 1) * page_size
            )
        pages = max(1, -(-total // page_size))
        pagination = {
            "page": page,
            "page_size": page_size,
            "total_events": total,
            "total_pages": pages,
            "has_next": page < pages,
            "has_prev": page > 1,
        }
        return found, [event_row(r) for r in rows], pagination

    async def status(self, execution_id: int, full: bool) -> dict[str, Any]:
        async with self.db.session() as session:
            found = await get_derived(session, execution_id)
            if found is None:
                raise not_found_execution(execution_id)
            stored = await session.one("execution_state_read", execution_id=execution_id)
        body: dict[str, Any] = {"execution_id": str(execution_id), "status": found.status}
        if stored is not None and stored["state"]:
            state = engine.State.from_json(stored["state"])
            engine.fold(state, stored["events"] or [])
            described = engine.describe(None, state)
            source = None
        else:
            described = {
                "current_step": found.row.get("latest_node"),
                "completed_steps": [],
                "variables": {},
            }
            source = "event_log_fallback"
        variables = redact(described["variables"])
        if not full:
            limit = self.settings.status_value_max_bytes
            variables = {k: truncate_value(v, limit) for k, v in variables.items()}
        seconds = found.duration_seconds
        body.update(
            {
                "current_step": described["current_step"],
                "completed_steps": described["completed_steps"],
                "failed": found.status == "FAILED",
                "completed": found.status in ("COMPLETED", "CANCELLED"),
                "completion_inferred": found.inferred,
                "variables": variables,
                "start_time": _time(found.start_time),
                "end_time": _time(found.end_time),
                "duration_seconds": seconds,
                "duration_human": duration_human(seconds),
            }
        )
        if source is not None:
            body["source"] = source
        return body

    # ------------------------------------------------------------------ changes (§7.6)
    async def cancel(self, execution_id: int, reason: str, cascade: bool) -> dict[str, Any]:
        async with self.db.transaction() as session:
            rows = await session.all(
                "cancel_executions",
                execution_id=execution_id,
                reason=reason,
                cascade=cascade,
                cancelled_by="api",
            )
            found = None if rows else await get_derived(session, execution_id)
        if rows:
            ids = [str(r["execution_id"]) for r in rows]
            log.info(
                "executions cancelled",
                extra={"execution_id": str(execution_id), "cancelled": ids, "cascade": cascade},
            )
            return {
                "status": "cancelled",
                "execution_id": str(execution_id),
                "cancelled_executions": ids,
                "message": f"Cancelled {len(ids)} execution(s)",
            }
        if found is None:
            raise not_found_execution(execution_id)
        return {
            "status": "already_completed",
            "execution_id": str(execution_id),
            "cancelled_executions": [],
            "message": f"Execution {execution_id} is already {found.status}",
        }

    async def finalize(self, execution_id: int, reason: str) -> dict[str, Any]:
        async with self.db.transaction() as session:
            outcome = await session.value(
                "finalize_execution", execution_id=execution_id, reason=reason
            )
        messages = {
            "finalized": f"Execution {execution_id} finalized: {reason}",
            "already_completed": f"Execution {execution_id} is already finished",
            "not_found": f"Execution {execution_id} not found",
        }
        return {"status": outcome, "execution_id": str(execution_id), "message": messages[outcome]}

    async def cleanup(self, older_than_minutes: int, dry_run: bool) -> dict[str, Any]:
        async with self.db.session() as session:
            rows = await session.all("find_stuck_executions", older_than_minutes=older_than_minutes)
        stuck = [int(r["execution_id"]) for r in rows]
        if dry_run:
            return {
                "cancelled_count": len(stuck),
                "execution_ids": [str(i) for i in stuck],
                "message": f"{len(stuck)} stuck execution(s) would be cancelled (dry run)",
            }
        done = []
        for execution_id in stuck:
            async with self.db.transaction() as session:
                cancelled = await session.all(
                    "cancel_executions",
                    execution_id=execution_id,
                    reason="Stuck execution cleanup",
                    cascade=False,
                    cancelled_by="cleanup",
                )
            if cancelled:
                done.append(str(execution_id))
        return {
            "cancelled_count": len(done),
            "execution_ids": done,
            "message": f"Cancelled {len(done)} stuck execution(s)",
        }

    async def dashboard(self) -> dict[str, Any]:
        async with self.db.session() as session:
            row = await session.one("dashboard_stats")
        assert row is not None
        stats = {
            "total_executions": int(row["total_executions"]),
            "successful_executions": int(row["successful_executions"]),
            "failed_executions": int(row["failed_executions"]),
            "cancelled_executions": int(row["cancelled_executions"]),
            "active_workflows": int(row["active_workflows"]),
            "total_playbooks": int(row["total_playbooks"]),
        }
        return {
            "status": "ok",
            "stats": stats,
            "total_executions": stats["total_executions"],
            "successful_executions": stats["successful_executions"],
            "failed_executions": stats["failed_executions"],
            "total_playbooks": stats["total_playbooks"],
            "active_workflows": stats["active_workflows"],
            "as_of": _time(row["as_of"]),
        }


def not_found_execution(execution_id: int) -> ApiError:
    return ApiError(404, "execution_not_found", f"Execution {execution_id} not found")
