"""SQL ids and time helpers (envelope.md §1): the spec vectors and the generator's guarantees."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

EPOCH_MS = 1704067200000

# (time UTC, node, seq, id) from envelope.md §1
VECTORS = [
    ("2024-01-01T00:00:00.001", 1, 5, 4198405),
    ("2026-01-01T00:00:00.000", 0, 0, 264905529753600000),
    ("2026-01-01T00:00:00.000", 1, 0, 264905529753604096),
    ("2026-02-01T00:00:00.000", 0, 0, 276139553587200000),
    ("2026-03-15T12:34:56.789", 70, 42, 291549832445976618),
]


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("moment", "node", "seq", "expected"), VECTORS)
def test_vectors(conn: psycopg.Connection, moment: str, node: int, seq: int, expected: int) -> None:
    row = conn.execute(
        """SELECT noetl.snowflake_floor(%(t)s) | (%(node)s::bigint << 12) | %(seq)s AS id,
                  noetl.snowflake_time(%(id)s) AS t,
                  noetl.rfc3339(noetl.snowflake_time(%(id)s)) AS text,
                  noetl.snowflake_floor(noetl.snowflake_time(%(id)s)) AS floor""",
        {"t": _utc(moment), "node": node, "seq": seq, "id": expected},
    ).fetchone()
    assert row["id"] == expected
    assert row["t"] == _utc(moment)
    assert row["text"] == moment + "000Z"
    # the floor of an id's time drops node and sequence
    assert row["floor"] == expected & ~((1 << 22) - 1)


def test_rfc3339_is_utc_with_six_digits_whatever_the_session_zone(conn: psycopg.Connection) -> None:
    conn.execute("SET timezone = 'America/New_York'")
    row = conn.execute(
        "SELECT noetl.rfc3339('2026-03-15T12:34:56.789+02:00') AS a,"
        " noetl.rfc3339('2026-03-15T12:34:56Z') AS b"
    ).fetchone()
    assert row["a"] == "2026-03-15T10:34:56.789000Z"
    assert row["b"] == "2026-03-15T12:34:56.000000Z"


def test_node_id_comes_from_the_setting(conn: psycopg.Connection) -> None:
    default = conn.execute("SELECT noetl.snowflake_id() AS id").fetchone()["id"]
    assert (default >> 12) & 1023 == 1
    conn.execute("SET noetl.node_id = 42")
    chosen = conn.execute("SELECT noetl.snowflake_id() AS id").fetchone()["id"]
    assert (chosen >> 12) & 1023 == 42
    conn.execute("SET noetl.node_id = 2000")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT noetl.snowflake_id()")


def test_guard_keeps_ids_increasing_when_the_clock_is_behind(conn: psycopg.Connection) -> None:
    # Pretend this session already issued an id 10 s in the future (a clock step back).
    ahead = conn.execute(
        "SELECT noetl.snowflake_floor(clock_timestamp() + interval '10 seconds') | 4095 AS id"
    ).fetchone()["id"]
    conn.execute("SELECT set_config('noetl._last_snowflake', %s, false)", (str(ahead),))
    ids = [
        r["id"]
        for r in conn.execute(
            "SELECT g, noetl.snowflake_id() AS id FROM generate_series(1, 50) g ORDER BY g"
        )
    ]
    assert ids[0] > ahead
    assert all(b > a for a, b in zip(ids, ids[1:], strict=False))
    assert all((i >> 12) & 1023 == 1 for i in ids)


def test_concurrent_ids_unique_increasing_and_current(db_url: str) -> None:
    threads = 4
    per_thread = 25_000
    chunk = 5_000
    barrier = threading.Barrier(threads)
    results: list[list[int]] = [[] for _ in range(threads)]
    windows: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def draw(slot: int) -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                barrier.wait(timeout=30)
                for _ in range(per_thread // chunk):
                    before = time.time()
                    ids = [
                        r[1]
                        for r in c.execute(
                            "SELECT g, noetl.snowflake_id() FROM generate_series(1, %s) g"
                            " ORDER BY g",
                            (chunk,),
                        )
                    ]
                    after = time.time()
                    results[slot].extend(ids)
                    windows[slot].append((before, after, ids))
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=draw, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors

    everything = [i for ids in results for i in ids]
    assert len(everything) == threads * per_thread
    assert len(set(everything)) == len(everything), "duplicate snowflake ids"
    for ids in results:
        assert all(b > a for a, b in zip(ids, ids[1:], strict=False)), "not increasing"
    for per_slot in windows:
        for before, after, ids in per_slot:
            for i in (ids[0], ids[-1]):
                seconds = ((i >> 22) + EPOCH_MS) / 1000
                assert before - 1 <= seconds <= after + 1
