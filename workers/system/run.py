"""Run one claimed command: `await run_tool(claim_body, services) -> ToolOutcome`.

The claim body is worker-protocol.md §5's: `action` (the tool kind), `node_name`,
`execution_id`, and `context` = `{tool_config, args, render_context, deferred}`. The runner
resolves the `keychain.<name>` aliases the deferred strings mention, renders exactly those
strings (dsl.md §5.4), runs the tool, then enforces the inline size limit (dsl.md §9) and
replaces every resolved secret in the outcome with `***` (worker-protocol.md §7).

The daemon turns the outcome into events: `ok` → call.done + command.completed with
`outcome.result()`, `error` → call.error (`error=outcome.error`, `result=outcome.result()`)
+ command.failed. run_tool never raises for a tool's failure; only cancellation propagates.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

from engine.render import TemplateError, render_value
from workers.system.tools import task_sequence
from workers.system.tools.base import (
    CredentialError,
    ToolContext,
    ToolFailure,
    ToolOutcome,
    ToolServices,
    error_body,
    exception_error,
)
from workers.system.tools.dispatch import run_single

__all__ = ["CredentialError", "ToolOutcome", "ToolServices", "run_tool"]

SECRET_MIN_CHARS = 4
REDACTED = "***"
_KEYCHAIN_REF = re.compile(
    r"""keychain\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_-]*)|\[\s*['"]([^'"]+)['"]\s*\])"""
)


def _kind_of(command: dict[str, Any], tool_config: Any) -> str:
    if isinstance(tool_config, list):
        return "task_sequence"
    kind = command.get("action")
    if isinstance(tool_config, dict) and not kind:
        kind = tool_config.get("kind")
    return str(kind or "")


def _pointer_parts(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ToolFailure("config", f"deferred entry {pointer!r} is not a JSON Pointer")
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def _locate(doc: Any, parts: list[str]) -> tuple[Any, Any]:
    """(container, key) of the pointer's target inside `doc`."""
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    return node, int(last) if isinstance(node, list) else last


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def keychain_names(texts: Iterator[str]) -> set[str]:
    names: set[str] = set()
    for text in texts:
        if "keychain" in text:
            for dotted, quoted in _KEYCHAIN_REF.findall(text):
                names.add(dotted or quoted)
    return names


async def _resolve_keychain(ctx: ToolContext, names: set[str]) -> None:
    for name in sorted(names):
        cred = await ctx.credential(name)
        ctx.keychain[name] = cred["data"]


def _render_deferred(body: dict[str, Any], deferred: list[Any], ctx: ToolContext) -> None:
    """Render exactly the deferred strings, once, in place."""
    context = {**ctx.args, **ctx.render_context, "keychain": ctx.keychain}
    for pointer in deferred:
        parts = _pointer_parts(str(pointer))
        if not parts:
            continue
        try:
            container, key = _locate(body, parts)
            value = container[key]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ToolFailure("config", f"deferred pointer {pointer!r} names nothing") from None
        try:
            container[key] = render_value(value, context)
        except TemplateError as exc:
            raise TemplateError(exc.message, str(pointer) + exc.path) from None


def _as_dict(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ToolFailure("config", f"command {name} must be a mapping")
    return value


def bound_input(body: dict[str, Any]) -> dict[str, Any]:
    """The tool's input: the engine's `args` over the tool's own `input`/`args` (dsl.md §4.2)."""
    tool_config = body.get("tool_config")
    config = tool_config if isinstance(tool_config, dict) else {}
    return {
        **_as_dict(config.get("args"), "tool_config.args"),
        **_as_dict(config.get("input"), "tool_config.input"),
        **_as_dict(body.get("input"), "input"),
        **_as_dict(body.get("args"), "args"),
    }


def _build_context(command: dict[str, Any], services: ToolServices) -> tuple[ToolContext, dict]:
    body = command.get("context")
    if not isinstance(body, dict):
        raise ToolFailure("config", "command has no context")
    body = copy.deepcopy(body)
    tool_config = body.get("tool_config")
    kind = _kind_of(command, tool_config)
    if not kind:
        raise ToolFailure("config", "command names no tool kind")
    meta = _as_dict(command.get("meta"), "meta")
    execution_id = command.get("execution_id") or meta.get("execution_id") or ""
    step = command.get("node_name") or command.get("step") or meta.get("step") or ""
    ctx = ToolContext(
        kind=kind,
        config={},
        args=bound_input(body),
        render_context=_as_dict(body.get("render_context"), "render_context"),
        execution_id=str(execution_id),
        step=str(step),
        services=services,
    )
    return ctx, body


async def _run(ctx: ToolContext, body: dict[str, Any]) -> ToolOutcome:
    deferred = body.get("deferred") or []
    if not isinstance(deferred, list):
        raise ToolFailure("config", "deferred must be a list of JSON Pointers")
    if ctx.kind == "task_sequence":
        # Every task renders on this worker, so any of its strings may name a keychain entry.
        await _resolve_keychain(ctx, keychain_names(_strings(body.get("tool_config"))))
        ctx.config = {"tasks": body.get("tool_config")}
        return await task_sequence.run(ctx)
    texts: list[str] = []
    for pointer in deferred:
        try:
            container, key = _locate(body, _pointer_parts(str(pointer)))
            texts.extend(_strings(container[key]))
        except (KeyError, IndexError, ValueError, TypeError):
            continue  # reported by _render_deferred
    await _resolve_keychain(ctx, keychain_names(iter(texts)))
    _render_deferred(body, deferred, ctx)
    ctx.args = bound_input(body)  # again: deferred strings may sit in the input
    tool_config = body.get("tool_config")
    ctx.config = tool_config if isinstance(tool_config, dict) else {}
    return await run_single(ctx)


async def run_tool(command: dict[str, Any], services: ToolServices) -> ToolOutcome:
    """Run a claimed command's tool; always an outcome, never an exception (but cancellation)."""
    ctx: ToolContext | None = None
    try:
        ctx, body = _build_context(command, services)
        outcome = await _run(ctx, body)
    except ToolFailure as exc:  # includes CredentialError
        outcome = ToolOutcome.failed(exc.error)
    except TemplateError as exc:
        outcome = ToolOutcome.failed(error_body("template", exc.message, path=exc.path))
    except Exception as exc:  # a bug must still end as call.error, never as a hung command
        outcome = ToolOutcome.failed(exception_error(exc))
    outcome = redact(outcome, ctx.secrets if ctx else set())
    return enforce_size_limit(outcome, services.settings.result_inline_max_bytes)


def result_size(outcome: ToolOutcome) -> int:
    return len(json.dumps(outcome.result(), ensure_ascii=False, default=str).encode())


def enforce_size_limit(outcome: ToolOutcome, limit: int) -> ToolOutcome:
    """A result above the inline cap becomes a `size_limit` error outcome (dsl.md §9)."""
    size = result_size(outcome)
    if size <= limit:
        return outcome
    error = error_body(
        "size_limit",
        f"result is {size} bytes, above the inline limit of {limit} bytes",
        bytes=size,
        limit=limit,
    )
    # stdout/stderr are dropped with the data, so the replacement is always small.
    return ToolOutcome.failed(error, duration_ms=outcome.duration_ms, exit_code=outcome.exit_code)


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    return value


def redact(outcome: ToolOutcome, secrets: set[str]) -> ToolOutcome:
    """Every resolved secret value of 4 characters or more, replaced by `***`."""
    found = sorted((s for s in secrets if len(s) >= SECRET_MIN_CHARS), key=len, reverse=True)
    if not found:
        return outcome
    for name in ("data", "error", "stdout", "stderr", "http", "pg"):
        setattr(outcome, name, _scrub(getattr(outcome, name), found))
    return outcome
