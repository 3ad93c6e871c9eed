"""Builders shared by the system pool's tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from workers.system.run import ToolServices


def with_settings(services: ToolServices, **changes: Any) -> ToolServices:
    return replace(services, settings=replace(services.settings, **changes))


def command(
    tool_config: Any,
    *,
    args: dict[str, Any] | None = None,
    render_context: dict[str, Any] | None = None,
    deferred: list[str] | None = None,
    step: str = "start",
) -> dict[str, Any]:
    """A claim response body (worker-protocol.md §5) for one tool."""
    kind = "task_sequence" if isinstance(tool_config, list) else tool_config.get("kind")
    return {
        "status": "ok",
        "event_id": 612345678901234601,
        "execution_id": 612345678901234567,
        "node_id": step,
        "node_name": step,
        "action": kind,
        "context": {
            "tool_config": tool_config,
            "args": args or {},
            "render_context": {"execution_id": "612345678901234567", **(render_context or {})},
            "deferred": deferred or [],
        },
        "meta": {"command_id": "612345678901234600", "step": step, "tool_kind": kind},
    }
