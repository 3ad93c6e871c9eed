"""A step's command body (dsl.md §4.2, §5.4; worker-protocol.md §5): binding and rendering.

`build_command` binds the input (`step.args` ⊕ `step.input` ⊕ `tool.input`, each rendered),
renders a single tool's config with the input keys as names, and leaves every string that
mentions `keychain` unrendered: its JSON Pointer (relative to the command context) goes to
`deferred`, and the names it references go to `render_context` with the ids. A pipeline
(`task_sequence`) is rendered by the worker task by task, so its config goes as written and
`render_context` carries every name its templates reference.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.model import Step
from engine.render import (
    TemplateError,
    find_names,
    has_template,
    keychain_names,
    render_text,
    render_value,
)

_ALWAYS = ("execution_id", "catalog_id", "parent_execution_id", "path", "version")


class EvaluationError(Exception):
    """A template or limit failure while the engine evaluates a step (kind "evaluation")."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def as_error(self) -> dict[str, Any]:
        return {"kind": "evaluation", "path": self.path, "message": self.message}


@dataclass
class CommandBody:
    tool_kind: str
    context: dict[str, Any]
    names: set[str] = field(default_factory=set)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _mentions_keychain(text: str) -> bool:
    return "keychain" in text and "keychain" in find_names(text)


class _Renderer:
    def __init__(self, scope: Mapping[str, Any]) -> None:
        self.scope = scope
        self.deferred: list[str] = []
        self.names: set[str] = set()
        self.keychain: dict[str, str] = {}  # keychain entry -> pointer of a string using it

    def render(self, value: Any, pointer: str) -> Any:
        if isinstance(value, str):
            if has_template(value) and _mentions_keychain(value):
                self.deferred.append(pointer)
                self.names |= find_names(value)
                for name in keychain_names(value):
                    self.keychain.setdefault(name, pointer)
                return value
            try:
                return render_value(value, self.scope)
            except TemplateError as exc:
                raise exc.at(pointer) from None
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                name = key
                if isinstance(key, str) and has_template(key):
                    try:
                        name = render_text(key, self.scope)
                    except TemplateError as exc:
                        raise exc.at(pointer + "/" + _escape(key)) from None
                out[str(name)] = self.render(item, pointer + "/" + _escape(str(name)))
            return out
        if isinstance(value, list | tuple):
            return [self.render(item, f"{pointer}/{i}") for i, item in enumerate(value)]
        return value


def _collect_names(value: Any, names: set[str], keychain: dict[str, str], pointer: str) -> None:
    if isinstance(value, str):
        names |= find_names(value)
        for name in keychain_names(value):
            keychain.setdefault(name, pointer)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                names |= find_names(key)
            _collect_names(item, names, keychain, pointer + "/" + _escape(str(key)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _collect_names(item, names, keychain, f"{pointer}/{index}")


def _fail(exc: TemplateError, doc_path: str, local_prefix: str) -> EvaluationError:
    # map the command-relative pointer back into the playbook document
    inner = exc.path[len(local_prefix) :] if exc.path.startswith(local_prefix) else exc.path
    return EvaluationError(exc.message, doc_path + inner)


def build_command(
    step: Step,
    context: Mapping[str, Any],
    names: Mapping[str, Any],
    ids: Mapping[str, Any],
    *,
    max_bytes: int,
    keychain_kinds: Mapping[str, str] | None = None,
) -> CommandBody:
    """Render a step's command body: `context` is the execution context, `names` the
    iterator names, `ids` the execution ids (which win over everything)."""
    context = {**context, **names, **ids}
    doc = f"/workflow/{step.index}"
    binder = _Renderer(context)
    bound: dict[str, Any] = {}
    parts: list[tuple[str, Mapping[str, Any]]] = [("args", step.args), ("input", step.input)]
    if step.tool.kind != "task_sequence":
        parts.append(("tool/input", step.tool.input))
    if step.loop is not None and step.loop.iterator in names:
        # a loop's tool also gets the item and its position as input (§4.2)
        iterator = step.loop.iterator
        bound.update({iterator: names[iterator], "_index": names["_index"]})
        bound["_total"] = names["_total"]
    for where, mapping in parts:
        try:
            bound.update(binder.render(dict(mapping), "/args"))
        except TemplateError as exc:
            raise _fail(exc, f"{doc}/{where}", "/args") from None

    # input keys rank below iterator names and the ids (dsl.md §5.2)
    scope = {**context, **bound, "input": bound, **names, **ids}

    tool = step.tool
    if tool.kind == "task_sequence":
        tool_config: Any = [{label: dict(config)} for label, config in tool.tasks]
        referenced: set[str] = set(binder.names)
        used = dict(binder.keychain)
        _collect_names(tool_config, referenced, used, "/tool_config")
        deferred: list[str] = []
    else:
        renderer = _Renderer(scope)
        try:
            tool_config = renderer.render(dict(tool.config), "/tool_config")
        except TemplateError as exc:
            raise _fail(exc, f"{doc}/tool", "/tool_config") from None
        referenced = binder.names | renderer.names
        deferred = binder.deferred + renderer.deferred
        used = {**renderer.keychain, **binder.keychain}
    for name, pointer in used.items():
        kind = (keychain_kinds or {}).get(name, "credential")
        if kind != "credential":
            where = pointer.replace("/tool_config", "/tool", 1).replace("/args", "/input", 1)
            raise EvaluationError(f"keychain kind '{kind}' is not supported yet", doc + where)

    render_context = {name: context[name] for name in _ALWAYS if name in context}
    for name in sorted(referenced):
        if name in scope and name != "keychain":
            render_context[name] = scope[name]
    body = {
        "tool_config": tool_config,
        "args": bound,
        "render_context": render_context,
        "deferred": deferred,
    }
    size = len(json.dumps(body, default=str).encode())
    if size > max_bytes:
        raise EvaluationError(
            f"command context is {size} bytes, above the limit of {max_bytes}", f"{doc}/tool"
        )
    return CommandBody(tool.kind, body, referenced)
