"""64-bit snowflake ids (envelope.md §1): the Python generator and the id parsers."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import zlib
from datetime import UTC, datetime

EPOCH_MS = 1704067200000  # 2024-01-01T00:00:00Z
MAX_ID = 2**63 - 1
_ID_TEXT = re.compile(r"^[0-9]{1,19}$")


class InvalidId(ValueError):
    """A value that is not an id; the message says why."""


def make_id(ms: int, node: int, seq: int) -> int:
    return ((ms - EPOCH_MS) << 22) | (node << 12) | seq


def id_time_ms(value: int) -> int:
    """Unix milliseconds at which the id was minted."""
    return (value >> 22) + EPOCH_MS


def id_datetime(value: int) -> datetime:
    return datetime.fromtimestamp(id_time_ms(value) / 1000, tz=UTC)


def floor_id(moment: datetime) -> int:
    """Smallest id of that millisecond (node 0, sequence 0)."""
    return make_id(int(moment.timestamp() * 1000), 0, 0)


def parse_id(value: object, *, allow_zero: bool = False) -> int:
    """Accept a JSON integer or a decimal string in 1..2^63-1 (0 only for cursors)."""
    if isinstance(value, bool):
        raise InvalidId("must be an id, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _ID_TEXT.match(value):
        number = int(value)
    else:
        raise InvalidId("must be an integer or a decimal string of up to 19 digits")
    low = 0 if allow_zero else 1
    if not low <= number <= MAX_ID:
        raise InvalidId(f"must be within {low}..{MAX_ID}")
    return number


def default_node_id() -> int:
    key = f"{socket.gethostname()}:{os.getpid()}".encode()
    return 64 + zlib.crc32(key) % 960


class Snowflake:
    """Strictly increasing ids per process; waits on overflow, tolerates clock steps back."""

    def __init__(self, node_id: int | None = None, clock=time.time) -> None:
        node = default_node_id() if node_id is None else node_id
        if not 0 <= node <= 1023:
            raise ValueError("node id must be within 0..1023")
        self.node_id = node
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ms = 0
        self._seq = 0

    def __call__(self) -> int:
        with self._lock:
            ms = max(int(self._clock() * 1000), self._last_ms)
            if ms == self._last_ms:
                self._seq += 1
                while self._seq > 4095:
                    time.sleep(0.0002)
                    now = int(self._clock() * 1000)
                    if now > self._last_ms:
                        ms, self._seq = now, 0
            else:
                self._seq = 0
            self._last_ms = ms
            return make_id(ms, self.node_id, self._seq)


_default: Snowflake | None = None


def new_id() -> int:
    """An id from the process-wide generator (node from NOETL_SNOWFLAKE_NODE_ID or derived)."""
    global _default
    if _default is None:
        node = os.environ.get("NOETL_SNOWFLAKE_NODE_ID")
        _default = Snowflake(int(node) if node else None)
    return _default()
