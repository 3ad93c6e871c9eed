"""The shared normaliser (envelope.md §2.1-§2.3)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.envelope import (
    ERROR_MAX_BYTES,
    FIELDS,
    TRUNCATED,
    EnvelopeError,
    decode_stream_message,
    normalise,
    normalise_status,
    producer_event,
    readable_ids,
)

STREAM = {
    "event_id": "291549832445976618",
    "execution_id": 291549803970564103,
    "catalog_id": "286422309273604099",
    "event_type": "call.done",
    "created_at": "2026-03-15T12:34:56.789+01:00",
}


def test_canonical_output_has_every_key_and_string_ids() -> None:
    out = normalise(STREAM, source="stream")
    assert set(out) == set(FIELDS)
    assert out["execution_id"] == "291549803970564103"
    assert out["created_at"] == "2026-03-15T11:34:56.789000Z"
    assert out["status"] == "COMPLETED" and "producer_status" not in out["meta"]
    assert out["meta"] == {} and out["tenant_id"] == "default"
    assert out["payload_ref"] is None and out["context"] is None


def test_normalising_twice_changes_nothing() -> None:
    once = normalise({**STREAM, "status": "success", "step": "s1"}, source="stream")
    assert normalise(once, source="stream") == once


@pytest.mark.parametrize(
    ("sent", "event_type", "expected"),
    [
        ("success", "x", "COMPLETED"),
        ("OK", "x", "COMPLETED"),
        ("done", "x", "COMPLETED"),
        ("error", "x", "ERROR"),
        ("failure", "x", "FAILED"),
        ("failed", "x", "FAILED"),
        ("canceled", "x", "CANCELLED"),
        ("paused", "x", "PAUSED"),
        ("Whatever", "x", "WHATEVER"),
        (None, "command.failed", "FAILED"),
        (None, "call.error", "FAILED"),
        (None, "playbook.completed", "COMPLETED"),
        (None, "call.done", "COMPLETED"),
        (None, "step.exit", "COMPLETED"),
        (None, "command.started", "RUNNING"),
        (None, None, "RUNNING"),
    ],
)
def test_status_rules(sent: str | None, event_type: str | None, expected: str) -> None:
    assert normalise_status(sent, event_type) == expected


def test_changed_status_is_kept_as_sent() -> None:
    out = normalise({**STREAM, "status": "success"}, source="stream")
    assert out["status"] == "COMPLETED" and out["meta"]["producer_status"] == "success"
    same = normalise({**STREAM, "status": "RUNNING"}, source="stream")
    assert "producer_status" not in same["meta"]


def test_aliases_and_canonical_wins() -> None:
    raw = {
        "execution_id": "5",
        "name": "step.enter",
        "step": "fetch",
        "payload": {"a": 1},
        "timestamp": "2026-01-01T00:00:00",
        "command_id": 77,
        "attempt": 2,
        "actionable": False,
        "loop_event_id": 9,
        "meta": {"worker_id": "w-1", "attempt": 3},
    }
    out = normalise(raw, source="http")
    assert out["event_type"] == "step.enter" and out["node_name"] == "fetch"
    assert out["node_id"] == "fetch" and out["context"] == {"a": 1}
    assert out["created_at"] == "2026-01-01T00:00:00.000000Z"
    assert out["worker_id"] == "w-1"
    assert out["meta"]["command_id"] == "77" and out["meta"]["loop_event_id"] == "9"
    assert out["meta"]["attempt"] == 3  # meta's own value wins over the top-level alias
    assert out["meta"]["actionable"] is False
    both = normalise({**raw, "event_type": "call.done"}, source="http")
    assert both["event_type"] == "call.done"
    with pytest.raises(EnvelopeError) as strict:
        normalise({**raw, "event_type": "call.done"}, source="http", strict_aliases=True)
    assert strict.value.field == "name"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"execution_id": None}, "execution_id"),
        ({"event_id": None}, "event_id"),
        ({"catalog_id": None}, "catalog_id"),
        ({"event_type": None}, "event_type"),
        ({"created_at": None}, "created_at"),
        ({"event_id": "12a"}, "event_id"),
        ({"event_id": 0}, "event_id"),
        ({"event_id": 2**63}, "event_id"),
        ({"event_id": True}, "event_id"),
        ({"parent_event_id": 1.5}, "parent_event_id"),
        ({"event_type": "a b"}, "event_type"),
        ({"event_type": "x" * 129}, "event_type"),
        ({"node_name": "x" * 513}, "node_name"),
        ({"node_type": 5}, "node_type"),
        ({"status": "S" * 33}, "status"),
        ({"status": 1}, "status"),
        ({"context": [1]}, "context"),
        ({"result": "r"}, "result"),
        ({"meta": []}, "meta"),
        ({"meta": {"command_id": "abc"}}, "meta.command_id"),
        ({"duration": "1"}, "duration"),
        ({"duration": -0.5}, "duration"),
        ({"duration": float("inf")}, "duration"),
        ({"worker_id": "w" * 257}, "worker_id"),
        ({"tenant_id": "t" * 129}, "tenant_id"),
        ({"created_at": "2026-03-15T12:34:56"}, "created_at"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": 1700000000}, "created_at"),
        ({"payload_ref": "x"}, "payload_ref"),
    ],
)
def test_stream_rejects_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(EnvelopeError) as refused:
        normalise({**STREAM, **change}, source="stream")
    assert refused.value.field == field
    assert refused.value.kind == "invalid"
    assert str(refused.value).startswith(field)


def test_http_needs_only_the_execution() -> None:
    out = normalise({"execution_id": 1, "name": "x.y"}, source="http")
    assert out["event_id"] is None and out["created_at"] is None and out["catalog_id"] is None
    with pytest.raises(EnvelopeError):
        normalise({"event_type": "x.y"}, source="http")
    with pytest.raises(EnvelopeError):
        normalise({"execution_id": 1}, source="http", require=("event_id",))


def test_error_is_cut_to_one_mebibyte() -> None:
    out = normalise({**STREAM, "error": "é" * ERROR_MAX_BYTES}, source="stream")
    assert out["error"].endswith(TRUNCATED)
    assert len(out["error"].encode()) <= ERROR_MAX_BYTES
    structured = normalise({**STREAM, "error": {"message": "x"}}, source="stream")
    assert structured["error"] == '{"message":"x"}'


def test_producer_event_moves_the_id_to_meta() -> None:
    out = producer_event(normalise({**STREAM}, source="http"))
    assert out["event_id"] is None
    assert out["meta"]["producer_event_id"] == STREAM["event_id"]


def test_decode_stream_message() -> None:
    assert decode_stream_message(json.dumps(STREAM).encode()) == STREAM
    for body, kind in (
        (b"{", "decode"),
        (b"\xff", "decode"),
        (b"[]", "invalid"),
        (b"1", "invalid"),
    ):
        with pytest.raises(EnvelopeError) as refused:
            decode_stream_message(body)
        assert refused.value.kind == kind and refused.value.field == "body"
    with pytest.raises(EnvelopeError) as big:
        decode_stream_message(b" " * 11, max_bytes=10)
    assert big.value.kind == "too_large"


def test_readable_ids() -> None:
    assert readable_ids({"execution_id": "5", "event_id": 6}) == (5, 6)
    assert readable_ids({"execution_id": "x"}) == (None, None)
    assert readable_ids([1]) == (None, None)


ids = st.integers(1, 2**63 - 1)


@given(
    event_id=ids,
    as_text=st.booleans(),
    status=st.one_of(st.none(), st.sampled_from(["ok", "Done", "FAILED", "canceled", "x"])),
    extra=st.dictionaries(st.text(max_size=5).map(lambda k: "x_" + k), st.integers(), max_size=3),
)
def test_ids_round_trip_and_normalising_is_idempotent(
    event_id: int, as_text: bool, status: str | None, extra: dict
) -> None:
    raw = {**extra, **STREAM, "event_id": str(event_id) if as_text else event_id}
    if status is not None:
        raw["status"] = status
    out = normalise(raw, source="stream")
    assert out["event_id"] == str(event_id)
    assert json.loads(json.dumps(out))["event_id"] == str(event_id)
    assert normalise(out, source="stream") == out
