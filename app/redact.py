"""The response redactor of api.md §1: secret-looking keys and strings become "[REDACTED]"."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(
    r"password|passwd|secret|token|api[_-]?key|authorization|private[_-]?key|credentials?"
    r"|connection[_-]?string|keychain|cookie",
    re.IGNORECASE,
)
_SECRET_TEXT = re.compile(
    r"(?i:\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,})"  # HTTP auth headers
    r"|eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"  # JWTs
    r"|-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"  # PEM private keys
    r"|\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20,})"
)


def secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact(value: Any) -> Any:
    """A copy of `value` with secrets replaced; the input is not changed."""
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and secret_key(k) and v is not None else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and _SECRET_TEXT.search(value):
        return REDACTED
    return value
