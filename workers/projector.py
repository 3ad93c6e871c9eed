"""The projector role (placeholder until its issue lands: connects and reports health)."""

from __future__ import annotations

from workers.placeholder import idle_main

main = idle_main(database=True)


def report_command(settings, date_from: str | None, date_to: str | None) -> int:
    raise SystemExit("projector report: not available yet")
