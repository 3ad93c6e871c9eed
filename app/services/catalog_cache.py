"""The per-process catalog cache (api.md §6.1): an LRU with a TTL, emptied by NOTIFY.

Register, delete and restore send `NOTIFY noetl_catalog {"path"}` at commit; the listen hub
calls `invalidate(path)` in every server process. A generation counter closes the race where a
lookup reads the old row, the NOTIFY lands, and the lookup then stores the old row: a value
is stored only when no invalidation happened since its read began.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.timefmt import rfc3339

TTL_SECONDS = 300.0
Key = tuple[Any, ...]


@dataclass(frozen=True)
class CatalogEntry:
    catalog_id: int
    path: str
    version: int
    kind: str
    content: str | None
    layout: Any
    payload: Any
    meta: Any
    created_at: datetime
    archived_at: datetime | None
    body: bytes  # the CatalogEntry JSON of api.md §6.3, rendered once

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CatalogEntry:
        shape = {
            "catalog_id": str(row["catalog_id"]),
            "path": row["path"],
            "version": row["version"],
            "kind": row["kind"],
            "content": row["content"],
            "layout": row["layout"],
            "payload": row["payload"],
            "meta": row["meta"],
            "created_at": rfc3339(row["created_at"]),
            "archived_at": rfc3339(row["archived_at"]) if row["archived_at"] else None,
        }
        body = json.dumps(shape, ensure_ascii=False, separators=(",", ":")).encode()
        fields = {k: row[k] for k in cls.__dataclass_fields__ if k != "body"}
        return cls(body=body, **fields)


class CatalogCache:
    def __init__(self, size: int, ttl: float = TTL_SECONDS) -> None:
        self.size = max(0, size)
        self.ttl = ttl
        self._entries: OrderedDict[Key, tuple[float, CatalogEntry]] = OrderedDict()
        self.generation = 0

    def get(self, key: Key) -> CatalogEntry | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        expires, entry = hit
        if time.monotonic() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Key, entry: CatalogEntry, generation: int) -> None:
        """Store `entry` unless the cache was invalidated after `generation` was read."""
        if generation != self.generation or self.size == 0:
            return
        self._entries[key] = (time.monotonic() + self.ttl, entry)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def invalidate(self, path: str) -> None:
        """Drop every entry of the path: its lookups by path and by id (archived_at changes)."""
        self.generation += 1
        for key in [k for k, (_, e) in self._entries.items() if e.path == path or path in k]:
            self._entries.pop(key, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def on_notify(self, channel: str, payload: str) -> None:
        try:
            path = json.loads(payload)["path"]
        except (ValueError, KeyError, TypeError):
            self.clear()  # an unreadable notification: be safe
            return
        self.invalidate(str(path))
