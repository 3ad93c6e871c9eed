"""Catalog: register rules (api.md §6.2), lookups through the cache, list, delete, restore."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import yaml
from psycopg.types.json import Jsonb

from app.db import Database
from app.errors import ApiError, problem, validation_error
from app.listen import Hub
from app.services.catalog_cache import CatalogCache, CatalogEntry
from core.timefmt import rfc3339, utcnow
from engine.validate import validate_playbook

log = logging.getLogger(__name__)
CATALOG_CHANNEL = "noetl_catalog"
NOTIFY_WAIT_SECONDS = 0.5
KIND_ALIASES = {
    "playbook": "playbook",
    "credential": "credential",
    "credentials": "credential",
    "secret": "credential",
    "secrets": "credential",
    "mcp": "mcp",
    "modelcontextprotocol": "mcp",
    "agent": "agent",
    "memory": "memory",
}
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
PATH_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
VALIDATED_KINDS = ("playbook", "agent")
TRUTHY = {"true", "1", "yes", "on"}
MAX_NODES = 200_000  # a YAML alias bomb expands when converted to JSON; stop it early


def normalise_kind(value: str) -> str:
    return KIND_ALIASES.get(value.strip().lower(), value.strip().lower())


def path_problem(path: str) -> str | None:
    """Why a catalog path is not valid (dsl.md §3 rule 3), or None."""
    if not 1 <= len(path) <= 512:
        return "must be 1..512 characters"
    if not PATH_PATTERN.match(path):
        return "must be /-separated segments of [A-Za-z0-9_.-]"
    segments = path.split("/")
    if any(s in (".", "..") for s in segments):
        return "must not contain a '.' or '..' segment"
    if segments[-1] == "ui_schema":
        return "must not end with a 'ui_schema' segment"
    return None


def truthy(value: Any) -> bool:
    return value is not None and str(value).strip().lower() in TRUTHY


def to_json_value(value: Any, budget: list[int] | None = None) -> Any:
    """YAML values as JSON: dates become ISO text, keys text, non-finite floats text."""
    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError("document too large once aliases are expanded")
    if isinstance(value, dict):
        return {str(k): to_json_value(v, budget) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_json_value(v, budget) for v in value]
    if isinstance(value, datetime):
        return rfc3339(value) if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def decode_content(content: str) -> str:
    """api.md §6.2 rule 1: strict base64 of a YAML mapping, else the text itself."""
    compact = re.sub(r"\s+", "", content)
    if compact:
        try:
            text = base64.b64decode(compact, validate=True).decode("utf-8")
            if isinstance(yaml.safe_load(text), dict):
                return text
        except (binascii.Error, ValueError, yaml.YAMLError, RecursionError):
            pass
    return content


def _string_list(value: Any, *, comma: bool) -> list[str]:
    if isinstance(value, str):
        items = value.split(",") if comma else [value]
    elif isinstance(value, list):
        items = [str(v) for v in value if v is not None]
    else:
        return []
    return [i.strip() for i in items if i.strip()]


def build_meta(document: dict[str, Any]) -> dict[str, Any]:
    metadata = document.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    terminal = metadata.get("terminal")
    terminal = terminal if isinstance(terminal, dict) else {}
    return {
        "registered_at": rfc3339(utcnow()),
        "agent": truthy(metadata.get("agent")),
        "capabilities": _string_list(metadata.get("capabilities"), comma=False),
        "terminal": to_json_value(terminal),
        "terminal_visible": truthy(terminal.get("visible")),
        "terminal_scopes": _string_list(terminal.get("scopes"), comma=True),
    }


def _first_path(document: dict[str, Any]) -> Any:
    metadata = document.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    for value in (metadata.get("path"), document.get("path"), metadata.get("name")):
        if value not in (None, ""):
            return value
    return document.get("name")


@dataclass(frozen=True)
class Registered:
    catalog_id: int
    path: str
    version: int
    kind: str


def prepare(content: str, resource_type: str, max_bytes: int) -> tuple[str, str, str, Any, dict]:
    """(text, path, kind, payload, meta) of a register request, or the 413/422 of §6.2."""
    text = decode_content(content)
    if len(text.encode("utf-8")) > max_bytes:
        raise ApiError(413, "payload_too_large", f"content larger than {max_bytes} bytes")
    loc: list[str | int] = ["body", "content"]
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise validation_error([problem(loc, "not valid YAML", "yaml_error", line)]) from None
    except RecursionError:
        raise validation_error([problem(loc, "YAML nested too deeply", "yaml_error")]) from None
    if not isinstance(document, dict):
        raise validation_error([problem(loc, "must be a YAML mapping", "type_error", 1)])
    try:
        document = to_json_value(document)
    except (ValueError, RecursionError):
        raise validation_error([problem(loc, "document too large", "too_large")]) from None

    raw_kind = document.get("kind")
    kind = normalise_kind(
        raw_kind if isinstance(raw_kind, str) and raw_kind.strip() else resource_type
    )
    problems = []
    if not KIND_PATTERN.match(kind):
        problems.append(
            problem([*loc, "kind"], "kind must match ^[a-z][a-z0-9_-]{0,63}$", "kind_error")
        )
    path = _first_path(document)
    if path is None:
        problems.append(
            problem(
                [*loc, "metadata", "path"], "no path: set metadata.path or metadata.name", "missing"
            )
        )
    elif not isinstance(path, str) or (why := path_problem(path)) is not None:
        why = "must be a string" if not isinstance(path, str) else why
        problems.append(problem([*loc, "metadata", "path"], f"path {why}", "path_error"))
    if problems:
        raise validation_error(problems)
    assert isinstance(path, str)

    payload: Any = document
    if kind in VALIDATED_KINDS:
        normalised, found = validate_playbook(text)
        if found:
            shown = "; ".join(
                f"{'.'.join(str(p) for p in f.loc) or '<document>'}: {f.msg}" for f in found[:3]
            )
            more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
            raise ApiError(
                422,
                "invalid_playbook",
                f"register_resource: '{path}' is not a valid {kind}: {shown}{more}",
                errors=[
                    {
                        "loc": list(f.loc),
                        "msg": f.msg,
                        "type": f.type,
                        "path": f.path,
                        "line": f.line,
                    }
                    for f in found
                ],
            )
        if normalised is not None:
            payload = to_json_value(normalised)
    return text, path, kind, payload, build_meta(document)


@dataclass
class _Change:
    happened: bool = True


def _notified_path(payload: str) -> str | None:
    try:
        return str(json.loads(payload)["path"])
    except (ValueError, KeyError, TypeError):
        return None


class CatalogService:
    def __init__(
        self, db: Database, cache: CatalogCache, hub: Hub | None, max_content_bytes: int
    ) -> None:
        self.db = db
        self.cache = cache
        self.hub = hub
        self.max_content_bytes = max_content_bytes

    @asynccontextmanager
    async def _changing(self, path: str) -> AsyncIterator[_Change]:
        """Around a change of `path`: drop it from this process's cache, and answer only after
        this process has received the change's NOTIFY. Postgres signals every listener at
        commit, so by then the other server processes have been told too; a client that
        next asks another replica does not meet the previous version."""
        seen = None
        if self.hub is not None and self.hub.connected.is_set():
            seen = self.hub.expect(CATALOG_CHANNEL, lambda p: _notified_path(p) == path)
        change = _Change()
        try:
            yield change
        except BaseException:
            if seen is not None:
                seen.cancel()
            raise
        self.cache.invalidate(path)
        if seen is not None and not change.happened:
            seen.cancel()  # nothing changed, so no NOTIFY comes
        elif seen is not None:
            try:
                await asyncio.wait_for(seen, NOTIFY_WAIT_SECONDS)
            except TimeoutError:
                log.warning("catalog NOTIFY not seen in time", extra={"path": path})

    async def register(self, content: str, resource_type: str) -> Registered:
        text, path, kind, payload, meta = prepare(content, resource_type, self.max_content_bytes)
        async with self._changing(path), self.db.session() as s:
            row = await s.one(
                "catalog_register",
                path=path,
                kind=kind,
                content=text,
                payload=Jsonb(payload),
                meta=Jsonb(meta),
            )
        assert row is not None
        return Registered(int(row["catalog_id"]), path, int(row["version"]), kind)

    async def lookup(
        self, *, catalog_id: int | None = None, path: str | None = None, version: int | None = None
    ) -> CatalogEntry | None:
        """By id (archived or not), else by path and version or latest (never archived)."""
        params: dict[str, Any]
        if catalog_id is not None:
            key: tuple[Any, ...] = ("id", catalog_id)
            query, params = "catalog_get", {"catalog_id": catalog_id}
        elif version is not None:
            key = ("version", path, version)
            query, params = "catalog_version", {"path": path, "version": version}
        else:
            key = ("latest", path)
            query, params = "catalog_latest", {"path": path}
        entry = self.cache.get(key)
        if entry is None:
            generation = self.cache.generation
            async with self.db.session() as s:
                row = await s.one(query, **params)
            if row is None:
                return None
            entry = CatalogEntry.from_row(row)
            self.cache.put(key, entry, generation)
        if catalog_id is None and entry.archived_at is not None:
            return None
        return entry

    async def list_body(
        self,
        *,
        kind: str | None,
        path: str | None,
        agent_only: bool,
        capabilities: list[str] | None,
        include_archived: bool,
    ) -> bytes:
        async with self.db.session() as s:
            body = await s.value(
                "catalog_list",
                kind=kind,
                path=path,
                agent_only=agent_only,
                capabilities=capabilities,
                include_archived=include_archived,
            )
        return str(body).encode()

    async def change(self, action: str, path: str, version: int | None) -> list[dict[str, Any]]:
        """Archive ('delete') or restore; returns the versions changed."""
        targets, function = {
            "delete": ("catalog_archive_targets", "catalog_archive"),
            "restore": ("catalog_restore_targets", "catalog_restore"),
        }[action]
        async with self._changing(path) as change, self.db.transaction() as s:
            rows = await s.all(targets, path=path, version=version)
            change.happened = bool(rows)
            if rows:
                await s.one(function, path=path, version=version)
        return [{"catalog_id": str(r["catalog_id"]), "version": r["version"]} for r in rows]
