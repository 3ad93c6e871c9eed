"""The Python snowflake generator, id parsing and the shard function against the spec vectors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.ids import MAX_ID, InvalidId, Snowflake, floor_id, id_time_ms, make_id, parse_id
from core.shard import owned_shards, shard_for
from core.timefmt import rfc3339

VECTORS = [
    ("2024-01-01T00:00:00.001", 1, 5, 4198405),
    ("2026-01-01T00:00:00.000", 0, 0, 264905529753600000),
    ("2026-01-01T00:00:00.000", 1, 0, 264905529753604096),
    ("2026-02-01T00:00:00.000", 0, 0, 276139553587200000),
    ("2026-03-15T12:34:56.789", 70, 42, 291549832445976618),
]


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(("moment", "node", "seq", "expected"), VECTORS)
def test_vectors(moment: str, node: int, seq: int, expected: int) -> None:
    assert make_id(_ms(moment), node, seq) == expected
    assert id_time_ms(expected) == _ms(moment)
    if node == 0 and seq == 0:
        assert floor_id(datetime.fromisoformat(moment).replace(tzinfo=UTC)) == expected


def test_generator_reproduces_a_vector_with_a_fixed_clock() -> None:
    clock_ms = _ms("2026-03-15T12:34:56.789")
    gen = Snowflake(70, clock=lambda: clock_ms / 1000)
    ids = [gen() for _ in range(43)]  # sequences 0..42 within one millisecond
    assert ids[-1] == 291549832445976618


def test_generator_strictly_increases_when_the_clock_goes_back() -> None:
    times = iter([100.0, 100.0, 99.0, 99.0, 101.0])
    gen = Snowflake(64, clock=lambda: next(times))
    ids = [gen() for _ in range(5)]
    assert ids == sorted(set(ids))


def test_generator_waits_for_the_next_millisecond_on_overflow() -> None:
    gen = Snowflake(64)
    ids = [gen() for _ in range(10000)]
    assert ids == sorted(set(ids))


@given(st.integers(min_value=1, max_value=MAX_ID))
def test_id_round_trips_through_json_as_a_string(value: int) -> None:
    assert parse_id(json.loads(json.dumps(str(value)))) == value
    assert parse_id(value) == value


@pytest.mark.parametrize("bad", [0, -1, MAX_ID + 1, "12a", "", " 1", True, 1.5, None, "1" * 20])
def test_parse_id_rejects(bad: object) -> None:
    with pytest.raises(InvalidId):
        parse_id(bad)


def test_parse_id_allows_zero_for_cursors() -> None:
    assert parse_id("0", allow_zero=True) == 0


@pytest.mark.parametrize(
    ("execution_id", "count", "shard"),
    [
        (1, 4, 1),
        (42, 4, 3),
        (325, 4, 0),
        (325, 8, 4),
        (320816801799737344, 16, 14),
        (291549803970564103, 16, 1),
        (9223372036854775807, 4, 0),
        (5, 1, 0),
    ],
)
def test_shard_vectors(execution_id: int, count: int, shard: int) -> None:
    assert shard_for(execution_id, count) == shard


def test_owned_shards_partition_the_space() -> None:
    owned = [owned_shards(i, 3, 16) for i in range(3)]
    assert sorted(s for shards in owned for s in shards) == list(range(16))


def test_rfc3339_has_six_digits_and_z() -> None:
    assert rfc3339(datetime(2026, 3, 15, 12, 34, 56, 789000, tzinfo=UTC)) == (
        "2026-03-15T12:34:56.789000Z"
    )
