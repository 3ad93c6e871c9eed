"""One single tool run by kind, every failure turned into a structured error outcome."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from engine.render import TemplateError
from workers.system.tools import http, noop, playbook, postgres, python
from workers.system.tools.base import (
    ToolContext,
    ToolFailure,
    ToolOutcome,
    error_body,
    exception_error,
)

Tool = Callable[[ToolContext], Awaitable[ToolOutcome]]

SINGLE_TOOLS: dict[str, Tool] = {
    "noop": noop.run,
    "python": python.run,
    "http": http.run,
    "postgres": postgres.run,
    "playbook": playbook.run,
}


async def run_single(ctx: ToolContext) -> ToolOutcome:
    started = time.monotonic()
    try:
        tool = SINGLE_TOOLS.get(ctx.kind)
        if tool is None:
            raise ToolFailure(
                "not_supported", f"tool kind {ctx.kind!r} is not supported by the system pool"
            )
        outcome = await tool(ctx)
    except ToolFailure as exc:
        outcome = ToolOutcome.failed(exc.error)
    except TemplateError as exc:
        outcome = ToolOutcome.failed(error_body("template", exc.message, path=exc.path))
    except TimeoutError as exc:  # a tool's own bound, reached somewhere it did not expect
        outcome = ToolOutcome.failed(
            error_body(
                "timeout", f"{ctx.kind} tool timed out", retryable=True, type=type(exc).__name__
            )
        )
    except Exception as exc:  # a bug or an unforeseen library error: reported, never lost
        outcome = ToolOutcome.failed(exception_error(exc))
    outcome.duration_ms = int((time.monotonic() - started) * 1000)
    return outcome
