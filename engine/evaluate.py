"""A pass of the engine (dsl.md §6.2–§6.10): state in, decisions out.

Entry points (all pure: no I/O, no clock; ids and time are injected):

- `start(playbook, execution, payload, ids=, now=)`: the start of an execution. Writes
  `playbook.started` (workload = the playbook's workload with `payload` merged over it at the
  top level) and runs the first pass with a token for the entry step.
- `advance(playbook, execution, state, events, ids=, now=)`: folds `events` (the stored events
  after `state.position`, the trigger among them) into `state`, and runs a pass when one of them
  drives one (§6.2: the first terminal of a command, while the execution is not terminal).
- `cancel(execution, state, ...)` and `finalize(execution, state, ...)`: the events of §6.9.

Each returns a `Decision`: `events` to append in order with `append_events` (canonical
envelopes without `event_id`), `commands` to store (each names the index of its
`command.issued` event in `events`), and `status` when the pass ended the execution. The
engine folds its own events into `decision.state` as it writes them; after the append, call
`decision.commit(stored_ids)` so the state's position covers them, and cache
`decision.state.to_json()` if you like.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.timefmt import rfc3339
from engine.commands import EvaluationError, build_command
from engine.context import ExecutionRef, build_context, iteration_names, output_view
from engine.model import Arc, Playbook, Step
from engine.render import TemplateError, evaluate_condition, render_value
from engine.state import ENGINE, IN_FLIGHT, State, apply, fold

__all__ = [
    "Command",
    "Decision",
    "ExecutionRef",
    "Limits",
    "advance",
    "cancel",
    "describe",
    "finalize",
    "start",
]


@dataclass(frozen=True)
class Limits:
    loop_max_in_flight: int = 100
    loop_max_items: int = 100_000
    command_context_max_bytes: int = 4 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(
            loop_max_in_flight=settings.loop_max_in_flight,
            loop_max_items=settings.loop_max_items,
            command_context_max_bytes=settings.command_context_max_bytes,
        )


@dataclass
class Command:
    """A `noetl.command` row to insert; `event_id` is its `command.issued` id, once stored."""

    command_id: str
    step: str
    tool_kind: str
    pool: str
    context: dict[str, Any]
    meta: dict[str, Any]
    event_index: int
    event_id: int | None = None


@dataclass
class Decision:
    state: State
    events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    status: str | None = None  # COMPLETED / FAILED when this pass ended the execution
    error: str | None = None  # the failure message with FAILED
    drove_pass: bool = False

    def commit(self, event_ids: Sequence[int]) -> None:
        """Record the ids `append_events` gave `events` (same order)."""
        if len(event_ids) != len(self.events):
            raise ValueError("one id per decided event")
        for command in self.commands:
            command.event_id = event_ids[command.event_index]
        if event_ids:
            self.state.position = max(self.state.position, *event_ids)


# --- entry points ------------------------------------------------------------------------------


def start(
    playbook: Playbook,
    execution: ExecutionRef,
    payload: Mapping[str, Any] | None = None,
    *,
    ids: Callable[[], int],
    now: datetime,
    limits: Limits = Limits(),
) -> Decision:
    state = State()
    run = _Pass(playbook, execution, state, ids, now, limits, None)
    workload = {**copy.deepcopy(dict(playbook.workload)), **dict(payload or {})}
    run.emit(
        "playbook.started",
        execution.path,
        "STARTED",
        {
            "catalog_id": str(execution.catalog_id),
            "path": execution.path,
            "version": execution.version,
            "workload": workload,
            "pool": execution.pool,
            "parent_execution_id": _str_id(execution.parent_execution_id),
            "entry_step": playbook.entry_step,
        },
    )
    run.run()
    return run.decision(drove=True)


def advance(
    playbook: Playbook,
    execution: ExecutionRef,
    state: State,
    events: Iterable[Mapping[str, Any]],
    *,
    ids: Callable[[], int],
    now: datetime,
    limits: Limits = Limits(),
) -> Decision:
    """Fold stored events (ids assigned) and run a pass if one of them drives it."""
    trigger = None
    drives = False
    for event in events:
        if apply(state, event):
            drives = True
            trigger = event.get("event_id")
    run = _Pass(playbook, execution, state, ids, now, limits, trigger)
    if drives and state.terminal is None:
        run.run()
        return run.decision(drove=True)
    return run.decision(drove=False)


def cancel(
    execution: ExecutionRef,
    state: State,
    *,
    reason: str = "User requested cancellation",
    cascade: bool = True,
    cancelled_by: str = "api",
    parent_cancel_id: int | None = None,
    now: datetime,
) -> Decision:
    """`execution.cancelled` and one `command.cancelled` per open command (§6.9)."""
    decision = Decision(state=state)
    if state.terminal is not None:
        return decision
    details = {
        "reason": reason,
        "cascade": cascade,
        "cancelled_by": cancelled_by,
        "parent_cancel_id": _str_id(parent_cancel_id),
    }
    writer = _Writer(execution, state, now, None, decision)
    writer.emit(
        "execution.cancelled",
        "cancel",
        "CANCELLED",
        dict(details),
        meta={**details, "actionable": True},
    )
    _cancel_commands(writer, state, reason, cancelled_by)
    decision.status = "CANCELLED"
    return decision


def finalize(
    execution: ExecutionRef,
    state: State,
    *,
    reason: str = "Abandoned or timed out",
    now: datetime,
) -> Decision:
    """`playbook.failed` with the reason, and `command.cancelled` per open command (§6.9)."""
    decision = Decision(state=state)
    if state.terminal is not None:
        return decision
    writer = _Writer(execution, state, now, None, decision)
    writer.emit(
        "playbook.failed",
        execution.path,
        "FAILED",
        {"error": reason, "failed_steps": [], "errors": {}},
        error=reason,
    )
    _cancel_commands(writer, state, reason, "finalize")
    decision.status = "FAILED"
    decision.error = reason
    return decision


def describe(playbook: Playbook | None, state: State) -> dict[str, Any]:
    """`current_step`, `completed_steps` and `variables` for the status route (api.md §7.5)."""
    completed = list(dict.fromkeys(state.completed_steps))
    variables: dict[str, Any] = dict(state.workload)
    for name, run in state.steps.items():
        if run.has_result:
            variables[name] = run.data
    variables.update(state.values)
    return {
        "current_step": state.current_step,
        "completed_steps": completed,
        "variables": variables,
        "failed_steps": list(state.failed_steps),
    }


# --- writing events ---------------------------------------------------------------------------


def _str_id(value: int | None) -> str | None:
    return str(value) if value is not None else None


def _cancel_commands(writer: _Writer, state: State, reason: str, by: str) -> None:
    for command_id in state.open_commands():
        command = state.commands[command_id]
        writer.emit(
            "command.cancelled",
            command.step,
            "CANCELLED",
            {"command_id": command_id, "reason": reason},
            meta={"command_id": command_id, "reason": reason, "cancelled_by": by},
        )


class _Writer:
    """Builds canonical envelopes and folds each into the state as it is written."""

    def __init__(
        self,
        execution: ExecutionRef,
        state: State,
        now: datetime,
        trigger: Any,
        decision: Decision,
    ) -> None:
        self.execution = execution
        self.state = state
        self.created_at = rfc3339(now)
        self.trigger = _str_id(int(trigger)) if trigger is not None else None
        self.decision = decision

    def emit(
        self,
        event_type: str,
        node_name: str | None,
        status: str,
        context: Mapping[str, Any] | None,
        *,
        meta: Mapping[str, Any] | None = None,
        node_type: str | None = None,
        error: str | None = None,
    ) -> int:
        full_meta = {"source": ENGINE, **(meta or {})}
        if self.execution.trace:
            full_meta["trace"] = dict(self.execution.trace)
        event = {
            "execution_id": str(self.execution.execution_id),
            "catalog_id": str(self.execution.catalog_id),
            "parent_event_id": self.trigger,
            "parent_execution_id": _str_id(self.execution.parent_execution_id),
            "event_type": event_type,
            "node_id": node_name,
            "node_name": node_name,
            "node_type": node_type,
            "status": status,
            "context": dict(context) if context is not None else None,
            "result": None,
            "meta": full_meta,
            "error": error,
            "duration": None,
            "worker_id": None,
            "created_at": self.created_at,
        }
        self.decision.events.append(event)
        apply(self.state, event)
        return len(self.decision.events) - 1


# --- the pass ---------------------------------------------------------------------------------


class _Pass:
    def __init__(
        self,
        playbook: Playbook,
        execution: ExecutionRef,
        state: State,
        ids: Callable[[], int],
        now: datetime,
        limits: Limits,
        trigger: Any,
    ) -> None:
        self.playbook = playbook
        self.execution = execution
        self.state = state
        self.ids = ids
        self.limits = limits
        self.result = Decision(state=state)
        self.writer = _Writer(execution, state, now, trigger, self.result)
        self.emit = self.writer.emit
        self.id_names = execution.ids()
        self.keychain_kinds = playbook.keychain_kinds()
        self.reached: set[str] = set()  # steps reached in this pass

    def decision(self, *, drove: bool) -> Decision:
        self.result.drove_pass = drove
        return self.result

    # §6.3
    def run(self) -> None:
        while self.state.terminal is None:
            self.finish_loops()
            self.route_all()
            if self.state.draining or not self.dispatch():
                break
        if not self.state.draining:
            self.top_up()
        self.complete()

    def context(self, **kwargs: Any) -> dict[str, Any]:
        return build_context(self.playbook, self.execution, self.state, **kwargs)

    def step_path(self, step: Step, *parts: str | int) -> str:
        return f"/workflow/{step.index}" + "".join(f"/{p}" for p in parts)

    def evaluation_error(self, step: Step, exc: EvaluationError, event_name: str) -> None:
        error = exc.as_error()
        self.emit(
            "step.exit",
            step.name,
            "FAILED",
            {"outcome": "error", "event": event_name, "handled": False, "next": [], "error": error},
            error=f"{step.name}: {exc.message}",
        )

    # step 2: loops whose last iteration finished, then routing
    def finish_loops(self) -> None:
        for name, step in self.playbook.steps.items():
            run = self.state.steps.get(name)
            if (
                step.loop is None
                or run is None
                or run.loop is None
                or run.loop_done
                or run.status not in IN_FLIGHT
                or not run.loop.complete
            ):
                continue
            failed = run.loop.failed
            self.emit(
                "loop.done",
                name,
                "FAILED" if failed else "COMPLETED",
                {"iterations": run.loop.total, "failed": failed},
            )

    def route_all(self) -> None:
        while self.state.unrouted:
            name = self.state.unrouted[0]
            step = self.playbook.steps.get(name)
            if step is None:  # a log that does not match the playbook: end that branch
                error = {"kind": "evaluation", "path": "/workflow", "message": f"no step {name!r}"}
                self.emit(
                    "step.exit",
                    name,
                    "FAILED",
                    {
                        "outcome": "error",
                        "event": None,
                        "handled": False,
                        "next": [],
                        "error": error,
                    },
                    error=error["message"],
                )
                continue
            self.route(step)

    def route(self, step: Step) -> None:
        run = self.state.steps[step.name]
        outcome = run.outcome or "error"
        event_name = (
            "loop.done"
            if step.loop is not None
            else ("call.done" if outcome == "ok" else "call.error")
        )
        names = {
            "output": output_view(self.playbook, step.name, run),
            "event": {"name": event_name, "step": step.name},
        }
        try:
            values = self.state.variables()
            changed: dict[str, Any] = {}
            if outcome == "ok":
                # a pipeline's ctx. writes first, then step.set over them (§4.6, §8.5)
                _apply_set(values, changed, run.context_updates)
                if step.set:
                    set_context = self.context(names=names)
                    path = self.step_path(step, "set")
                    _apply_set(values, changed, self.render_set(step.set, set_context, path))
            taken, arc_sets = self.select(step, outcome, names, changed)
            for rendered in arc_sets:
                _apply_set(values, changed, rendered)
        except EvaluationError as exc:
            self.evaluation_error(step, exc, event_name)
            return
        targets = self.record_route(step, changed, taken, run.finish_event_id)
        handled = outcome == "ok" or bool(taken)
        context: dict[str, Any] = {
            "outcome": outcome,
            "event": event_name,
            "handled": handled,
            "next": targets,
        }
        error_text = None
        if outcome == "error":
            context["error"] = run.error
            error_text = str((run.error or {}).get("message") or "step failed")
        self.emit(
            "step.exit",
            step.name,
            "COMPLETED" if outcome == "ok" else "FAILED",
            context,
            error=error_text,
        )
        self.not_taken(step, taken)

    def record_route(
        self, step: Step, changed: dict[str, Any], taken: list[Arc], gen: int | None
    ) -> list[str]:
        if changed:
            self.emit(
                "ctx.updated",
                step.name,
                "CONTEXT",
                {
                    "step": step.name,
                    "gen": _str_id(gen or self.state.position or None),
                    "values": changed,
                },
            )
        targets: list[str] = []
        for arc in taken:
            if arc.step in self.playbook.steps and arc.step not in targets:
                targets.append(arc.step)
        return targets

    def render_set(self, block: Mapping[str, Any], context: Mapping[str, Any], path: str) -> dict:
        try:
            rendered = render_value(dict(block), context)
        except TemplateError as exc:
            raise EvaluationError(exc.message, path + exc.path) from None
        return rendered

    def select(
        self, step: Step, outcome: str, names: Mapping[str, Any], changed: Mapping[str, Any]
    ) -> tuple[list[Arc], list[dict[str, Any]]]:
        """Arcs taken (§4.3, §6.4) and their rendered `set`s."""
        values = {**self.state.values, **changed}
        context = self.context(values=values, names=names)
        taken: list[Arc] = []
        base = self.next_path(step)
        for index, arc in enumerate(step.next.arcs):
            if arc.when is None:
                ok = outcome != "error"
            else:
                try:
                    ok = evaluate_condition(arc.when, context)
                except TemplateError as exc:
                    raise EvaluationError(exc.message, f"{base}/{index}/when") from None
            if ok:
                taken.append(arc)
                if step.next.mode != "inclusive":
                    break
        arc_sets = []
        for arc in taken:
            if arc.set:
                where = f"{base}/{step.next.arcs.index(arc)}/set"
                arc_sets.append(self.render_set(arc.set, context, where))
        return taken, arc_sets

    def next_path(self, step: Step) -> str:
        raw = self.playbook.document["workflow"][step.index].get("next")
        parts = ("next", "arcs") if isinstance(raw, Mapping) else ("next",)
        return self.step_path(step, *parts)

    def not_taken(self, step: Step, taken: list[Arc]) -> None:
        chosen = {arc.step for arc in taken}
        seen: set[str] = set()
        for arc in step.next.arcs:
            target = arc.step
            if target in chosen or target in seen or target not in self.playbook.steps:
                continue
            seen.add(target)
            run = self.state.steps.get(target)
            if run is not None and (run.status in IN_FLIGHT or run.tokens):
                continue
            self.emit("step.skipped", target, "SKIPPED", {"reason": "not_taken", "by": step.name})

    # step 3: dispatch steps holding tokens
    def dispatch(self) -> bool:
        changed = False
        progress = True
        while progress and not self.state.draining and self.state.terminal is None:
            progress = False
            for name, step in self.playbook.steps.items():
                run = self.state.steps.get(name)
                if run is None or not run.tokens:
                    continue
                # (the fold drops tokens into a step in flight; waiting joins keep theirs)
                if run.status in IN_FLIGHT or self.must_wait(name):
                    continue
                self.reach(step)
                progress = changed = True
                if self.state.draining or self.state.unrouted:
                    return True
        return changed

    def must_wait(self, target: str) -> bool:
        """A join waits while another inbound step is live (§6.5)."""
        inbound = self.playbook.inbound.get(target, frozenset()) - {target}
        if len(self.playbook.inbound.get(target, ())) <= 1:
            return False
        sources = set()
        for name, run in self.state.steps.items():
            if name == target or name not in self.playbook.steps:
                continue
            if run.status in IN_FLIGHT:
                sources.add(name)
            elif run.tokens and len(self.playbook.inbound.get(name, ())) <= 1:
                sources.add(name)  # about to be entered in this pass
        for command in self.state.commands.values():
            if command.step != target:
                sources.add(command.step)
        if not sources:
            return False
        seen = set(sources)
        frontier = list(sources)
        while frontier:
            current = frontier.pop()
            if current in inbound:
                return True
            for nxt in self.playbook.targets(current):
                if nxt != target and nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        return False

    def reach(self, step: Step) -> None:
        run = self.state.step(step.name)
        sources = [s for s in run.tokens if s is not None]
        if step.name in self.reached:
            # only a cycle of skipped steps or empty loops comes back within one pass
            message = "reached twice in one pass: a cycle of skipped steps or empty loops"
            self.evaluation_error(
                step, EvaluationError(message, self.step_path(step)), "step.enter"
            )
            return
        self.reached.add(step.name)
        if step.when is not None:
            try:
                go = evaluate_condition(step.when, self.context())
            except TemplateError as exc:
                self.evaluation_error(
                    step, EvaluationError(exc.message, self.step_path(step, "when")), "step.enter"
                )
                return
            if not go:
                self.skip(step, sources)
                return
        if step.loop is not None:
            self.enter_loop(step, sources)
            return
        try:
            body = build_command(
                step,
                self.context(),
                {},
                self.id_names,
                max_bytes=self.limits.command_context_max_bytes,
                keychain_kinds=self.keychain_kinds,
            )
        except EvaluationError as exc:
            self.emit("step.enter", step.name, "ENTERED", {"from": sources})
            self.evaluation_error(step, exc, "step.enter")
            return
        self.emit("step.enter", step.name, "ENTERED", {"from": sources})
        self.issue(step, body.tool_kind, body.context, {})

    def skip(self, step: Step, sources: list[str]) -> None:
        """A false guard: the step is bypassed along its arcs (§4.5)."""
        names = {
            "output": {"status": "skipped", "data": None, "error": None},
            "event": {"name": "step.skipped", "step": step.name},
        }
        try:
            taken, arc_sets = self.select(step, "skipped", names, {})
        except EvaluationError as exc:
            self.evaluation_error(step, exc, "step.skipped")
            return
        changed: dict[str, Any] = {}
        if arc_sets:
            values = self.state.variables()
            for rendered in arc_sets:
                _apply_set(values, changed, rendered)
        targets = self.record_route(step, changed, taken, self.state.position or None)
        self.emit(
            "step.skipped",
            step.name,
            "SKIPPED",
            {"reason": "when", "by": sources, "next": targets},
        )

    def enter_loop(self, step: Step, sources: list[str]) -> None:
        assert step.loop is not None
        loop = step.loop
        context = self.context()
        try:
            items = self.loop_items(step, context)
            limit = self.loop_limit(step, context)
        except EvaluationError as exc:
            self.evaluation_error(step, exc, "step.enter")
            return
        self.emit(
            "step.enter",
            step.name,
            "ENTERED",
            {
                "from": sources,
                "iterations": len(items),
                "iterator": loop.iterator,
                "mode": loop.mode,
                "max_in_flight": limit,
                "items": items,
            },
        )
        if not items:
            self.emit("loop.done", step.name, "COMPLETED", {"iterations": 0, "failed": 0})
            self.route(step)

    def loop_items(self, step: Step, context: Mapping[str, Any]) -> list[Any]:
        assert step.loop is not None
        path = self.step_path(step, "loop", "in")
        try:
            items = render_value(step.loop.items, context)
        except TemplateError as exc:
            raise EvaluationError(exc.message, path + exc.path) from None
        if isinstance(items, str):
            try:
                items = json.loads(items)
            except ValueError:
                raise EvaluationError("loop.in must evaluate to a list", path) from None
        if not isinstance(items, list):
            kind = "null" if items is None else type(items).__name__
            raise EvaluationError(f"loop.in must evaluate to a list, got {kind}", path)
        if len(items) > self.limits.loop_max_items:
            raise EvaluationError(
                f"loop.in has {len(items)} items, above the limit of {self.limits.loop_max_items}",
                path,
            )
        return items

    def loop_limit(self, step: Step, context: Mapping[str, Any]) -> int:
        assert step.loop is not None
        raw = step.loop.max_in_flight
        if raw is None:
            return self.limits.loop_max_in_flight
        path = self.step_path(step, "loop", "spec", "max_in_flight")
        try:
            value = render_value(raw, context)
        except TemplateError as exc:
            raise EvaluationError(exc.message, path) from None
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EvaluationError(f"max_in_flight must be an integer >= 1, got {value!r}", path)
        return value

    def issue(self, step: Step, tool_kind: str, body: dict[str, Any], extra: dict) -> None:
        command_id = str(self.ids())
        meta = {
            "command_id": command_id,
            "step": step.name,
            "tool_kind": tool_kind,
            "pool": self.execution.pool,
            **extra,
        }
        index = self.emit(
            "command.issued", step.name, "PENDING", body, meta=meta, node_type=tool_kind
        )
        command_meta = dict(self.result.events[index]["meta"])
        command_meta.pop("source", None)
        self.result.commands.append(
            Command(
                command_id, step.name, tool_kind, self.execution.pool, body, command_meta, index
            )
        )

    # step 4: top up running loops
    def top_up(self) -> None:
        for name, step in self.playbook.steps.items():
            run = self.state.steps.get(name)
            if step.loop is None or run is None or run.loop is None:
                continue
            if run.loop_done or run.status not in IN_FLIGHT:
                continue
            loop = run.loop
            limit = 1 if loop.mode == "sequential" else max(1, loop.max_in_flight)
            context = None
            while loop.in_flight < limit and loop.next_index < loop.total:
                index = loop.next_index
                if context is None:
                    context = self.context()
                names = iteration_names(loop.iterator, loop.items[index], index, loop.total)
                try:
                    body = build_command(
                        step,
                        context,
                        names,
                        self.id_names,
                        max_bytes=self.limits.command_context_max_bytes,
                        keychain_kinds=self.keychain_kinds,
                    )
                except EvaluationError as exc:
                    self.evaluation_error(step, exc, "loop.iteration")
                    return
                self.issue(
                    step,
                    body.tool_kind,
                    body.context,
                    {
                        "iteration_index": index,
                        "iteration_total": loop.total,
                        "iterator_step": name,
                        "item_var": loop.iterator,
                    },
                )

    # step 5
    def complete(self) -> None:
        state = self.state
        if state.terminal is not None or state.unrouted or state.open_commands():
            return
        # while draining, a loop with items left but nothing running is stalled, not in flight
        if not state.draining and any(run.status in IN_FLIGHT for run in state.steps.values()):
            return
        if state.draining:
            failed = list(state.failed_steps)
            message = "Failed steps: " + ", ".join(failed)
            self.emit(
                "playbook.failed",
                self.execution.path,
                "FAILED",
                {"error": message, "failed_steps": failed, "errors": dict(state.errors)},
                error=message,
            )
            self.result.status = "FAILED"
            self.result.error = message
        else:
            self.emit("playbook.completed", self.execution.path, "COMPLETED", None)
            self.result.status = "COMPLETED"


# --- set (§4.6) -------------------------------------------------------------------------------

_SCOPES = ("ctx.", "iter.", "step.")


def _apply_set(values: dict[str, Any], changed: dict[str, Any], rendered: Mapping) -> None:
    """Apply one rendered `set` to the variables; `changed` collects whole top-level values."""
    for raw_key, value in rendered.items():
        key = str(raw_key)
        for scope in _SCOPES:
            if key.startswith(scope):
                key = key[len(scope) :]
                break
        parts = [p for p in key.split(".") if p] or [key]
        top = parts[0]
        if len(parts) == 1:
            values[top] = value
        else:
            current = values.get(top)
            root = copy.deepcopy(current) if isinstance(current, dict) else {}
            node = root
            for part in parts[1:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[parts[-1]] = value
            values[top] = root
        changed[top] = values[top]


def fold_all(events: Iterable[Mapping[str, Any]]) -> State:
    """The state of a whole log (a fresh fold)."""
    state = State()
    fold(state, events)
    return state
