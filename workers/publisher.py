"""The publisher role (placeholder until its issue lands: connects and reports health)."""

from __future__ import annotations

from workers.placeholder import idle_main

main = idle_main(database=True)


def requeue_dead_command(settings, ids: list[str]) -> int:
    raise SystemExit("outbox requeue-dead: not available yet")
