"""The system role: the system worker pool daemon (workers/system/pool.py) and its tools."""

from __future__ import annotations

from workers.system.pool import main

__all__ = ["main"]
