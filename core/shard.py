"""The event shard function (envelope.md §5.3), shared with the NoETL Rust server."""

from __future__ import annotations

import struct

import xxhash


def shard_for(execution_id: int, shard_count: int) -> int:
    if shard_count <= 1:
        return 0
    encoded = struct.pack("<q", execution_id)
    return xxhash.xxh64_intdigest(encoded, seed=0) % shard_count


def owned_shards(ordinal: int, replicas: int, shard_count: int) -> list[int]:
    """Shards a projector pod owns: every s with s mod R = i (envelope.md §7.1)."""
    return [s for s in range(shard_count) if s % replicas == ordinal]
