"""The engine inside the server: one transaction per worker event or execute (dsl.md §6).

`EngineRunner` owns what a pass needs and keeps it warm per process:

- parsed playbooks by catalog_id (catalog entries are immutable, so never invalidated);
- the folded `State` of recent executions with its position, so a pass folds only the events
  after it (the stored `noetl.execution.state` is the fallback, and both equal the full fold);
- a pool of ids drawn from `noetl.snowflake_id()` (the database mints every id the server
  uses, envelope.md §1) in blocks, so the engine's synchronous `ids()` never waits.

A cached state is taken out of the cache for the transaction that uses it and put back only
after that transaction commits, so a rolled-back pass never leaves a half-advanced state, and
two requests of one execution in one process never share a State object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

import engine
from app.db import Database, Session
from app.errors import ApiError
from app.services.catalog import CatalogService
from app.services.catalog_cache import CatalogEntry
from app.services.execution_metrics import (
    COMMANDS_ISSUED,
    ENGINE_DURATION,
    ENGINE_EVALUATIONS,
    EVENTS_APPENDED,
)
from core.ids import id_time_ms
from core.settings import Settings
from core.timefmt import utcnow

log = logging.getLogger(__name__)

ID_BLOCK = 512  # ids fetched per refill
ID_LOW_WATER = 128  # refill before a pass when fewer remain
ID_MAX_AGE_MS = 2000  # older pooled ids are dropped: an id carries its minting time
PLAYBOOK_CACHE_SIZE = 256
STATE_CACHE_SIZE = 2048
TERMINAL_EVENT_TYPES = frozenset(
    {"call.done", "call.error", "command.completed", "command.failed", "command.cancelled"}
)


class IdsExhausted(Exception):
    """The pass needed more ids than the pool held; the caller refills and runs it again."""


class IdPool:
    """Ids minted by the database, handed out synchronously."""

    def __init__(self) -> None:
        self._ids: list[int] = []  # reversed: pop() gives the oldest
        self._lock = asyncio.Lock()

    def _fresh(self) -> None:
        limit = time.time() * 1000 - ID_MAX_AGE_MS
        if self._ids and id_time_ms(self._ids[-1]) < limit:
            self._ids = [i for i in self._ids if id_time_ms(i) >= limit]

    async def ensure(self, session: Session, count: int = ID_LOW_WATER) -> None:
        self._fresh()
        if len(self._ids) >= count:
            return
        async with self._lock:
            self._fresh()
            if len(self._ids) >= count:
                return
            rows = await session.all("snowflake_ids", n=max(ID_BLOCK, count))
            fresh = [int(r["id"]) for r in rows]
            # newest first in the list, so pop() hands out ids in minting order
            self._ids = sorted(fresh, reverse=True) + self._ids

    def take(self) -> int:
        if not self._ids:
            raise IdsExhausted()
        return self._ids.pop()


@dataclass(frozen=True)
class Loaded:
    playbook: engine.Playbook
    entry: CatalogEntry


@dataclass
class PassResult:
    """A pass's effect; after the commit, `runner.keep(execution_id, result)` caches the state."""

    state: engine.State
    trace: Any = None
    commands: int = 0
    status: str | None = None
    ids: Sequence[int] = ()


class LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def command_rows(decision: engine.Decision) -> list[dict[str, Any]]:
    return [
        {
            "command_id": c.command_id,
            "step": c.step,
            "tool_kind": c.tool_kind,
            "pool": c.pool,
            "context": c.context,
            "meta": c.meta,
            "event_index": c.event_index,
        }
        for c in decision.commands
    ]


def outcome_of(envelope: Mapping[str, Any]) -> dict[str, Any] | None:
    """The outcome a terminal sets on its command row (dsl.md §6.1), read by the engine's rule."""
    if envelope.get("event_type") not in TERMINAL_EVENT_TYPES:
        return None
    outcome = engine.terminal_outcome(envelope)
    error = None
    if outcome.error is not None:
        error = str(outcome.error.get("message") or outcome.error.get("kind") or "error")
    return {"outcome": outcome.status, "error": error}


class EngineRunner:
    def __init__(self, db: Database, catalog: CatalogService, settings: Settings) -> None:
        self.db = db
        self.catalog = catalog
        self.settings = settings
        self.limits = engine.Limits.from_settings(settings)
        self.ids = IdPool()
        self._playbooks: LRU = LRU(PLAYBOOK_CACHE_SIZE)
        self._entries: LRU = LRU(PLAYBOOK_CACHE_SIZE)  # catalog_id -> Loaded
        self._states: LRU = LRU(STATE_CACHE_SIZE)  # execution_id -> (State, trace)
        self._serial: dict[int, list[Any]] = {}  # execution_id -> [lock, users]
        self.mailboxes: dict[int, Any] = {}  # execution_id -> events waiting (services.events)

    # ------------------------------------------------------------------ playbooks
    def playbook(self, entry: CatalogEntry) -> engine.Playbook:
        """The parsed playbook of a catalog entry (422 when the stored document is invalid)."""
        cached = self._playbooks.get(entry.catalog_id)
        if cached is not None:
            return cached
        document = entry.payload if isinstance(entry.payload, Mapping) else {}
        try:
            playbook = engine.load_playbook(document)
        except engine.PlaybookError as exc:
            raise ApiError(
                422,
                "invalid_playbook",
                f"Catalog entry {entry.catalog_id} is not a valid playbook: {exc}",
            ) from None
        self._playbooks.put(entry.catalog_id, playbook)
        return playbook

    async def loaded(self, session: Session, catalog_id: int) -> Loaded:
        """The playbook of a running execution, read on the caller's connection (a second
        pooled connection inside a transaction could wait for itself under load)."""
        cached = self._entries.get(catalog_id)
        if cached is None:
            row = await session.one("catalog_get", catalog_id=catalog_id)
            if row is None:
                raise ApiError(404, "catalog_entry_not_found", "Catalog entry not found")
            cached = Loaded(self.playbook(CatalogEntry.from_row(row)), CatalogEntry.from_row(row))
            self._entries.put(catalog_id, cached)
        return cached

    # ------------------------------------------------------------------ serialisation
    @contextlib.asynccontextmanager
    async def serial(self, execution_id: int) -> AsyncIterator[None]:
        """One engine transaction per execution at a time in this process."""
        entry = self._serial.get(execution_id)
        if entry is None:
            entry = self._serial[execution_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._serial.pop(execution_id, None)

    # ------------------------------------------------------------------ state cache
    def take_state(self, execution_id: int) -> tuple[engine.State, Any] | None:
        """Takes the cached state out of the cache for one transaction."""
        return self._states.pop(execution_id, None)

    def keep_state(self, execution_id: int, state: engine.State, trace: Any) -> None:
        """After a commit: the state (at its position) is the fold of the committed log.
        Terminal states stay too: the bookkeeping events after the end (command.completed)
        then skip the transaction (`all_closed`)."""
        self._states.put(execution_id, (state, trace))

    def keep(self, execution_id: int, result: PassResult | None) -> None:
        if result is not None:
            self.keep_state(execution_id, result.state, result.trace)

    def all_closed(self, execution_id: int, envelopes: Sequence[Mapping[str, Any]]) -> bool:
        """True when the cached fold already holds a terminal for every command these
        events name: then none of them can drive a pass (a known closed command stays
        closed, so the answer is never wrong, only sometimes unknown)."""
        cached = self._states.get(execution_id)
        if cached is None:
            return False
        closed = cached[0].closed
        for envelope in envelopes:
            meta = envelope.get("meta") or {}
            if meta.get("command_id") is None or str(meta["command_id"]) not in closed:
                return False
        return True

    def forget(self, execution_id: int) -> None:
        self._states.pop(execution_id, None)

    # ------------------------------------------------------------------ the pass
    async def run_pass(
        self,
        session: Session,
        execution_id: int,
        loaded: Mapping[str, Any],
        cached: tuple[engine.State, Any] | None,
    ) -> PassResult:
        """Folds the events after the state and runs a pass if they drive one; appends the
        decision. `loaded` is event_ingest's or engine_load's answer, in this transaction."""
        attempt = 0
        while True:
            if loaded.get("state") is not None or cached is None:
                state = engine.State.from_json(loaded.get("state") or {})
                trace = loaded.get("trace")
            else:
                state, trace = cached
            events = loaded.get("events") or []
            book = await self.loaded(session, int(loaded["catalog_id"]))
            ref = engine.ExecutionRef(
                execution_id=execution_id,
                catalog_id=book.entry.catalog_id,
                path=book.entry.path,
                version=book.entry.version,
                pool=str(loaded.get("pool") or self.settings.default_pool),
                parent_execution_id=loaded.get("parent_execution_id"),
                trace=trace if isinstance(trace, Mapping) else None,
            )
            await self.ids.ensure(session, ID_LOW_WATER * (4**attempt))
            started = time.perf_counter()
            try:
                decision = engine.advance(
                    book.playbook,
                    ref,
                    state,
                    events,
                    ids=self.ids.take,
                    now=utcnow(),
                    limits=self.limits,
                )
            except IdsExhausted:
                # the state object was advanced part way: fold again from the stored state
                attempt += 1
                cached = None
                loaded = await session.value(
                    "engine_load", execution_id=execution_id, cached_position=None
                )
                continue
            except Exception:
                ENGINE_EVALUATIONS.labels(outcome="error").inc()
                raise
            finally:
                ENGINE_DURATION.observe(time.perf_counter() - started)
            break
        result = PassResult(state=decision.state, trace=trace)
        if not decision.events:
            ENGINE_EVALUATIONS.labels(outcome="no_op").inc()
            return result
        result.ids = await self.apply(session, execution_id, decision)
        result.commands = len(decision.commands)
        result.status = decision.status
        return result

    async def apply(
        self, session: Session, execution_id: int, decision: engine.Decision
    ) -> list[int]:
        applied = await session.value(
            "engine_apply",
            execution_id=execution_id,
            events=Jsonb(decision.events),
            commands=Jsonb(command_rows(decision)),
            state=Jsonb(decision.state.to_json()),
            status=decision.status,
            error=decision.error,
        )
        ids = [int(i) for i in applied["ids"]]
        decision.commit(ids)
        self.count_decision(decision)
        return ids

    @staticmethod
    def count_decision(decision: engine.Decision) -> None:
        EVENTS_APPENDED.labels(source="engine").inc(len(decision.events))
        for command in decision.commands:
            COMMANDS_ISSUED.labels(pool=command.pool).inc()
        if decision.status is not None:
            ENGINE_EVALUATIONS.labels(outcome="terminal").inc()
        elif decision.commands:
            ENGINE_EVALUATIONS.labels(outcome="commands").inc()
        else:
            ENGINE_EVALUATIONS.labels(outcome="no_op").inc()
