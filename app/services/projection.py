"""`POST /api/internal/events/project` (api.md §11): the projector's fold over HTTP.

Events go through the one normaliser (core/envelope.py) and `noetl.project_events`, the
function the projector role uses, so rows are identical whichever path wrote them. Items the
normaliser or the function rejects are parked in `noetl.projector_reject` with stream `http`;
a statement error of class 22 or 23 is isolated item by item, as the projector halves its
batches, so one bad event never fails the others.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from app.db import Database, Session
from core.envelope import EnvelopeError, normalise, readable_ids
from core.ids import new_id

log = logging.getLogger(__name__)
SUBJECT = "POST /api/internal/events/project"


@dataclass
class _Park:
    item: Any
    reason: str
    error: str


def _bad_value(exc: psycopg.Error) -> bool:
    state = exc.sqlstate or ""
    return state.startswith("22") or state.startswith("23")


class ProjectionService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def project(self, items: list[dict[str, Any]]) -> dict[str, int]:
        valid: list[tuple[dict[str, Any], dict[str, Any]]] = []
        parked: list[_Park] = []
        for item in items:
            try:
                valid.append((item, normalise(item, source="http", require=("event_id",))))
            except EnvelopeError as exc:
                parked.append(_Park(item, exc.kind, str(exc)))
        inserted = duplicate = 0
        async with self.db.transaction() as s:
            if valid:
                try:
                    async with s.conn.transaction():  # a savepoint: isolate on a bad value
                        inserted, duplicate = await self._fold(s, valid, parked)
                except psycopg.Error as exc:
                    if not _bad_value(exc):
                        raise
                    for one in valid:
                        try:
                            async with s.conn.transaction():
                                i, d = await self._fold(s, [one], parked)
                        except psycopg.Error as single:
                            if not _bad_value(single):
                                raise
                            parked.append(_Park(one[0], "constraint", str(single)[:2000]))
                        else:
                            inserted, duplicate = inserted + i, duplicate + d
            if parked:
                await self._park(s, parked)
        return {"projected": inserted, "duplicates": duplicate, "parked": len(parked)}

    async def _fold(
        self, s: Session, batch: list[tuple[dict[str, Any], dict[str, Any]]], parked: list[_Park]
    ) -> tuple[int, int]:
        row = await s.one("project_events", events=Jsonb([env for _, env in batch]))
        assert row is not None
        for reject in row["rejected"] or []:
            index = reject.get("index")
            if isinstance(index, int) and 0 <= index < len(batch):
                parked.append(_Park(batch[index][0], "invalid", str(reject.get("reason"))))
        return int(row["inserted"]), int(row["duplicate"])

    async def _park(self, s: Session, parked: list[_Park]) -> None:
        ids = [readable_ids(p.item) for p in parked]
        await s.value(
            "projector_reject_add",
            consumer="http",
            stream_seq=[new_id() for _ in parked],
            subject=[SUBJECT] * len(parked),
            msg_id=[None] * len(parked),
            execution_id=[execution_id for execution_id, _ in ids],
            event_id=[event_id for _, event_id in ids],
            reason=[p.reason for p in parked],
            error=[p.error[:2000] for p in parked],
            deliveries=[1] * len(parked),
            headers=[None] * len(parked),
            body=[json.dumps(p.item).encode() for p in parked],  # ASCII: lone surrogates too
        )
        log.warning("projected events parked", extra={"parked": len(parked)})
