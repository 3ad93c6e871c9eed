"""Request input: the JSON body (api.md §1) and a small validator that collects every problem.

`Fields` reads one mapping (a JSON body or the query string) and records each bad field as a
422 item naming it, so a request learns all its mistakes at once; `check()` raises them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import falcon.asgi

from app.errors import ApiError, problem, validation_error
from core.ids import InvalidId, parse_id

INT32_MAX = 2**31 - 1
MAX_DEPTH = 100  # deeper JSON would exhaust the recursion of every later step
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


async def read_body(req: falcon.asgi.Request, max_bytes: int) -> Any:
    """The parsed JSON body, or None when there is none (api.md §1: 413, 415, 400)."""
    content_type = req.content_type
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    if req.content_length is not None and req.content_length > max_bytes:
        raise ApiError(413, "payload_too_large", f"body larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in req.stream:
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "payload_too_large", f"body larger than {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "body is not valid JSON") from None
    if _depth(value) > MAX_DEPTH:
        raise validation_error(
            [problem(["body"], f"nested deeper than {MAX_DEPTH} levels", "too_deep")]
        )
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((child, level + 1) for child in item)
    return deepest


async def read_object(req: falcon.asgi.Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; an empty body is `{}`."""
    body = await read_body(req, max_bytes)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise validation_error([problem(["body"], "must be a JSON object", "type_error")])
    return body


def has_bad_text(value: str) -> bool:
    """NUL and lone surrogates cannot be stored in Postgres text or jsonb."""
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def storable_json(value: Any) -> bool:
    """True when Postgres jsonb can hold the value (no NUL, no lone surrogate, finite)."""
    if isinstance(value, str):
        return not has_bad_text(value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(storable_json(k) and storable_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(storable_json(v) for v in value)
    return True


class Fields:
    """Validates the fields of one mapping; `source` is `body` or `query` (the loc prefix)."""

    def __init__(
        self, data: Mapping[str, Any], source: str = "body", prefix: tuple[str | int, ...] = ()
    ) -> None:
        self.data = data
        self.source = source
        self.prefix = prefix
        self.problems: list[dict[str, Any]] = []

    def loc(self, *parts: str | int) -> list[str | int]:
        return [self.source, *self.prefix, *parts]

    def add(self, name: str | int | tuple, msg: str, type_: str = "value_error") -> None:
        parts = name if isinstance(name, tuple) else (name,)
        self.problems.append(problem(self.loc(*parts), msg, type_))

    def value(self, name: str) -> Any:
        """The raw value; JSON null counts as absent."""
        return self.data.get(name)

    def present(self, name: str) -> bool:
        return self.data.get(name) is not None

    def first(self, *names: str) -> str | None:
        """The first of several alias names that is present."""
        return next((n for n in names if self.present(n)), None)

    def check(self, code: str = "validation_error") -> None:
        if self.problems:
            raise validation_error(self.problems, code)

    def missing(self, name: str) -> None:
        self.add(name, "field required", "missing")

    def string(
        self,
        name: str,
        *,
        required: bool = False,
        default: str | None = None,
        min_len: int = 1,
        max_len: int = 4096,
        pattern: re.Pattern[str] | None = None,
        strip: bool = False,
        choices: tuple[str, ...] | None = None,
        lower: bool = False,
    ) -> str | None:
        raw = self.value(name)
        if raw is None:
            if required:
                self.missing(name)
            return default
        if not isinstance(raw, str):
            self.add(name, "must be a string", "type_error")
            return default
        text = raw.strip() if strip else raw
        if lower:
            text = text.lower()
        if has_bad_text(text):
            self.add(name, "contains characters that cannot be stored", "value_error")
        elif not min_len <= len(text) <= max_len:
            self.add(name, f"length must be within {min_len}..{max_len}", "length_error")
        elif choices is not None and text not in choices:
            self.add(name, f"must be one of {', '.join(choices)}", "enum_error")
        elif pattern is not None and not pattern.match(text):
            self.add(name, f"must match {pattern.pattern}", "pattern_error")
        else:
            return text
        return default

    def integer(
        self,
        name: str,
        *,
        required: bool = False,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = INT32_MAX,
    ) -> int | None:
        raw = self.value(name)
        if raw is None:
            if required:
                self.missing(name)
            return default
        number: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            number = raw
        elif isinstance(raw, str) and re.fullmatch(r"-?[0-9]{1,19}", raw.strip()):
            number = int(raw)
        if number is None:
            self.add(name, "must be an integer", "int_parsing")
            return default
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            low = "" if minimum is None else str(minimum)
            high = "" if maximum is None else str(maximum)
            self.add(name, f"must be within {low}..{high}", "range_error")
            return default
        return number

    def boolean(self, name: str, default: bool = False) -> bool:
        raw = self.value(name)
        if raw is None:
            return default
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        self.add(name, "must be a boolean", "bool_parsing")
        return default

    def mapping(
        self,
        name: str,
        *,
        required: bool = False,
        max_bytes: int | None = None,
    ) -> dict[str, Any] | None:
        raw = self.value(name)
        if raw is None:
            if required:
                self.missing(name)
            return None
        if not isinstance(raw, dict):
            self.add(name, "must be an object", "type_error")
            return None
        if not storable_json(raw):
            self.add(name, "contains values that cannot be stored", "value_error")
            return None
        if max_bytes is not None and json_size(raw) > max_bytes:
            self.add(name, f"larger than {max_bytes} bytes", "too_large")
            return None
        return raw

    def string_list(
        self, name: str, *, max_items: int = 50, max_len: int = 256, comma: bool = False
    ) -> list[str] | None:
        """A list of strings; with `comma`, a comma-separated string is accepted too."""
        raw = self.value(name)
        if raw is None:
            return None
        if comma and isinstance(raw, str):
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            self.add(name, "must be a list of strings", "type_error")
            return None
        if len(raw) > max_items:
            self.add(name, f"at most {max_items} items", "too_long")
            return None
        for index, item in enumerate(raw):
            if has_bad_text(item) or not 1 <= len(item) <= max_len:
                self.add((name, index), f"length must be within 1..{max_len}", "length_error")
                return None
        return list(raw)

    def ident(self, name: str, *, required: bool = False, allow_zero: bool = False) -> int | None:
        """An id: a JSON integer or a decimal string in 1..2^63-1 (api.md §1)."""
        raw = self.value(name)
        if raw is None:
            if required:
                self.missing(name)
            return None
        try:
            return parse_id(raw, allow_zero=allow_zero)
        except InvalidId as exc:
            self.add(name, str(exc), "invalid_id")
            return None


def path_id(name: str, raw: str) -> int:
    """An id in a path segment; 422 naming the segment otherwise."""
    try:
        return parse_id(raw)
    except InvalidId as exc:
        raise validation_error([problem(["path", name], str(exc), "invalid_id")]) from None
