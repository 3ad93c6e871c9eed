"""noop: no config, data `{}`, always ok (dsl.md §8.0)."""

from __future__ import annotations

from workers.system.tools.base import ToolContext, ToolOutcome


async def run(ctx: ToolContext) -> ToolOutcome:
    return ToolOutcome(status="ok", data={})
