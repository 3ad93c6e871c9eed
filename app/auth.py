"""Bearer-token classes of api.md §3, checked in constant time.

The presented token and every configured token are reduced to HMAC-SHA256 digests under a
per-process random key and compared with `hmac.compare_digest`, each one, with no early exit,
so neither the position of a match nor a partial match shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from app.errors import ApiError, unavailable
from core.settings import Settings

PUBLIC, API, WORKER, INTERNAL = "public", "api", "worker", "internal"
CLASSES = (PUBLIC, API, WORKER, INTERNAL)
_RANK = {API: 1, WORKER: 2, INTERNAL: 3}
MIN_TOKEN_LENGTH = 16


class TokenConfigError(ValueError):
    """A configured token the server must refuse to start with."""


def _split(value: str | None) -> list[str]:
    return [t.strip() for t in (value or "").split(",") if t.strip()]


@dataclass(frozen=True)
class Caller:
    """Who is calling: the class of the presented token, or None without a known token."""

    token_class: str | None
    presented: bool

    def at_least(self, needed: str) -> bool:
        return self.token_class is not None and _RANK[self.token_class] >= _RANK[needed]


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._key = os.urandom(32)
        tokens = {
            API: _split(settings.api_tokens),
            WORKER: _split(settings.worker_api_tokens),
            INTERNAL: _split(settings.internal_api_token),
        }
        for name, values in tokens.items():
            for token in values:
                if len(token) < MIN_TOKEN_LENGTH:
                    raise TokenConfigError(
                        f"a {name}-class token is shorter than {MIN_TOKEN_LENGTH} characters"
                    )
        self._digests = [(self._digest(t), cls) for cls, values in tokens.items() for t in values]
        self.api_open = not tokens[API]
        self.worker_configured = bool(tokens[WORKER] or tokens[INTERNAL])
        self.internal_configured = bool(tokens[INTERNAL])

    def _digest(self, token: str) -> bytes:
        return hmac.new(self._key, token.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def identify(self, authorization: str | None) -> Caller:
        if not authorization:
            return Caller(None, False)
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Caller(None, True)
        presented = self._digest(token.strip())
        found: str | None = None
        for digest, cls in self._digests:  # no early exit: every digest is compared
            if hmac.compare_digest(presented, digest) and (
                found is None or _RANK[cls] > _RANK[found]
            ):
                found = cls
        return Caller(found, True)

    def require(self, caller: Caller, needed: str, *, forbidden_code: str = "forbidden") -> None:
        """Raise the 401/403/503 of api.md §3 unless the caller may use a route of `needed`."""
        if needed == PUBLIC:
            return
        if needed == API:
            if self.api_open:
                return
        elif needed == WORKER and not self.worker_configured:
            raise unavailable("worker_token_unset", "no worker token is configured", 30)
        elif needed == INTERNAL and not self.internal_configured:
            raise unavailable(
                "internal_token_unset", "NOETL_INTERNAL_API_TOKEN is not configured", 30
            )
        if caller.token_class is None:
            raise ApiError(
                401,
                "unauthorized",
                "Not authenticated",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not caller.at_least(needed):
            raise ApiError(403, forbidden_code, f"this route needs a {needed}-class token")


def check_token_settings(settings: Settings) -> None:
    """Raise TokenConfigError for tokens the server must refuse to start with."""
    Authenticator(settings)
