"""The template context of dsl.md §5.2, built from the fold.

Precedence, highest first: the ids and `job` > `output`/`event`/iterator names > input keys >
`set` values > step names > workload keys. `ctx` and `workload` hold the execution variables
(workload keys with `set` values over them) and never step results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.model import Playbook, Tool
from engine.state import State, StepRun

_OUTPUT_RESERVED = frozenset({"status", "data", "error", "http", "meta"})


@dataclass(frozen=True)
class ExecutionRef:
    """The execution a pass runs for (ids as integers; the engine writes them as strings)."""

    execution_id: int
    catalog_id: int
    path: str
    version: int
    pool: str
    parent_execution_id: int | None = None
    trace: Mapping[str, Any] | None = None

    def ids(self) -> dict[str, Any]:
        execution_id = str(self.execution_id)
        return {
            "execution_id": execution_id,
            "catalog_id": str(self.catalog_id),
            "parent_execution_id": (
                str(self.parent_execution_id) if self.parent_execution_id is not None else None
            ),
            "path": self.path,
            "version": str(self.version),
            "job": {"id": execution_id, "uuid": execution_id, "execution_id": execution_id},
        }


def data_view(tool: Tool, data: Any) -> Any:
    """What a step's (or one iteration's) data looks like in templates (§5.2, §8.5)."""
    if tool.kind != "task_sequence" or not isinstance(data, Mapping):
        return data
    if tool.unwrap is not None:
        return data.get(tool.unwrap)
    merged: dict[str, Any] = {}
    labels = [label for label, _ in tool.tasks]
    for label in labels:
        if label in data:
            merged[label] = data[label]
    for label in labels:
        task_data = data.get(label)
        if isinstance(task_data, Mapping):
            merged.update(task_data)
    for key, value in data.items():
        if key != "_context_updates" and key not in merged:
            merged[key] = value
    merged.pop("_context_updates", None)
    return merged


def step_data(playbook: Playbook, name: str, run: StepRun) -> Any:
    step = playbook.steps.get(name)
    if step is None:
        return run.data
    if step.loop is not None and isinstance(run.data, list):
        return [data_view(step.tool, item) for item in run.data]
    return data_view(step.tool, run.data)


def with_alias(value: Any) -> Any:
    """A mapping without `data` also answers `.data` with itself (§5.2)."""
    if isinstance(value, Mapping) and "data" not in value:
        aliased = dict(value)
        aliased["data"] = dict(value)
        return aliased
    return value


def output_view(
    playbook: Playbook, name: str, run: StepRun, *, skipped: bool = False
) -> dict[str, Any]:
    if skipped:
        return {"status": "skipped", "data": None, "error": None}
    view = with_alias(step_data(playbook, name, run))
    out: dict[str, Any] = {"status": run.outcome, "data": view, "error": run.error}
    if isinstance(view, Mapping):
        for key, value in view.items():
            if key not in _OUTPUT_RESERVED:
                out[key] = value
    step = playbook.steps.get(name)
    if step is not None and step.tool.kind == "http" and step.loop is None:
        raw = run.data if isinstance(run.data, Mapping) else {}
        out["http"] = {"status": raw.get("status_code"), "headers": raw.get("headers")}
    if isinstance(run.error, Mapping) and run.error.get("kind") == "database":
        out["pg"] = {"sqlstate": run.error.get("sqlstate")}
    return out


def build_context(
    playbook: Playbook,
    execution: ExecutionRef,
    state: State,
    *,
    values: Mapping[str, Any] | None = None,
    names: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The execution context; `values` overrides the folded `set` values (a pass in progress),
    `names` adds output/event/iterator names, `inputs` the bound input."""
    current = dict(state.values) if values is None else dict(values)
    variables = {**state.workload, **current}
    context: dict[str, Any] = dict(state.workload)
    steps: dict[str, Any] = {}
    for name, run in state.steps.items():
        if not run.has_result:
            continue
        view = step_data(playbook, name, run)
        context[name] = with_alias(view)
        steps[name] = {"status": run.outcome, "data": view, "error": run.error}
    context.update(current)
    if inputs:
        context.update(inputs)
        context["input"] = dict(inputs)
    if names:
        context.update(names)
    context["workload"] = variables
    context["ctx"] = variables
    context["steps"] = steps
    context.update(execution.ids())
    return context


def iteration_names(iterator: str, item: Any, index: int, total: int) -> dict[str, Any]:
    first, last = index == 0, index == total - 1
    return {
        iterator: item,
        "iter": {
            iterator: item,
            "_index": index,
            "_total": total,
            "_first": first,
            "_last": last,
        },
        "_index": index,
        "_total": total,
        "loop": {"index": index, "first": first, "last": last, "length": total},
    }
