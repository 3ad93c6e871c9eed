"""Worker pool registry (api.md §8.4) and execution variables (api.md §8.5)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from app.db import Database
from app.errors import ApiError
from app.redact import redact
from core.settings import Settings
from core.timefmt import rfc3339

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    name: str
    runtime: Any  # as sent: echoed in the response
    uri: str | None
    status: str
    capacity: int | None
    labels: dict[str, Any] | None
    pid: int | None
    hostname: str | None
    meta: dict[str, Any] | None

    def stored_runtime(self) -> dict[str, Any]:
        """`{type, pid, hostname, ...meta}`: a string runtime is the type; an object is merged
        and its `kind` becomes `type`."""
        stored: dict[str, Any] = dict(self.meta or {})
        if isinstance(self.runtime, dict):
            stored.update(self.runtime)
            if "kind" in stored:
                stored["type"] = stored.pop("kind")
        elif isinstance(self.runtime, str):
            stored["type"] = self.runtime
        stored.setdefault("type", None)
        stored["pid"] = self.pid if self.pid is not None else stored.get("pid")
        stored["hostname"] = self.hostname if self.hostname is not None else stored.get("hostname")
        return stored


class WorkerPoolService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    async def register(self, item: Registration) -> dict[str, Any]:
        async with self.db.session() as s:
            runtime_id = await s.value(
                "runtime_register",
                name=item.name,
                uri=item.uri,
                status=item.status,
                labels=None if item.labels is None else Jsonb(item.labels),
                runtime=Jsonb(item.stored_runtime()),
                capacity=item.capacity,
            )
        return {
            "status": "ok",
            "name": item.name,
            "runtime_id": str(runtime_id),
            "kind": "worker_pool",
            "runtime": item.runtime,
        }

    async def heartbeat(self, name: str, registration: Registration | None) -> dict[str, Any]:
        async with self.db.session() as s:
            runtime_id = await s.value("runtime_heartbeat", name=name)
        if runtime_id is not None:
            return {"status": "ok", "name": name, "runtime_id": str(runtime_id)}
        if registration is None:
            raise ApiError(
                404,
                "runtime_unknown",
                {"status": "unknown", "name": name},
                headers={"Retry-After": str(self.settings.heartbeat_retry_after)},
            )
        registered = await self.register(registration)
        return {"status": "recreated", "name": name, "runtime_id": registered["runtime_id"]}

    async def deregister(self, name: str) -> dict[str, Any]:
        """Offline at once, so its claims are reclaimable, and its open commands re-notified
        (noetl.runtime_deregister); idempotent, also for unknown names."""
        async with self.db.session() as s:
            await s.one("runtime_deregister", name=name)
        return {
            "status": "ok",
            "name": name,
            "kind": "worker_pool",
            "runtime_id": None,
            "runtime": None,
        }

    async def list(self, runtime: str | None, status: str | None) -> dict[str, Any]:
        async with self.db.session() as s:
            rows = await s.all(
                "runtime_list",
                runtime=runtime,
                status=status,
                offline_s=self.settings.runtime_offline_seconds,
            )
        items = [
            {
                "name": r["name"],
                "runtime": r["runtime"] if isinstance(r["runtime"], dict) else {},
                "status": r["status"],
                "capacity": r["capacity"],
                "labels": r["labels"],
                "heartbeat": rfc3339(r["heartbeat"]),
                "created_at": rfc3339(r["created_at"]),
                "updated_at": rfc3339(r["updated_at"]),
            }
            for r in rows
        ]
        return {
            "items": items,
            "count": len(items),
            "runtime": runtime,
            "status": status,
            "error": None,
        }


@dataclass(frozen=True)
class Variable:
    var_name: str
    var_value: Any
    var_type: str
    source_step: str | None


def _variable(row: dict[str, Any], reveal: bool) -> dict[str, Any]:
    return {
        "value": row["var_value"]
        if reveal
        else redact({row["var_name"]: row["var_value"]})[row["var_name"]],
        "type": row["var_type"],
        "source_step": row["source_step"],
        "created_at": rfc3339(row["created_at"]),
        "accessed_at": rfc3339(row["accessed_at"]),
        "access_count": row["access_count"],
    }


class VarsService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def set(self, execution_id: int, variables: list[Variable]) -> dict[str, Any]:
        payload = [
            {
                "var_name": v.var_name,
                "var_value": v.var_value,
                "var_type": v.var_type,
                "source_step": v.source_step,
            }
            for v in variables
        ]
        async with self.db.session() as s:
            rows = await s.all("vars_set", execution_id=execution_id, variables=Jsonb(payload))
        names = [r["var_name"] for r in rows]
        return {"execution_id": execution_id, "variables_set": len(names), "var_names": names}

    async def list(self, execution_id: int, reveal: bool) -> dict[str, Any]:
        async with self.db.session() as s:
            rows = await s.all("vars_list", execution_id=execution_id)
        variables = {r["var_name"]: _variable(r, reveal) for r in rows}
        return {"execution_id": execution_id, "variables": variables, "count": len(variables)}

    async def get(self, execution_id: int, name: str, reveal: bool) -> dict[str, Any]:
        async with self.db.session() as s:
            row = await s.one("var_get", execution_id=execution_id, var_name=name)
        if row is None:
            raise ApiError(404, "var_not_found", f"Variable '{name}' not found")
        return {"execution_id": execution_id, "var_name": name, **_variable(row, reveal)}

    async def delete(self, execution_id: int, name: str) -> dict[str, Any]:
        async with self.db.session() as s:
            gone = await s.one("var_delete", execution_id=execution_id, var_name=name)
        return {"execution_id": execution_id, "var_name": name, "deleted": gone is not None}

    async def delete_all(self, execution_id: int) -> dict[str, Any]:
        async with self.db.session() as s:
            count = await s.value("vars_delete", execution_id=execution_id)
        return {"execution_id": execution_id, "deleted_count": int(count or 0)}
