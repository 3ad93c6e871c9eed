"""The system role (placeholder until its issue lands: connects and reports health)."""

from __future__ import annotations

from workers.placeholder import idle_main

main = idle_main(database=False)
