"""Commands: the claim with its lease and reclaim policy, and the command read (api.md §8.3;
worker-protocol.md §5). `claim_command` decides everything in one SQL call and transaction;
this module maps its outcome to HTTP."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from app.db import Database
from app.errors import ApiError
from app.redact import redact
from app.services.execution_metrics import CLAIMS, EVENTS_APPENDED
from core.settings import Settings
from core.timefmt import rfc3339

CLAIM_ACQUIRE_SECONDS = 0.25  # api.md §2: the claim waits at most this long for a connection


def _body(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": int(row["event_id"]),
        "execution_id": int(row["execution_id"]),
        "node_id": row["step_name"],
        "node_name": row["step_name"],
        "action": row["tool_kind"],
        "context": row["context"],
        "meta": row["meta"],
    }


class CommandService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    async def get(self, event_id: int) -> dict[str, Any]:
        async with self.db.session() as s:
            row = await s.one(
                "get_command", event_id=event_id, lease_s=self.settings.command_claim_lease_seconds
            )
        if row is None:
            raise ApiError(404, "command_not_found", f"Command {event_id} not found")
        body = _body(row)
        body["context"] = redact(body["context"])
        body["meta"] = redact(body["meta"])
        return body

    async def claim(
        self, event_id: int, worker_id: str, locality: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """200 body, or ApiError 404 / 409 already_terminal / 409 active_claim."""
        s = self.settings
        async with self.db.session(timeout=CLAIM_ACQUIRE_SECONDS) as session:
            row = await session.one(
                "claim_command",
                event_id=event_id,
                worker_id=worker_id,
                lease_s=s.command_claim_lease_seconds,
                stale_s=s.command_worker_heartbeat_stale_seconds,
                hard_timeout_s=s.command_claim_hard_timeout_seconds,
                locality=Jsonb(locality) if locality is not None else None,
            )
        assert row is not None  # claim_command always returns one row
        outcome = row["outcome"]
        CLAIMS.labels(outcome=outcome).inc()
        if outcome == "not_found":
            raise ApiError(404, "command_not_found", f"Command {event_id} not found")
        if outcome == "already_terminal":
            reason = row["reason"]
            what = "Execution" if reason.startswith("execution_") else "Command"
            raise ApiError(
                409,
                "already_terminal",
                {
                    "code": "already_terminal",
                    "reason": reason,
                    "message": f"{what} already reached terminal state ({reason})",
                },
            )
        if outcome == "active_claim":
            holder = row["holder"]
            since = rfc3339(row["claimed_at"]) if row["claimed_at"] else "unknown time"
            raise ApiError(
                409,
                "active_claim",
                {
                    "code": "active_claim",
                    "worker_id": holder,
                    "message": f"claimed by {holder} at {since}",
                },
                headers={"Retry-After": str(s.command_claim_retry_after_seconds)},
            )
        if row["claim_event_id"] is not None:
            EVENTS_APPENDED.labels(source="claim").inc()
        return {"status": "ok", **_body(row), "claim_event_id": row["claim_event_id"]}
