"""The fold of one execution's event log (dsl.md §6.1) into `State`.

`State` is plain data (`to_json()` / `State.from_json()`), so the server can cache it with its
position (`noetl.execution.state`); `fold(state, events)` continues from there and skips events
at or below `state.position`, so the cache always equals the full fold. The fold renders no
templates and needs no playbook: routing decisions are read from the engine's own `step.exit`,
`step.skipped` and `ctx.updated` events (meta `source: "engine"`), and loop items from the loop's
`step.enter`. Worker `step.enter`/`step.exit` and heartbeats are never folded.

`apply(state, event)` folds one event and returns True when the event drives a pass (§6.2): the
first terminal of a command this execution issued, while the execution is not terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from core.ids import InvalidId, parse_id

ENGINE = "engine"
IN_FLIGHT = frozenset({"entered", "issued", "claimed", "running"})
TERMINAL_TYPES = frozenset(
    {"call.done", "call.error", "command.completed", "command.failed", "command.cancelled"}
)
EXECUTION_TERMINAL = {
    "playbook.completed": "COMPLETED",
    "workflow.completed": "COMPLETED",
    "playbook.failed": "FAILED",
    "workflow.failed": "FAILED",
    "execution.cancelled": "CANCELLED",
}
START_TYPES = frozenset(
    {"playbook.started", "playbook.initialized", "workflow.initialized", "playbook_started"}
)
_ERROR_STATUSES = frozenset({"error", "failed", "failure", "timeout"})


@dataclass
class Outcome:
    status: str  # "ok" or "error"
    data: Any
    error: dict[str, Any] | None


def _error_object(value: Any, default: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        error = dict(value)
        error.setdefault("kind", "error")
        error.setdefault("message", default)
        error.setdefault("retryable", False)
        return error
    message = value if isinstance(value, str) and value else default
    return {"kind": "error", "message": message, "retryable": False}


def terminal_outcome(event: Mapping[str, Any]) -> Outcome:
    """Outcome, data and error of a terminal event, read as dsl.md §6.1 says."""
    event_type = event.get("event_type")
    context = event.get("context")
    context = context if isinstance(context, Mapping) else {}
    result = context.get("result", event.get("result"))
    data: Any = None
    status: Any = None
    inner: Mapping[str, Any] = {}
    if isinstance(result, Mapping):
        inner_raw = result.get("context")
        inner = inner_raw if isinstance(inner_raw, Mapping) else {}
        if "data" in inner:
            data = inner["data"]
        elif "data" in result:
            data = result["data"]
        elif "context" in result:
            data = result["context"]
        else:
            data = result
        status = inner.get("status") if "status" in inner else result.get("status")
    elif result is not None:
        data = result
    failed = event_type in ("call.error", "command.failed", "command.cancelled") or (
        isinstance(status, str) and status.strip().lower() in _ERROR_STATUSES
    )
    if event_type in ("command.completed", "command.failed", "command.cancelled") and (
        "result" not in context
    ):
        data = None
    if not failed:
        return Outcome("ok", data, None)
    raw_error = context.get("error")
    if raw_error is None:
        raw_error = inner.get("error") if inner else None
    if raw_error is None and isinstance(result, Mapping):
        raw_error = result.get("error")
    if raw_error is None:
        raw_error = event.get("error")
    if raw_error is None and event_type == "command.cancelled":
        raw_error = {"kind": "cancelled", "message": str(context.get("reason") or "cancelled")}
    default = f"{event_type} with status {status}" if status else f"{event_type}"
    return Outcome("error", data, _error_object(raw_error, default))


@dataclass(slots=True)
class LoopRun:
    items: list[Any]
    iterator: str
    mode: str
    max_in_flight: int
    next_index: int = 0  # the next iteration to dispatch
    in_flight: int = 0
    done: list[bool] = field(default_factory=list)
    data: list[Any] = field(default_factory=list)
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    context_updates: dict[str, Any] = field(default_factory=dict)
    finished: int = 0

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def complete(self) -> bool:
        return self.finished >= self.total


@dataclass(slots=True)
class StepRun:
    status: str = "pending"  # pending entered issued claimed running succeeded failed skipped
    entries: int = 0
    tokens: list[str | None] = field(default_factory=list)  # arcs taken into this step, by source
    outcome: str | None = None  # latest outcome: ok, error, skipped
    data: Any = None
    error: dict[str, Any] | None = None
    has_result: bool = False
    context_updates: dict[str, Any] = field(default_factory=dict)  # pipeline `_context_updates`
    finish_event_id: int | None = None
    loop: LoopRun | None = None
    loop_done: bool = False  # loop.done written for the current entry


@dataclass(slots=True)
class CommandRun:
    """An open command; terminal ones move to `State.closed`."""

    step: str
    entry: int  # the step's entry this command belongs to
    iteration: int | None = None
    status: str = "issued"  # issued claimed running


@dataclass
class State:
    position: int = 0  # id of the last folded event
    started: bool = False
    terminal: str | None = None  # COMPLETED FAILED CANCELLED
    entry_step: str | None = None
    workload: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)  # `set` values over the workload
    steps: dict[str, StepRun] = field(default_factory=dict)
    commands: dict[str, CommandRun] = field(default_factory=dict)  # open commands
    closed: set[str] = field(default_factory=set)  # commands that had their terminal
    unrouted: list[str] = field(default_factory=list)  # finished steps awaiting step.exit
    failed_steps: list[str] = field(default_factory=list)  # unhandled errors, in order
    errors: dict[str, str] = field(default_factory=dict)
    current_step: str | None = None
    completed_steps: list[str] = field(default_factory=list)

    @property
    def draining(self) -> bool:
        return bool(self.failed_steps)

    def variables(self) -> dict[str, Any]:
        return {**self.workload, **self.values}

    def step(self, name: str) -> StepRun:
        run = self.steps.get(name)
        if run is None:
            run = self.steps[name] = StepRun()
        return run

    def in_flight(self, name: str) -> bool:
        run = self.steps.get(name)
        return run is not None and run.status in IN_FLIGHT

    def open_commands(self) -> list[str]:
        return list(self.commands)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data; it shares values with the state, so serialise it right away."""
        data = _shallow(self)
        data["steps"] = {name: _step_json(run) for name, run in self.steps.items()}
        data["commands"] = {
            cid: [c.step, c.entry, c.iteration, c.status] for cid, c in self.commands.items()
        }
        data["closed"] = sorted(self.closed)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> State:
        """A state from `to_json()` output; it takes ownership of the nested values."""
        data = dict(data)
        steps = {}
        for name, raw in (data.pop("steps", None) or {}).items():
            raw = dict(raw)
            loop = raw.pop("loop", None)
            steps[name] = StepRun(**raw, loop=LoopRun(**loop) if loop else None)
        commands = {
            cid: CommandRun(*values) for cid, values in (data.pop("commands", None) or {}).items()
        }
        closed = set(data.pop("closed", None) or ())
        return cls(**data, steps=steps, commands=commands, closed=closed)


def _shallow(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _step_json(run: StepRun) -> dict[str, Any]:
    data = _shallow(run)
    if run.loop is not None:
        data["loop"] = _shallow(run.loop)
    return data


def _id(value: Any) -> int | None:
    try:
        return parse_id(value)
    except InvalidId:
        return None


def _meta(event: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = event.get("meta")
    return meta if isinstance(meta, Mapping) else {}


def _context(event: Mapping[str, Any]) -> Mapping[str, Any]:
    context = event.get("context")
    return context if isinstance(context, Mapping) else {}


def _command_id(event: Mapping[str, Any]) -> str | None:
    for source in (_meta(event), _context(event)):
        value = source.get("command_id")
        if value is not None:
            number = _id(value)
            if number is not None:
                return str(number)
    return None


def fold(state: State, events: Iterable[Mapping[str, Any]]) -> bool:
    """Fold events after `state.position`; True when one of them drives a pass."""
    drives = False
    for event in events:
        if apply(state, event):
            drives = True
    return drives


def apply(state: State, event: Mapping[str, Any]) -> bool:
    event_id = _id(event.get("event_id"))
    if event_id is not None:
        if event_id <= state.position:
            return False
        state.position = event_id
    event_type = str(event.get("event_type") or "")
    if event_type in EXECUTION_TERMINAL:
        if state.terminal is None:
            state.terminal = EXECUTION_TERMINAL[event_type]
        return False
    if event_type in TERMINAL_TYPES:
        return _terminal(state, event, event_id)
    if event_type in ("command.claimed", "command.started"):
        _progress(state, event, "claimed" if event_type == "command.claimed" else "running")
        return False
    if _meta(event).get("source") != ENGINE:
        if event_type in START_TYPES and not state.started:
            _started(state, event)
        return False
    handler = _ENGINE_HANDLERS.get(event_type)
    if handler is not None:
        handler(state, event, event_id)
    return False


def _started(state: State, event: Mapping[str, Any], event_id: int | None = None) -> None:
    context = _context(event)
    state.started = True
    workload = context.get("workload")
    state.workload = dict(workload) if isinstance(workload, Mapping) else {}
    entry = context.get("entry_step")
    if isinstance(entry, str):
        state.entry_step = entry
        state.step(entry).tokens.append(None)


def _enter(state: State, event: Mapping[str, Any], event_id: int | None) -> None:
    name = str(event.get("node_name"))
    run = state.step(name)
    context = _context(event)
    run.status = "entered"
    run.entries += 1
    run.tokens = []
    run.loop_done = False
    state.current_step = name
    if "iterations" in context:
        items = context.get("items")
        items = list(items) if isinstance(items, list) else []
        run.loop = LoopRun(
            items=items,
            iterator=str(context.get("iterator")),
            mode=str(context.get("mode") or "sequential"),
            max_in_flight=int(context.get("max_in_flight") or 1),
            done=[False] * len(items),
            data=[None] * len(items),
        )
        run.status = "running"
    else:
        run.loop = None


def _issued(state: State, event: Mapping[str, Any], event_id: int | None) -> None:
    name = str(event.get("node_name"))
    command_id = _command_id(event)
    if command_id is None:
        return
    run = state.step(name)
    iteration = _meta(event).get("iteration_index")
    state.commands[command_id] = CommandRun(
        step=name, entry=run.entries, iteration=iteration if isinstance(iteration, int) else None
    )
    if run.loop is not None and isinstance(iteration, int):
        run.loop.next_index = max(run.loop.next_index, iteration + 1)
        run.loop.in_flight += 1
    elif run.status == "entered":
        run.status = "issued"


def _progress(state: State, event: Mapping[str, Any], status: str) -> None:
    command_id = _command_id(event)
    command = state.commands.get(command_id) if command_id else None
    if command is None:
        return
    if status == "running" or command.status == "issued":
        command.status = status
    run = state.steps.get(command.step)
    if (
        run is not None
        and run.loop is None
        and run.entries == command.entry
        and run.status in ("issued", "claimed")
    ):
        run.status = command.status


def _terminal(state: State, event: Mapping[str, Any], event_id: int | None) -> bool:
    if _meta(event).get("ignored"):
        return False
    command_id = _command_id(event)
    command = state.commands.pop(command_id, None) if command_id else None
    if command is None or command_id is None:
        return False  # unknown, or already terminal: the first terminal wins
    state.closed.add(command_id)
    outcome = terminal_outcome(event)
    if state.terminal is not None:
        return False  # late events of a finished execution are stored and ignored
    run = state.steps.get(command.step)
    if run is None or run.entries != command.entry:
        return True
    if command.iteration is not None and run.loop is not None:
        loop = run.loop
        index = command.iteration
        if 0 <= index < loop.total and not loop.done[index]:
            loop.done[index] = True
            loop.finished += 1
            loop.in_flight = max(0, loop.in_flight - 1)
            if outcome.status == "ok":
                loop.data[index] = outcome.data
                updates = _context_updates(outcome.data)
                if updates:
                    loop.context_updates.update(updates)
            else:
                loop.failed += 1
                message = str((outcome.error or {}).get("message") or "error")
                loop.errors.append({"index": index, "message": message})
            run.finish_event_id = event_id
    elif run.status in IN_FLIGHT and run.loop is None:
        run.status = "succeeded" if outcome.status == "ok" else "failed"
        run.outcome = outcome.status
        run.data = outcome.data
        run.error = outcome.error
        run.has_result = True
        run.context_updates = _context_updates(outcome.data) if outcome.status == "ok" else {}
        run.finish_event_id = event_id
        state.unrouted.append(command.step)
    return True


def _context_updates(data: Any) -> dict[str, Any]:
    if isinstance(data, Mapping):
        updates = data.get("_context_updates")
        if isinstance(updates, Mapping):
            return dict(updates)
    return {}


def _loop_done(state: State, event: Mapping[str, Any], event_id: int | None) -> None:
    name = str(event.get("node_name"))
    run = state.step(name)
    loop = run.loop
    run.loop_done = True
    failed = loop.failed if loop else int(_context(event).get("failed") or 0)
    run.status = "failed" if failed else "succeeded"
    run.outcome = "error" if failed else "ok"
    run.data = list(loop.data) if loop else []
    run.error = (
        {
            "kind": "iterations_failed",
            "message": f"{failed} of {loop.total if loop else 0} iterations failed",
            "failed": failed,
            "errors": list(loop.errors) if loop else [],
        }
        if failed
        else None
    )
    run.has_result = True
    run.context_updates = dict(loop.context_updates) if loop and not failed else {}
    state.unrouted.append(name)


def _exit(state: State, event: Mapping[str, Any], event_id: int | None) -> None:
    name = str(event.get("node_name"))
    context = _context(event)
    run = state.step(name)
    if name in state.unrouted:
        state.unrouted.remove(name)
    error = context.get("error")
    if isinstance(error, Mapping) and error.get("kind") == "evaluation":
        # an evaluation error: the step failed where it stood, and never routes
        run.status = "failed"
        run.outcome = "error"
        run.error = dict(error)
        run.tokens = []
    if context.get("outcome") == "ok":
        state.completed_steps.append(name)
    if context.get("outcome") == "error" and not context.get("handled"):
        if name not in state.failed_steps:
            state.failed_steps.append(name)
        message = error.get("message") if isinstance(error, Mapping) else error
        state.errors[name] = str(message or "step failed")
    _tokens(state, name, context.get("next"))


def _tokens(state: State, source: str | None, targets: Any) -> None:
    for target in targets or ():
        if not isinstance(target, str):
            continue
        # a target already in flight drops the token: it is running (§6.3 step 3)
        if not state.in_flight(target):
            state.step(target).tokens.append(source)


def _skipped(state: State, event: Mapping[str, Any], event_id: int | None) -> None:
    name = str(event.get("node_name"))
    context = _context(event)
    run = state.step(name)
    if context.get("reason") == "when":
        run.status = "skipped"
        run.outcome = "skipped"
        run.data = None
        run.error = None
        run.has_result = True
        run.tokens = []
        _tokens(state, name, context.get("next"))
    elif run.status == "pending":
        run.status = "skipped"


def _ctx_updated(state: State, event: Mapping[str, Any], event_id: int | None) -> None:
    values = _context(event).get("values")
    if isinstance(values, Mapping):
        state.values.update(values)


_ENGINE_HANDLERS = {
    "playbook.started": _started,
    "step.enter": _enter,
    "command.issued": _issued,
    "loop.done": _loop_done,
    "step.exit": _exit,
    "step.skipped": _skipped,
    "ctx.updated": _ctx_updated,
}
