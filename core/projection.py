"""Calling noetl.project_events (envelope.md §7.3) from Python: the projector role and the
server's `POST /api/internal/events/project` (api.md §11) share this module, so rows are the
same whichever door they came through.

`project(conn, envelopes)` runs one `project_events` call inside the caller's transaction; when
Postgres raises a data or constraint error (SQLSTATE class 22 or 23), the batch is halved in
savepoints until the offending envelopes are isolated and reported as `constraint` rejects,
and the rest is projected (§7.4). `add_rejects` writes `noetl.projector_reject` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from core.envelope import EnvelopeError, normalise, readable_ids
from core.ids import new_id
from core.queries import load_queries

QUERIES = load_queries("projection")
HTTP_STREAM = "http"
REJECT_ERROR_MAX = 4000


@dataclass(frozen=True)
class Rejected:
    """An envelope project_events did not store: `reason` is `invalid` (its own validation)
    or `constraint` (a class 22/23 error isolated by halving)."""

    index: int
    reason: str
    error: str


@dataclass
class Projection:
    inserted: int = 0
    duplicate: int = 0
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True)
class RejectRow:
    """One `noetl.projector_reject` row (the stream and consumer are per call)."""

    stream_seq: int
    subject: str
    msg_id: str | None
    execution_id: int | None
    event_id: int | None
    reason: str
    error: str
    deliveries: int
    headers: dict[str, str] | None
    body: bytes


def is_data_error(exc: BaseException) -> bool:
    """SQLSTATE class 22 (data exception) or 23 (integrity constraint violation)."""
    state = getattr(exc, "sqlstate", None) or ""
    return state[:2] in ("22", "23")


def dumps(envelopes: Sequence[dict[str, Any]]) -> str:
    return orjson.dumps(list(envelopes)).decode()


async def project(conn: psycopg.AsyncConnection, envelopes: Sequence[dict[str, Any]]) -> Projection:
    """Project canonical envelopes in the caller's transaction (or one of its own)."""
    result = Projection()
    await _project_part(conn, list(envelopes), 0, result)
    result.rejected.sort(key=lambda r: r.index)
    return result


async def project_committed(
    conn: psycopg.AsyncConnection, envelopes: Sequence[dict[str, Any]]
) -> Projection | None:
    """One project_events statement as its own transaction (`conn` in autocommit, no
    transaction open): one round trip, committed when it returns. None when Postgres raised a
    class 22/23 error: nothing was written, and `project` in a transaction isolates it."""
    try:
        cur = await conn.execute(QUERIES["project_events"], {"events": dumps(envelopes)})
        row = await cur.fetchone()
    except psycopg.Error as exc:
        if is_data_error(exc):
            return None
        raise
    assert row is not None
    result = Projection(row[0], row[1])
    for item in row[2] or ():
        result.rejected.append(Rejected(int(item["index"]), "invalid", item["reason"]))
    return result


async def _project_part(
    conn: psycopg.AsyncConnection, part: list[dict[str, Any]], offset: int, result: Projection
) -> None:
    if not part:
        return
    try:
        async with conn.transaction():  # a savepoint inside the caller's transaction
            cur = await conn.execute(QUERIES["project_events"], {"events": dumps(part)})
            row = await cur.fetchone()
    except psycopg.Error as exc:
        if not is_data_error(exc):
            raise
        if len(part) == 1:
            error = (exc.diag.message_primary or str(exc))[:REJECT_ERROR_MAX]
            result.rejected.append(Rejected(offset, "constraint", error))
            return
        half = len(part) // 2
        await _project_part(conn, part[:half], offset, result)
        await _project_part(conn, part[half:], offset + half, result)
        return
    assert row is not None
    inserted, duplicate, rejected = row[0], row[1], row[2]
    result.inserted += inserted
    result.duplicate += duplicate
    for item in rejected or ():
        result.rejected.append(Rejected(offset + int(item["index"]), "invalid", item["reason"]))


async def add_rejects(
    conn: psycopg.AsyncConnection, stream: str, consumer: str, rows: Sequence[RejectRow]
) -> int:
    """Insert dead-letter rows; a row already there (a redelivery) is skipped."""
    if not rows:
        return 0
    cur = await conn.execute(
        QUERIES["projector_reject_add"],
        {
            "stream": stream,
            "consumer": consumer,
            "stream_seq": [r.stream_seq for r in rows],
            "subject": [r.subject for r in rows],
            "msg_id": [r.msg_id for r in rows],
            "execution_id": [r.execution_id for r in rows],
            "event_id": [r.event_id for r in rows],
            "reason": [r.reason for r in rows],
            "error": [r.error[:REJECT_ERROR_MAX] for r in rows],
            "deliveries": [r.deliveries for r in rows],
            "headers": [Jsonb(r.headers) if r.headers is not None else None for r in rows],
            "body": [r.body for r in rows],
        },
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


class ProjectRequestError(ValueError):
    """POST /api/internal/events/project: an item that is not an object or lacks a valid
    event_id / execution_id makes the whole request a 422 naming its index (api.md §11)."""

    def __init__(self, index: int, field: str, reason: str) -> None:
        super().__init__(f"events[{index}].{field}: {reason}")
        self.index, self.field, self.reason = index, field, reason


@dataclass(frozen=True)
class HttpProjection:
    projected: int
    duplicates: int
    parked: int


def check_http_items(items: Sequence[Any]) -> None:
    """Raise ProjectRequestError for the first item the route must answer with 422."""
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProjectRequestError(index, "", "must be an object")
        execution_id, event_id = readable_ids(item)
        if execution_id is None:
            raise ProjectRequestError(index, "execution_id", "missing or not an id")
        if event_id is None:
            raise ProjectRequestError(index, "event_id", "missing or not an id")


async def project_http(
    conn: psycopg.AsyncConnection, items: Sequence[Any], consumer: str = "server"
) -> HttpProjection:
    """The whole of POST /api/internal/events/project after auth and size checks: 422 cases
    raise ProjectRequestError before anything is written; envelopes the normaliser or
    project_events reject are parked in noetl.projector_reject with stream `http` (a snowflake
    as stream_seq); everything happens in one transaction."""
    check_http_items(items)
    envelopes: list[dict[str, Any]] = []
    sources: list[int] = []
    parked: list[RejectRow] = []
    for index, item in enumerate(items):
        try:
            envelopes.append(normalise(item, source="http", require=("event_id",)))
            sources.append(index)
        except EnvelopeError as exc:
            parked.append(_http_reject(item, exc.kind, str(exc)))
    async with conn.transaction():
        result = await project(conn, envelopes)
        for rejected in result.rejected:
            parked.append(
                _http_reject(items[sources[rejected.index]], rejected.reason, rejected.error)
            )
        await add_rejects(conn, HTTP_STREAM, consumer, parked)
    return HttpProjection(result.inserted, result.duplicate, len(parked))


def _http_reject(item: dict[str, Any], reason: str, error: str) -> RejectRow:
    execution_id, event_id = readable_ids(item)
    return RejectRow(
        stream_seq=new_id(),
        subject="POST /api/internal/events/project",
        msg_id=None,
        execution_id=execution_id,
        event_id=event_id,
        reason=reason,
        error=error,
        deliveries=1,
        headers=None,
        body=orjson.dumps(item, default=str),
    )
