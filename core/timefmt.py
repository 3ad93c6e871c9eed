"""RFC 3339 timestamps as every role emits them: UTC, `Z`, exactly six fraction digits."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str, *, naive_is_utc: bool) -> datetime:
    """Parse ISO 8601; a value without offset is UTC only where the caller allows it."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        if not naive_is_utc:
            raise ValueError("timestamp has no UTC offset")
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
