"""http (dsl.md §8.2): one request through the worker's pooled httpx client."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx

from workers.system.tools.base import (
    CredentialError,
    ToolContext,
    ToolFailure,
    ToolOutcome,
    http_retryable,
    timeout_setting,
)

BODY_KEYS = ("json", "body", "form")


def _stringified(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ToolFailure("config", f"{name} must be a mapping")
    out = {}
    for key, item in value.items():
        if item is None:
            continue
        if isinstance(item, bool):
            out[str(key)] = "true" if item else "false"
        elif isinstance(item, dict | list):
            out[str(key)] = json.dumps(item, separators=(",", ":"))
        else:
            out[str(key)] = str(item)
    return out


def _body(config: dict[str, Any]) -> dict[str, Any]:
    present = [k for k in BODY_KEYS if config.get(k) is not None]
    if len(present) > 1:
        raise ToolFailure(
            "config", f"http tool takes at most one of json, body, form; got {present}"
        )
    if not present:
        return {}
    key = present[0]
    value = config[key]
    if key == "json":
        return {"json": value}
    if key == "form":
        return {"data": _stringified(value, "form")}
    if isinstance(value, str):
        return {"content": value.encode()}
    return {
        "content": json.dumps(value).encode(),
        "headers": {"content-type": "application/json"},
    }


def _secret_of(data: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = data.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _auth_header(kind: str, fields: dict[str, Any], where: str) -> dict[str, str]:
    """Headers for one auth type from its fields (inline or a credential's data)."""
    kind = kind.lower()
    if kind in ("bearer", "bearer_token"):
        token = _secret_of(fields, "token", "bearer_token", "access_token")
        if token is None:
            raise CredentialError(f"{where}: bearer auth needs a token")
        return {"Authorization": f"Bearer {token}"}
    if kind == "basic":
        user, password = fields.get("username"), fields.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            raise CredentialError(f"{where}: basic auth needs username and password")
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}
    if kind == "api_key":
        token = _secret_of(fields, "key", "api_key", "token")
        if token is None:
            raise CredentialError(f"{where}: api_key auth needs a key")
        header = fields.get("header") or "X-API-Key"
        return {str(header): token}
    raise CredentialError(f"{where}: auth type {kind!r} is not supported by the http tool")


async def auth_headers(ctx: ToolContext, auth: Any) -> dict[str, str]:
    if auth is None:
        return {}
    if isinstance(auth, str):
        cred = await ctx.credential(auth)
        return _auth_header(str(cred.get("type") or ""), cred["data"], f"credential {auth!r}")
    if not isinstance(auth, dict):
        raise ToolFailure("config", "auth must be a credential alias or a mapping")
    fields = dict(auth)
    alias = fields.pop("credential", None)
    kind = str(fields.get("type") or "")
    if alias is not None:
        cred = await ctx.credential(alias)
        # The credential supplies the secret; inline keys (such as `header`) still apply.
        fields = {**cred["data"], **{k: v for k, v in fields.items() if k == "header"}}
        kind = kind or str(cred.get("type") or "")
        where = f"credential {alias!r}"
    else:
        for name in ("token", "password", "key", "api_key"):
            if isinstance(fields.get(name), str):
                ctx.secrets.add(fields[name])
        where = "auth"
    return _auth_header(kind, fields, where)


def _parsed(raw: bytes, response: httpx.Response) -> Any:
    text = raw.decode(response.encoding or "utf-8", errors="replace")
    try:
        return json.loads(text) if text.strip() else text
    except ValueError:
        return text


async def run(ctx: ToolContext) -> ToolOutcome:
    config = ctx.config
    url = config.get("url") or config.get("endpoint")
    if not isinstance(url, str) or not url:
        raise ToolFailure("config", "http tool needs a url")
    method = str(config.get("method") or "GET").upper()
    timeout = timeout_setting(
        config, ctx.settings.http_timeout_seconds, "timeout_seconds", "timeout"
    )
    body = _body(config)
    headers = {**body.pop("headers", {}), **_stringified(config.get("headers"), "headers")}
    headers.update(await auth_headers(ctx, config.get("auth")))
    limit = ctx.settings.result_inline_max_bytes
    client = ctx.services.http
    try:
        target = httpx.URL(url)
        params = _stringified(config.get("params"), "params")
        if params:  # merged into the URL's own query (httpx would replace it)
            target = target.copy_merge_params(params)
        request = client.build_request(
            method,
            target,
            headers=headers,
            timeout=timeout,
            **body,
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError, TypeError) as exc:
        raise ToolFailure("config", f"bad http request: {exc}") from None
    no_response: dict[str, Any] = {"status": None, "headers": {}}
    try:
        # httpx's timeout bounds each phase; this one bounds the whole call (a slow trickle).
        async with asyncio.timeout(timeout):
            response = await client.send(
                request, follow_redirects=bool(config.get("follow_redirects", True)), stream=True
            )
            try:
                raw = bytearray()
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if len(raw) > limit:
                        raise ToolFailure(
                            "size_limit",
                            f"http response body is above the inline limit of {limit} bytes",
                            bytes=len(raw),
                            limit=limit,
                        )
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException) as exc:
        return ToolOutcome.failed(
            {
                "kind": "timeout",
                "message": f"{method} {url} timed out after {timeout:g}s",
                "retryable": True,
                "type": type(exc).__name__,
            },
            http=no_response,
        )
    except httpx.UnsupportedProtocol as exc:
        raise ToolFailure("config", f"bad http request: {exc}") from None
    except httpx.TransportError as exc:
        return ToolOutcome.failed(
            {
                "kind": "connection",
                "message": f"{method} {url}: {exc or type(exc).__name__}",
                "retryable": True,
                "type": type(exc).__name__,
            },
            http=no_response,
        )
    parsed = _parsed(bytes(raw), response)
    response_headers = {k: v for k, v in response.headers.items()}
    data = {
        "status_code": response.status_code,
        "headers": response_headers,
        "data": parsed,
        "body": parsed,
    }
    http = {"status": response.status_code, "headers": response_headers}
    if response.is_success:
        return ToolOutcome(status="ok", data=data, http=http)
    error = {
        "kind": "http_status",
        "message": f"HTTP {response.status_code}",
        "retryable": http_retryable(response.status_code),
        "status_code": response.status_code,
    }
    return ToolOutcome.failed(error, data=data, http=http)
