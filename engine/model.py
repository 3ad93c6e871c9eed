"""The parsed playbook (dsl.md §2, §4, §6.7, §8): every accepted form normalised once.

`load_playbook(document)` takes a document that `validate_playbook` accepted and returns an
immutable `Playbook`: `next` in one shape (mode + arcs), workbook tools resolved, omitted tools
as `noop`, pipelines and single tools with policy rules as `task_sequence`. The server may
cache the result per `catalog_id`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

API_VERSIONS = ("noetl.io/v2", "noetl.io/v10")
TOP_LEVEL_KEYS = (
    "apiVersion",
    "kind",
    "metadata",
    "workload",
    "keychain",
    "workbook",
    "workflow",
    "executor",
    "vars",
)
STEP_KEYS = ("step", "desc", "when", "input", "args", "tool", "loop", "set", "next", "spec")
RESERVED_NAMES = frozenset(
    [
        "workload",
        "ctx",
        "steps",
        "output",
        "event",
        "iter",
        "loop",
        "input",
        "args",
        "input_data",
        "keychain",
        "execution_id",
        "catalog_id",
        "path",
        "version",
        "job",
        "parent_execution_id",
        "_prev",
        "_results",
        "_task",
        "_attempt",
        "_index",
        "_total",
    ]
)
JINJA_WORDS = frozenset(["and", "or", "not", "in", "is", "if", "else", "true", "false", "none"])
STEP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")

# Kinds a system pool runs in v1 (and v1.1), then kinds that register for other pools.
RUNNABLE_KINDS = ("python", "http", "postgres", "duckdb", "playbook", "task_sequence", "noop")
LATER_KINDS = [
    "ducklake",
    "snowflake",
    "snowflake_transfer",
    "transfer",
    "gcs",
    "container",
    "shell",
    "script",
    "secrets",
    "artifact",
    "nats",
    "gateway",
    "agent",
    "mcp",
    "rhai",
    "iterator",
    "result_fetch",
    "playbooks",
    "subscription",
    "wasm",
]
KNOWN_KINDS = frozenset((*RUNNABLE_KINDS, "workbook", *LATER_KINDS))
END = "end"


def is_reserved(name: str) -> bool:
    return name in RESERVED_NAMES or name.lower() in JINJA_WORDS


class PlaybookError(ValueError):
    """A document `load_playbook` cannot use (validate it first)."""


@dataclass(frozen=True)
class Arc:
    step: str
    when: Any = None  # None: no condition
    set: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Next:
    mode: str = "exclusive"
    arcs: tuple[Arc, ...] = ()


@dataclass(frozen=True)
class Loop:
    items: Any  # `in`: a template or a literal list
    iterator: str
    mode: str = "sequential"
    max_in_flight: Any = None  # None: the engine default; else an int or a template


@dataclass(frozen=True)
class Tool:
    """What one command runs: a single tool, or a task_sequence of labelled tasks."""

    kind: str  # wire kind: the tool's kind, or "task_sequence"
    config: Mapping[str, Any] = field(default_factory=dict)  # single tool, without input/args
    input: Mapping[str, Any] = field(default_factory=dict)  # single tool's own input binding
    tasks: tuple[tuple[str, Mapping[str, Any]], ...] = ()  # task_sequence: (label, config)
    unwrap: str | None = None  # a single tool sent as a one-task sequence: its label


@dataclass(frozen=True)
class Step:
    name: str
    index: int
    tool: Tool
    when: Any = None
    args: Mapping[str, Any] = field(default_factory=dict)
    input: Mapping[str, Any] = field(default_factory=dict)
    loop: Loop | None = None
    set: Mapping[str, Any] = field(default_factory=dict)
    next: Next = field(default_factory=Next)


@dataclass(frozen=True)
class Playbook:
    name: str
    path: str
    entry_step: str
    pool: str | None
    workload: Mapping[str, Any]
    keychain: tuple[Mapping[str, Any], ...]
    steps: Mapping[str, Step]  # in workflow order
    inbound: Mapping[str, frozenset[str]]  # step -> steps with an arc to it
    document: Mapping[str, Any]

    def keychain_kinds(self) -> dict[str, str]:
        return {str(e.get("name")): str(e.get("kind") or "credential") for e in self.keychain}

    def targets(self, name: str) -> frozenset[str]:
        return frozenset(a.step for a in self.steps[name].next.arcs if a.step in self.steps)


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _arc(raw: Any) -> Arc:
    if isinstance(raw, str):
        return Arc(raw)
    if isinstance(raw, Mapping) and isinstance(raw.get("step"), str):
        arc_set = raw.get("set", raw.get("args"))
        return Arc(raw["step"], raw.get("when"), _mapping(arc_set))
    raise PlaybookError(f"not an arc: {raw!r}")


def normalise_next(raw: Any, step_spec: Mapping[str, Any]) -> Next:
    """The four accepted forms of dsl.md §4.3, as one mode and a list of arcs."""
    default_mode = step_spec.get("next_mode") or "exclusive"
    if raw is None:
        return Next(default_mode, ())
    if isinstance(raw, str):
        return Next(default_mode, (Arc(raw),))
    if isinstance(raw, list):
        arcs = tuple(_arc(item) for item in raw)
        names_only = all(isinstance(item, str) for item in raw)
        return Next("inclusive" if names_only else default_mode, arcs)
    if isinstance(raw, Mapping):
        spec = _mapping(raw.get("spec"))
        mode = spec.get("mode") or default_mode
        return Next(mode, tuple(_arc(item) for item in raw.get("arcs") or ()))
    raise PlaybookError(f"not a next: {raw!r}")


def task_items(raw: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Pipeline entries as (label, config): `{name?, kind, ...}` or `{<label>: {kind, ...}}`."""
    out = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise PlaybookError(f"task {index} is not a mapping")
        if "kind" not in item and len(item) == 1:
            label, config = next(iter(item.items()))
            out.append((str(label), _mapping(config)))
        else:
            config = dict(item)
            # a workbook task's name is both its label and the entry it names
            if config.get("kind") == "workbook":
                name = config.get("name")
            else:
                name = config.pop("name", None)
            out.append((str(name or f"task_{index}"), config))
    return out


def _resolve_workbook(config: dict[str, Any], workbook: Mapping[str, Any]) -> dict[str, Any]:
    """`kind: workbook` → the entry's tool with input merged over the entry's own (§6.7)."""
    if config.get("kind") != "workbook":
        return config
    entry = workbook.get(str(config.get("name")))
    if not isinstance(entry, Mapping) or not isinstance(entry.get("tool"), Mapping):
        raise PlaybookError(f"unknown workbook entry {config.get('name')!r}")
    resolved = copy.deepcopy(dict(entry["tool"]))
    base = _mapping(resolved.pop("input", None) or resolved.pop("args", None))
    resolved.pop("args", None)
    own = _mapping(config.get("input") or config.get("args"))
    merged = {**base, **own}
    if merged:
        resolved["input"] = merged
    return resolved


def _split_input(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    config = dict(config)
    bound = config.pop("input", None)
    alias = config.pop("args", None)
    return config, _mapping(bound if bound else alias)


def _has_policy(config: Mapping[str, Any]) -> bool:
    spec = config.get("spec")
    policy = spec.get("policy") if isinstance(spec, Mapping) else None
    return isinstance(policy, Mapping) and bool(policy.get("rules"))


def normalise_tool(raw: Any, step_name: str, workbook: Mapping[str, Any]) -> Tool:
    if raw is None:
        return Tool("noop")
    if isinstance(raw, list):
        tasks = tuple(
            (label, _resolve_workbook(config, workbook)) for label, config in task_items(raw)
        )
        return Tool("task_sequence", tasks=tasks)
    if not isinstance(raw, Mapping):
        raise PlaybookError(f"step {step_name!r}: tool is not a mapping or a list")
    config = _resolve_workbook(dict(raw), workbook)
    if _has_policy(config):
        return Tool("task_sequence", tasks=((step_name, config),), unwrap=step_name)
    kind = str(config.get("kind", "noop"))
    config, bound = _split_input(config)
    return Tool(kind, config=config, input=bound)


def _loop(raw: Any) -> Loop | None:
    if not isinstance(raw, Mapping):
        return None
    spec = _mapping(raw.get("spec"))
    return Loop(
        items=raw.get("in"),
        iterator=str(raw.get("iterator")),
        mode=spec.get("mode") or "sequential",
        max_in_flight=spec.get("max_in_flight"),
    )


def load_playbook(document: Mapping[str, Any]) -> Playbook:
    """Normalise a validated playbook document."""
    metadata = _mapping(document.get("metadata"))
    workbook = {
        entry["name"]: entry
        for entry in document.get("workbook") or ()
        if isinstance(entry, Mapping) and "name" in entry
    }
    steps: dict[str, Step] = {}
    for index, raw in enumerate(document.get("workflow") or ()):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("step"), str):
            raise PlaybookError(f"workflow item {index} is not a step")
        name = raw["step"]
        spec = _mapping(raw.get("spec"))
        steps[name] = Step(
            name=name,
            index=index,
            tool=normalise_tool(raw.get("tool"), name, workbook),
            when=raw.get("when"),
            args=_mapping(raw.get("args")),
            input=_mapping(raw.get("input")),
            loop=_loop(raw.get("loop")),
            set=_mapping(raw.get("set")),
            next=normalise_next(raw.get("next"), spec),
        )
    if not steps:
        raise PlaybookError("the workflow has no steps")
    inbound: dict[str, set[str]] = {name: set() for name in steps}
    for step in steps.values():
        for arc in step.next.arcs:
            if arc.step in inbound:
                inbound[arc.step].add(step.name)
    executor = _mapping(document.get("executor"))
    entry = _mapping(executor.get("spec")).get("entry_step") or "start"
    if entry not in steps:
        raise PlaybookError(f"entry step {entry!r} does not exist")
    name = str(metadata.get("name") or "")
    return Playbook(
        name=name,
        path=str(metadata.get("path") or name),
        entry_step=entry,
        pool=executor.get("pool"),
        workload=_mapping(document.get("workload")),
        keychain=tuple(e for e in document.get("keychain") or () if isinstance(e, Mapping)),
        steps=steps,
        inbound={k: frozenset(v) for k, v in inbound.items()},
        document=document,
    )


def choose_pool(
    request_pool: str | None, playbook: Playbook, path: str, default_pool: str = "default"
) -> str:
    """The execution's pool, first match wins (worker-protocol.md §2)."""
    if request_pool:
        return request_pool
    if playbook.pool:
        return str(playbook.pool)
    if path.startswith("system/"):
        return "system"
    return default_pool
