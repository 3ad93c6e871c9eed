"""Worker events (api.md §8.1, §8.2): validation, and the one transaction per event.

Interface (also used by the SSE and batch code):

    ingest_events(runner, execution_id, envelopes, *, drive=True) -> Ingested

`envelopes` are canonical envelopes of ONE execution, as `parse_event` builds them. In one
transaction, under the execution's advisory lock: every event is appended (`append_events`;
a repeat of a stored event returns its stored id and changes nothing), each new one updates
its command row (`command_apply_event`), and, with `drive`, when one of them was the first
terminal of its command (dsl.md §6.2) the engine folds the log and runs one pass whose events
and commands are appended in the same transaction. Commands leave only through the outbox
trigger. Raises `ApiError` 404 `execution_not_found` for an execution without a row.
`Ingested` has `event_ids` (stored ids, input order), `inserted` (per event) and
`commands_generated`.

    parse_event(raw, *, loc=("body",), default_actionable=True) -> dict   (raises ApiError 422)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from app.db import Session
from app.errors import ApiError, problem, validation_error
from app.fields import json_size, storable_json
from app.services.engine_runner import TERMINAL_EVENT_TYPES, EngineRunner, PassResult, outcome_of
from app.services.execution_metrics import EVENTS_APPENDED
from core.envelope import EnvelopeError, normalise, producer_event

log = logging.getLogger(__name__)
RESULT_KEYS = frozenset({"status", "reference", "context", "command_id"})
COMMAND_ID_SOURCES = (
    "payload",
    "meta",
    "payload.context",
    "payload.result",
    "payload.result.context",
)
# NoETL names of the command lifecycle (dsl.md §7.1)
TYPE_ALIASES = {
    "action_started": "command.started",
    "action_completed": "command.completed",
    "action_failed": "command.failed",
    "action_done": "call.done",
}


@dataclass
class Ingested:
    event_ids: list[int] = field(default_factory=list)
    inserted: list[bool] = field(default_factory=list)
    commands_generated: int = 0
    status: str | None = None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _command_id(raw: Mapping[str, Any], payload: Mapping[str, Any]) -> Any:
    """api.md §8.1: payload, meta, payload.context, payload.result, payload.result.context."""
    result = _mapping(payload.get("result"))
    for source in (
        payload,
        _mapping(raw.get("meta")),
        _mapping(payload.get("context")),
        result,
        _mapping(result.get("context")),
    ):
        value = source.get("command_id")
        if value is not None:
            return value
    return raw.get("command_id")


def _oversized(result: Mapping[str, Any], limit: int) -> dict[str, Any] | None:
    """dsl.md §9: a result above the inline limit becomes a size_limit error outcome."""
    size = json_size(result)
    if size <= limit:
        return None
    error = {
        "kind": "size_limit",
        "message": f"result of {size} bytes exceeds {limit}",
        "retryable": False,
        "bytes": size,
        "limit": limit,
    }
    return {"status": "error", "context": {"status": "error", "data": None, "error": error}}


def parse_event(
    raw: Any,
    *,
    loc: tuple[str | int, ...] = ("body",),
    default_actionable: bool = True,
    result_max_bytes: int = 1024 * 1024,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The canonical envelope of one worker event (api.md §8.1), or 422 naming the fields."""
    problems: list[dict[str, Any]] = []

    def bad(path: tuple[str | int, ...], msg: str, type_: str = "value_error") -> None:
        problems.append(problem([*loc, *path], msg, type_))

    if not isinstance(raw, Mapping):
        raise validation_error([problem(list(loc), "must be an object", "type_error")])
    data = {**(extra or {}), **raw}
    if not storable_json(data):
        raise validation_error([problem(list(loc), "contains values that cannot be stored")])
    for canonical, alias in (("event_type", "name"), ("node_name", "step")):
        if data.get(canonical) is None and data.get(alias) is None:
            bad((canonical,), "field required", "missing")
    for canonical, alias in (("event_type", "name"), ("node_name", "step"), ("context", "payload")):
        if (
            data.get(canonical) is not None
            and data.get(alias) is not None
            and data[canonical] != data[alias]
        ):
            bad((alias,), f"differs from {canonical}", "value_error")
    payload_raw = data.get("context", data.get("payload"))
    if payload_raw is not None and not isinstance(payload_raw, Mapping):
        bad(("payload",), "must be an object", "type_error")
    payload = dict(_mapping(payload_raw))
    if "_internal_data" in data or "_internal_data" in payload:
        bad(("_internal_data",), "not allowed", "forbidden_field")
    result = payload.get("result")
    if result is not None:
        if not isinstance(result, Mapping):
            bad(("payload", "result"), "must be an object", "type_error")
        else:
            extra_keys = sorted(set(result) - RESULT_KEYS)
            if extra_keys:
                bad(
                    ("payload", "result"),
                    f"unknown keys: {', '.join(extra_keys)}",
                    "extra_forbidden",
                )
            for key in ("reference", "context"):
                if result.get(key) is not None and not isinstance(result.get(key), Mapping):
                    bad(("payload", "result", key), "must be an object", "type_error")
            if "_internal_data" in _mapping(result.get("context")):
                bad(
                    ("payload", "result", "context", "_internal_data"),
                    "not allowed",
                    "forbidden_field",
                )
    if problems:
        raise validation_error(problems, "invalid_event_payload")

    event_type = data.get("event_type", data.get("name"))
    if isinstance(event_type, str) and event_type in TYPE_ALIASES:
        data = {**data, "event_type": TYPE_ALIASES[event_type], "name": None}
    if isinstance(result, Mapping):
        replaced = _oversized(result, result_max_bytes)
        if replaced is not None:
            payload["result"] = result = replaced
            payload["error"] = replaced["context"]["error"]
    meta = dict(_mapping(data.get("meta")))
    command_id = _command_id(data, payload)
    if command_id is not None and meta.get("command_id") is None:
        meta["command_id"] = command_id
    for flag, default in (("actionable", default_actionable), ("informative", True)):
        value = data.get(flag, meta.get(flag))
        meta[flag] = value if isinstance(value, bool) else default
    body = {**data, "meta": meta}
    if payload_raw is not None or "payload" in data:
        body["context"] = payload
        body.pop("payload", None)
    if isinstance(result, Mapping) and data.get("result") is None:
        # the stored result is the reference-only form (envelope.md §2.1)
        body["result"] = {k: result[k] for k in ("status", "reference", "context") if k in result}
    try:
        envelope = normalise(body, source="http", strict_aliases=True)
    except EnvelopeError as exc:
        path = tuple(exc.field.split("."))
        raise validation_error([problem([*loc, *path], exc.reason, "value_error")]) from None
    return producer_event(envelope)


def outcomes_of(envelopes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | None]:
    return [outcome_of(e) for e in envelopes]


async def ingest_events(
    runner: EngineRunner,
    execution_id: int,
    envelopes: Sequence[Mapping[str, Any]],
    *,
    drive: bool = True,
) -> Ingested:
    """Append, update the command rows, and (with `drive`) run the pass: one transaction."""
    may_drive = drive and any(e.get("event_type") in TERMINAL_EVENT_TYPES for e in envelopes)
    if may_drive and runner.all_closed(execution_id, envelopes):
        may_drive = False  # bookkeeping after the terminal (command.completed after call.done)
    if not may_drive:
        # one statement in autocommit is atomic by itself: no BEGIN/COMMIT round trips
        async with runner.db.session() as session:
            loaded = await _ingest(session, execution_id, envelopes, None, drive=False)
        done = Ingested(
            event_ids=[int(i) for i in loaded["ids"]],
            inserted=[bool(i) for i in loaded["inserted"]],
            status=loaded.get("status"),
        )
        EVENTS_APPENDED.labels(source="http").inc(sum(done.inserted))
        return done
    return await _submit(runner, execution_id, list(envelopes))


# Driving events of one execution are coalesced: while one transaction of the execution runs
# in this process, the events that arrive queue up and then go together, in arrival order, in
# the next transaction with one engine pass (group commit). A hot execution (a parallel loop)
# then costs one lock wait and one pass per group instead of per event, and waiting requests
# hold no pooled connection.
GROUP_MAX = 256


class _Mailbox:
    def __init__(self) -> None:
        self.items: list[tuple[list[Mapping[str, Any]], asyncio.Future[Ingested]]] = []
        self.task: asyncio.Task | None = None


async def _submit(
    runner: EngineRunner, execution_id: int, envelopes: list[Mapping[str, Any]]
) -> Ingested:
    box = runner.mailboxes.get(execution_id)
    if box is None:
        box = runner.mailboxes[execution_id] = _Mailbox()
    future: asyncio.Future[Ingested] = asyncio.get_running_loop().create_future()
    box.items.append((envelopes, future))
    if box.task is None:
        box.task = asyncio.create_task(_drain(runner, execution_id, box))
    return await future


async def _drain(runner: EngineRunner, execution_id: int, box: _Mailbox) -> None:
    try:
        while box.items:
            group, box.items = box.items[:GROUP_MAX], box.items[GROUP_MAX:]
            try:
                results = await _commit_group(runner, execution_id, [g[0] for g in group])
            except Exception as exc:
                if len(group) == 1:
                    _settle(group[0][1], exc)
                    continue
                # one bad event must not fail the others: retry them one by one
                for envelopes, future in group:
                    try:
                        _settle(future, (await _commit_group(runner, execution_id, [envelopes]))[0])
                    except Exception as single:
                        _settle(future, single)
                continue
            for (_, future), result in zip(group, results, strict=True):
                _settle(future, result)
    finally:
        box.task = None
        if runner.mailboxes.get(execution_id) is box:
            runner.mailboxes.pop(execution_id, None)


def _settle(future: asyncio.Future[Ingested], outcome: Ingested | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


async def _commit_group(
    runner: EngineRunner, execution_id: int, groups: list[list[Mapping[str, Any]]]
) -> list[Ingested]:
    """One transaction: every event of `groups`, their command rows, one pass."""
    envelopes = [e for g in groups for e in g]
    cached = runner.take_state(execution_id)
    result: PassResult | None = None
    try:
        async with runner.db.transaction() as session:
            loaded = await _ingest(session, execution_id, envelopes, cached, drive=True)
            if loaded["drives"]:
                result = await runner.run_pass(session, execution_id, loaded, cached)
    except BaseException:
        runner.forget(execution_id)
        raise
    if result is not None:
        runner.keep(execution_id, result)
    elif cached is not None:
        runner.keep_state(execution_id, *cached)  # untouched: nothing was folded into it
    ids = [int(i) for i in loaded["ids"]]
    inserted = [bool(i) for i in loaded["inserted"]]
    EVENTS_APPENDED.labels(source="http").inc(sum(inserted))
    out = []
    offset = 0
    commands = result.commands if result is not None else 0
    status = (result.status if result is not None else None) or loaded.get("status")
    for group in groups:
        n = len(group)
        out.append(
            Ingested(
                event_ids=ids[offset : offset + n],
                inserted=inserted[offset : offset + n],
                commands_generated=commands,
                status=status,
            )
        )
        commands = 0  # the pass's commands are reported once, to the first request
        offset += n
    return out


async def _ingest(
    session: Session,
    execution_id: int,
    envelopes: Sequence[Mapping[str, Any]],
    cached: tuple[Any, Any] | None,
    *,
    drive: bool,
) -> dict[str, Any]:
    loaded = await session.value(
        "event_ingest",
        execution_id=execution_id,
        events=Jsonb(list(envelopes)),
        outcomes=Jsonb(outcomes_of(envelopes)),
        cached_position=cached[0].position if cached else None,
        drive=drive,
    )
    if not loaded["found"]:
        raise ApiError(404, "execution_not_found", f"Execution {execution_id} not found")
    return dict(loaded)


# ---------------------------------------------------------------------- batches (§8.2)


@dataclass(frozen=True)
class BatchAccepted:
    outcome: str  # accepted | duplicate
    request_id: int
    event_ids: list[int]
    queue_depth: int
    idempotency_key: str | None


async def accept_batch(
    runner: EngineRunner,
    execution_id: int,
    envelopes: Sequence[Mapping[str, Any]],
    *,
    idempotency_key: str | None,
    body_sha256: str,
    catalog_id: int | None,
) -> BatchAccepted:
    """Durable acceptance in one transaction: events stored and applied to their command
    rows, `batch.accepted`, the event_batch row, NOTIFY. The pass runs in `process_batch`."""
    settings = runner.settings
    async with runner.db.session() as session:
        await runner.ids.ensure(session, 1)
        request_id = runner.ids.take()
        tagged = [
            {**e, "meta": {**e["meta"], "batch_request_id": str(request_id)}} for e in envelopes
        ]
        result = await session.value(
            "accept_event_batch",
            execution_id=execution_id,
            request_id=request_id,
            idempotency_key=idempotency_key,
            body_sha256=body_sha256,
            catalog_id=catalog_id,
            pool=settings.default_pool,
            events=Jsonb(tagged),
            outcomes=Jsonb(outcomes_of(tagged)),
            max_queue=settings.batch_accept_queue_maxsize,
        )
    outcome = result["outcome"]
    if outcome == "execution_not_found":
        raise ApiError(404, "execution_not_found", f"Execution {execution_id} not found")
    if outcome == "backlog_full":
        raise ApiError(
            503,
            "batch_backlog_full",
            "too many unprocessed event batches",
            headers={"Retry-After": "2"},
        )
    if outcome == "conflict":
        raise ApiError(
            409,
            "idempotency_key_conflict",
            "Idempotency-Key was used with a different body",
        )
    if outcome == "accepted":
        EVENTS_APPENDED.labels(source="http").inc(len(envelopes) + 1)
    return BatchAccepted(
        outcome=outcome,
        request_id=int(result["request_id"]),
        event_ids=[int(i) for i in result["event_ids"]],
        queue_depth=int(result["queue_depth"]),
        idempotency_key=result.get("idempotency_key"),
    )


async def process_batch(
    runner: EngineRunner, execution_id: int, request_id: int, holder: str
) -> bool:
    """Takes an accepted batch and runs the engine once over its events, in one transaction
    (a crash rolls it back to `accepted`); False when another process has it or it is done."""
    async with runner.serial(execution_id):
        return await _process_batch(runner, execution_id, request_id, holder)


async def _process_batch(
    runner: EngineRunner, execution_id: int, request_id: int, holder: str
) -> bool:
    cached = runner.take_state(execution_id)
    result: PassResult | None = None
    try:
        async with runner.db.transaction() as session:
            taken = await session.value(
                "event_batch_take",
                execution_id=execution_id,
                request_id=request_id,
                holder=holder,
            )
            if not taken:
                if cached is not None:
                    runner.keep_state(execution_id, *cached)
                return False
            loaded = await session.value(
                "engine_load",
                execution_id=execution_id,
                cached_position=cached[0].position if cached else None,
            )
            commands = 0
            if loaded["found"] and loaded["drives"]:
                result = await runner.run_pass(session, execution_id, loaded, cached)
                commands = result.commands
            await session.value(
                "event_batch_finish",
                execution_id=execution_id,
                request_id=request_id,
                commands_generated=commands,
                error_code=None,
                message=None,
            )
    except ApiError as exc:
        runner.forget(execution_id)
        if exc.status == 503:
            raise  # the database: leave it accepted for a later try
        await _fail_batch(runner, execution_id, request_id, holder, exc.code, str(exc.detail))
        return True
    except Exception:
        runner.forget(execution_id)
        log.exception(
            "event batch failed",
            extra={"execution_id": str(execution_id), "request_id": str(request_id)},
        )
        await _fail_batch(
            runner, execution_id, request_id, holder, "internal_error", "internal error"
        )
        return True
    except BaseException:
        runner.forget(execution_id)
        raise
    runner.keep(execution_id, result)
    return True


async def _fail_batch(
    runner: EngineRunner, execution_id: int, request_id: int, holder: str, code: str, message: str
) -> None:
    async with runner.db.transaction() as session:
        if await session.value(
            "event_batch_take", execution_id=execution_id, request_id=request_id, holder=holder
        ):
            await session.value(
                "event_batch_finish",
                execution_id=execution_id,
                request_id=request_id,
                commands_generated=0,
                error_code=code,
                message=message[:2000],
            )


class BatchProcessor:
    """Runs accepted batches: at once in the accepting process, and every few seconds any
    batch left `accepted` (its acceptor died or was busy) in whichever process sees it."""

    SWEEP_SECONDS = 5.0

    def __init__(self, runner: EngineRunner, holder: str) -> None:
        self.runner = runner
        self.holder = holder
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, execution_id: int, request_id: int) -> None:
        task = asyncio.get_running_loop().create_task(
            self._process(execution_id, request_id), name=f"batch-{request_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, execution_id: int, request_id: int) -> None:
        try:
            await process_batch(self.runner, execution_id, request_id, self.holder)
        except Exception:
            log.warning(
                "event batch left for a later try",
                exc_info=True,
                extra={"execution_id": str(execution_id), "request_id": str(request_id)},
            )

    async def sweep_once(self, idle_seconds: float = SWEEP_SECONDS) -> int:
        async with self.runner.db.session() as session:
            rows = await session.all("event_batch_pending", idle_s=idle_seconds, limit=100)
        for row in rows:
            await self._process(int(row["execution_id"]), int(row["request_id"]))
        return len(rows)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.SWEEP_SECONDS)
            try:
                await self.sweep_once()
            except Exception:
                log.warning("event batch sweep failed", exc_info=True)

    async def drain(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
