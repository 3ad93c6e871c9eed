"""What every tool shares: the outcome, the per-call context, and the error shapes of
dsl.md §8.0 (`{kind, message, retryable, ...}`)."""

from __future__ import annotations

import contextlib
import traceback as tb
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx

from core.settings import Settings

MESSAGE_MAX_CHARS = 4096
TRACEBACK_MAX_CHARS = 8192
RETRYABLE_HTTP = frozenset({408, 425, 429})

Resolver = Callable[[str], Awaitable[dict[str, Any]]]


class ToolFailure(Exception):
    """An expected tool error: becomes the outcome's structured `error` as is."""

    def __init__(self, kind: str, message: str, *, retryable: bool = False, **extra: Any) -> None:
        super().__init__(message)
        self.error = error_body(kind, message, retryable=retryable, **extra)


class CredentialError(ToolFailure):
    """A credential alias that cannot be resolved (worker-protocol.md §9)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__("credential", message, retryable=retryable)


def trim_head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def trim_tail(text: str, limit: int) -> str:
    """The end of a long text (a traceback's last frames and message matter most)."""
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def error_body(kind: str, message: str, *, retryable: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": kind,
        "message": trim_head(str(message), MESSAGE_MAX_CHARS),
        "retryable": retryable,
    }
    body.update(extra)
    if isinstance(body.get("traceback"), str):
        body["traceback"] = trim_tail(body["traceback"], TRACEBACK_MAX_CHARS)
    return body


def exception_error(exc: BaseException, kind: str = "error") -> dict[str, Any]:
    """A worker-side exception nobody expected: type, message and the trimmed traceback."""
    return error_body(
        kind,
        str(exc) or type(exc).__name__,
        type=type(exc).__name__,
        traceback="".join(tb.format_exception(exc)),
    )


def http_retryable(status: int) -> bool:
    return status in RETRYABLE_HTTP or status >= 500


@dataclass
class ToolOutcome:
    """One tool run: `{status, data, error}` plus what the wire result carries besides
    (worker-protocol.md §7) and what `output` exposes to policies (`http`, `pg`)."""

    status: str  # "ok" | "error"
    data: Any = None
    error: dict[str, Any] | None = None
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int | None = None
    duration_ms: int = 0
    http: dict[str, Any] | None = None
    pg: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, error: dict[str, Any], data: Any = None, **kw: Any) -> ToolOutcome:
        return cls(status="error", data=data, error=error, **kw)

    def result(self) -> dict[str, Any]:
        """The `result` of call.done / call.error, wrapped as NoETL workers send it."""
        status = "success" if self.ok else "error"
        exit_code = self.exit_code if self.exit_code is not None else (0 if self.ok else 1)
        return {
            "status": status,
            "context": {
                "status": status,
                "data": self.data,
                "error": self.error,
                "stdout": self.stdout,
                "stderr": self.stderr,
                "exit_code": exit_code,
                "duration_ms": self.duration_ms,
            },
        }

    def output(self, **meta: Any) -> dict[str, Any]:
        """The `output` name of policies and task `set` (dsl.md §5.2, §8.5)."""
        out: dict[str, Any] = {}
        if isinstance(self.data, dict):
            out.update(
                (k, v)
                for k, v in self.data.items()
                if k not in ("status", "data", "error", "http", "meta")
            )
        out.update(status=self.status, data=self.data, error=self.error)
        if self.http is not None:
            out["http"] = self.http
        if self.pg is not None:
            out["pg"] = self.pg
        if meta:
            out["meta"] = meta
        return out


@contextlib.asynccontextmanager
async def _holds_slot() -> AsyncIterator[None]:
    yield


@dataclass
class ToolServices:
    """Dependencies the daemon injects (tests inject their own).

    - `http`: the pooled client of the http tool.
    - `resolve`: credential alias → `{id, name, type, data}` (worker-protocol.md §9); raises
      CredentialError. The daemon binds it to the command's execution id.
    - `api`: a client whose base URL is the NoETL server (playbook tool); None when absent.
    - `waiting`: entered while a tool only waits (the playbook tool on its child), so the daemon
      can give the concurrency slot back meanwhile.
    """

    http: httpx.AsyncClient
    resolve: Resolver
    settings: Settings
    api: httpx.AsyncClient | None = None
    waiting: Callable[[], AbstractAsyncContextManager[None]] = _holds_slot


@dataclass
class ToolContext:
    """One tool call: its rendered config, bound input and the command's identity."""

    kind: str
    config: dict[str, Any]
    args: dict[str, Any]
    render_context: dict[str, Any]
    execution_id: str
    step: str
    services: ToolServices
    secrets: set[str] = field(default_factory=set)
    keychain: dict[str, Any] = field(default_factory=dict)  # resolved `keychain.<name>` data

    @property
    def settings(self) -> Settings:
        return self.services.settings

    async def credential(self, alias: str) -> dict[str, Any]:
        """Resolve an alias and remember its secret values, so they never leave redacted."""
        if not isinstance(alias, str) or not alias.strip():
            raise ToolFailure("config", f"credential alias must be a non-empty string: {alias!r}")
        cred = await self.services.resolve(alias.strip())
        data = cred.get("data") if isinstance(cred, dict) else None
        if not isinstance(data, dict):
            raise CredentialError(f"credential {alias!r} has no data")
        remember_secrets(data, self.secrets)
        return cred


def remember_secrets(value: Any, into: set[str]) -> None:
    """Every string of a credential's data, for redaction (worker-protocol.md §7)."""
    if isinstance(value, str):
        into.add(value)
    elif isinstance(value, dict):
        for item in value.values():
            remember_secrets(item, into)
    elif isinstance(value, list):
        for item in value:
            remember_secrets(item, into)


def timeout_setting(config: dict[str, Any], default: float, *names: str) -> float:
    """A positive timeout from the first present config key, else the setting's default."""
    for name in names or ("timeout_seconds",):
        raw = config.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ToolFailure("config", f"{name} must be a number, got {raw!r}") from None
        if value <= 0:
            raise ToolFailure("config", f"{name} must be positive, got {raw!r}")
        return value
    return default
