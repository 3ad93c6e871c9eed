"""The one event normaliser (envelope.md §2.1-§2.3): aliases, status, ids, limits.

`normalise(raw, source=...)` turns accepted input into the canonical envelope, a dict with
every key of §2.1 (explicit None when empty), ids as decimal strings and `created_at` in the
RFC 3339 form every role emits. Anything it cannot accept raises `EnvelopeError` naming the
field. The server's event routes (source "http") and the projector (source "stream") share it,
so a status is normalised in exactly one place.

`decode_stream_message(body)` is the projector's first step for a JetStream message: size
limit, UTF-8 JSON, an object.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from core.ids import InvalidId, parse_id
from core.timefmt import rfc3339

Source = Literal["http", "stream"]

DEFAULT_EVENT_MAX_BYTES = 16 * 1024 * 1024
ERROR_MAX_BYTES = 1024 * 1024
TRUNCATED = "…[truncated]"

ID_FIELDS = (
    "event_id",
    "execution_id",
    "catalog_id",
    "parent_event_id",
    "parent_execution_id",
    "prev_event_id",
)
# Canonical key order of §2.1 (the order is not a contract; a stable one reads better).
FIELDS = (
    *ID_FIELDS,
    "event_type",
    "node_id",
    "node_name",
    "node_type",
    "status",
    "context",
    "result",
    "meta",
    "error",
    "duration",
    "worker_id",
    "created_at",
    "tenant_id",
    "organization_id",
    "payload_ref",
)
# What a stream message must carry; the server fills these itself for HTTP producers.
STREAM_REQUIRED = ("execution_id", "event_id", "catalog_id", "event_type", "created_at")

_ALIASES = (
    ("event_type", ("name",)),
    ("node_name", ("step",)),
    ("context", ("payload",)),
    ("created_at", ("timestamp", "event_time")),
)
# Top-level fields that live in meta (§2.3); the id-valued ones are stored as strings.
_META_FIELDS = (
    "command_id",
    "attempt",
    "attempts",
    "actionable",
    "informative",
    "stage_id",
    "frame_id",
    "loop_event_id",
)
_META_IDS = ("command_id", "loop_event_id", "producer_event_id", "parent_cancel_id")
_TEXT_LIMITS = (
    ("node_id", 512),
    ("node_name", 512),
    ("node_type", 128),
    ("worker_id", 256),
)
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_CANONICAL_TIME = re.compile(r"^[1-9]\d{3}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
_ALIAS_KEYS = frozenset(alias for _, aliases in _ALIASES for alias in aliases)
_META_FIELD_SET = frozenset(_META_FIELDS)
_STATUS_ALIASES = {
    "SUCCESS": "COMPLETED",
    "OK": "COMPLETED",
    "DONE": "COMPLETED",
    "FAILURE": "FAILED",
    "CANCELED": "CANCELLED",
}
# Statuses that are already canonical; anything else goes through normalise_status.
_CANONICAL_STATUSES = frozenset(
    {
        "PENDING",
        "STARTED",
        "ENTERED",
        "RUNNING",
        "PAUSED",
        "CONTEXT",
        "COMPLETED",
        "FAILED",
        "ERROR",
        "CANCELLED",
        "SKIPPED",
    }
)

try:  # orjson is several times faster on the projector's hot path; stdlib json otherwise
    import orjson

    def _loads(data: bytes) -> Any:
        return orjson.loads(data)

except ImportError:  # pragma: no cover - orjson is a declared dependency

    def _loads(data: bytes) -> Any:
        return json.loads(data)


class EnvelopeError(ValueError):
    """Input the normaliser cannot accept. `kind` is the projector's reject reason:
    `decode` (not JSON), `too_large`, or `invalid` (anything else)."""

    def __init__(self, field: str, reason: str, kind: str = "invalid") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.kind = kind


def decode_stream_message(body: bytes, max_bytes: int = DEFAULT_EVENT_MAX_BYTES) -> dict:
    """The JSON object of a message body, or EnvelopeError (decode / too_large / invalid)."""
    if len(body) > max_bytes:
        raise EnvelopeError("body", f"{len(body)} bytes exceed {max_bytes}", "too_large")
    try:
        value = _loads(body)
    except ValueError as exc:  # orjson.JSONDecodeError and json.JSONDecodeError both are
        raise EnvelopeError("body", f"not UTF-8 JSON: {exc}", "decode") from None
    if not isinstance(value, dict):
        raise EnvelopeError("body", f"a JSON {type(value).__name__}, not an object")
    return value


def normalise_status(status: object, event_type: str | None) -> str:
    """Canonical status (§2.3): upper case with the aliases folded; derived when absent."""
    if status is None or status == "":
        kind = (event_type or "").lower()
        if "failed" in kind or "error" in kind:
            return "FAILED"
        if "completed" in kind or "done" in kind or "exit" in kind:
            return "COMPLETED"
        return "RUNNING"
    if not isinstance(status, str):
        raise EnvelopeError("status", "must be a string")
    upper = status.upper()
    upper = _STATUS_ALIASES.get(upper, upper)
    if len(upper) > 32:
        raise EnvelopeError("status", "longer than 32 characters")
    return upper


def readable_ids(raw: object) -> tuple[int | None, int | None]:
    """(execution_id, event_id) of a raw message when readable, for dead-letter rows."""
    if not isinstance(raw, Mapping):
        return None, None
    found: list[int | None] = []
    for name in ("execution_id", "event_id"):
        try:
            found.append(parse_id(raw.get(name)))
        except InvalidId:
            found.append(None)
    return found[0], found[1]


def normalise(
    raw: Mapping[str, Any],
    *,
    source: Source,
    require: Iterable[str] | None = None,
    strict_aliases: bool = False,
) -> dict[str, Any]:
    """The canonical envelope of `raw`, or EnvelopeError naming the field.

    `execution_id` is always required; `require` adds fields (default: STREAM_REQUIRED for the
    stream, nothing more for HTTP, where the server assigns ids and time). A timestamp without
    offset is read as UTC on HTTP input and rejected on the stream. With `strict_aliases`, an
    alias and its canonical field with different values are an error (api.md §8), otherwise
    the canonical field wins (envelope.md §2.3). The input is never modified.
    """
    if not isinstance(raw, Mapping):
        raise EnvelopeError("event", "must be an object")
    out: dict[str, Any] = {}
    for name in ID_FIELDS:
        value = raw.get(name)
        # the decimal string the stream carries is kept as is (no sign, no leading zero)
        if (
            type(value) is str
            and 0 < len(value) < 19
            and value.isdigit()
            and value.isascii()
            and value[0] != "0"
        ):
            out[name] = value
        else:
            out[name] = _id_text(name, value)

    values: Mapping[str, Any] = raw
    if not raw.keys().isdisjoint(_ALIAS_KEYS):  # iterates the few aliases, not the fields
        merged = dict(raw)
        for canonical, aliases in _ALIASES:
            for alias in aliases:
                if merged.get(alias) is None:
                    continue
                current = merged.get(canonical)
                if current is None:
                    merged[canonical] = merged[alias]
                elif strict_aliases and current != merged[alias]:
                    raise EnvelopeError(alias, f"differs from {canonical}")
        values = merged

    event_type = values.get("event_type")
    if event_type is not None and (
        not isinstance(event_type, str) or not _EVENT_TYPE.match(event_type)
    ):
        raise EnvelopeError("event_type", "must be 1..128 characters of [A-Za-z0-9_.:-]")
    out["event_type"] = event_type

    meta = values.get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise EnvelopeError("meta", "must be an object")
    else:
        meta = dict(meta)
    if not values.keys().isdisjoint(_META_FIELD_SET):
        for name in _META_FIELDS:
            value = values.get(name)
            if value is not None and meta.get(name) is None:
                meta[name] = value
    if meta and not meta.keys().isdisjoint(_META_IDS):
        for name in _META_IDS:
            value = meta.get(name)
            if value is not None:
                meta[name] = _id_text(f"meta.{name}", value)

    for name, limit in _TEXT_LIMITS:
        value = values.get(name)
        if value is None and name == "worker_id":
            value = meta.get("worker_id")
        if value is not None:
            if type(value) is not str:
                raise EnvelopeError(name, "must be a string")
            if len(value) > limit:
                raise EnvelopeError(name, f"longer than {limit} characters")
        out[name] = value
    if out["node_id"] is None:
        out["node_id"] = out["node_name"]

    sent = values.get("status")
    known = type(sent) is str and sent in _CANONICAL_STATUSES
    status = sent if known else normalise_status(sent, event_type)
    if sent is not None and sent != status:
        meta["producer_status"] = sent
    out["status"] = status

    for name in ("context", "result"):
        value = values.get(name)
        if value is not None and not isinstance(value, dict):
            raise EnvelopeError(name, "must be an object or null")
        out[name] = value
    out["meta"] = meta
    error = values.get("error")
    out["error"] = None if error is None else _error_text(error)
    duration = values.get("duration")
    out["duration"] = None if duration is None else _duration(duration)
    created_at = values.get("created_at")
    out["created_at"] = (
        None if created_at is None else _created_at(created_at, naive_is_utc=source == "http")
    )
    for name in ("tenant_id", "organization_id"):
        value = values.get(name)
        if value is None:
            value = "default"
        elif type(value) is not str or len(value) > 128:
            raise EnvelopeError(name, "must be a string of at most 128 characters")
        out[name] = value
    payload_ref = values.get("payload_ref")
    if payload_ref is not None and not isinstance(payload_ref, dict):
        raise EnvelopeError("payload_ref", "must be an object or null")
    out["payload_ref"] = payload_ref

    if require is None and source == "stream":
        required: Iterable[str] = STREAM_REQUIRED
    else:
        required = ("execution_id", *(require or ()))
    for name in required:
        if out[name] is None:
            raise EnvelopeError(name, "is required")
    return out


def _id_text(field: str, value: object) -> str | None:
    """An id as its canonical decimal string (None stays None); EnvelopeError otherwise."""
    if value is None:
        return None
    # fast path: the decimal string the stream carries, no sign, no leading zero
    if (
        type(value) is str
        and 0 < len(value) < 19
        and value.isdigit()
        and value.isascii()
        and value[0] != "0"
    ):
        return value
    try:
        return str(parse_id(value))
    except InvalidId as exc:
        raise EnvelopeError(field, str(exc)) from None


def producer_event(envelope: dict[str, Any]) -> dict[str, Any]:
    """For POST /api/events: the producer's `event_id` moves to `meta.producer_event_id`
    (§2.3); the stored id is assigned by append_events."""
    event_id = envelope.get("event_id")
    if event_id is None:
        return envelope
    meta = dict(envelope["meta"])
    meta.setdefault("producer_event_id", event_id)
    return {**envelope, "event_id": None, "meta": meta}


def _error_text(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        # NoETL workers sometimes send a structured error; keep it readable rather than drop it
        value = json.dumps(value, separators=(",", ":"), default=str)
    if len(value) * 4 <= ERROR_MAX_BYTES:
        return value
    encoded = value.encode()
    if len(encoded) <= ERROR_MAX_BYTES:
        return value
    keep = ERROR_MAX_BYTES - len(TRUNCATED.encode())
    return encoded[:keep].decode(errors="ignore") + TRUNCATED


def _duration(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EnvelopeError("duration", "must be a number")
    if not math.isfinite(value) or value < 0:
        raise EnvelopeError("duration", "must be a finite number >= 0")
    return value


def _created_at(value: object, *, naive_is_utc: bool) -> str | None:
    if value is None:
        return None
    if type(value) is str and _CANONICAL_TIME.match(value):
        try:  # already the emitted form: only the calendar needs checking
            datetime.fromisoformat(value)
            return value
        except ValueError:
            raise EnvelopeError("created_at", "must be an RFC 3339 timestamp") from None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise EnvelopeError("created_at", "must be an RFC 3339 timestamp") from None
    else:
        raise EnvelopeError("created_at", "must be an RFC 3339 timestamp")
    if moment.tzinfo is None:
        if not naive_is_utc:
            raise EnvelopeError("created_at", "has no UTC offset")
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise EnvelopeError("created_at", "out of range") from None
    if moment.year < 1000:  # rfc3339() relies on strftime, which does not pad such years
        raise EnvelopeError("created_at", "before the year 1000")
    return rfc3339(moment)
