"""The credential resolver the daemon gives the tools: `GET /api/credentials/{alias}` with
`include_data=true` and the command's execution id (worker-protocol.md §9).

A 404 is final; a 5xx or a network error is retried 3 times (0.5 s, 1 s, 2 s), then given up
as retryable. The data lives only in the command's memory: nothing here caches or logs it."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx

from workers.system.tools.base import CredentialError, Resolver

RETRY_DELAYS = (0.5, 1.0, 2.0)


def api_resolver(
    api: httpx.AsyncClient, execution_id: str, delays: tuple[float, ...] = RETRY_DELAYS
) -> Resolver:
    async def resolve(alias: str) -> dict[str, Any]:
        url = f"/api/credentials/{quote(alias, safe='')}"
        params = {"include_data": "true", "execution_id": execution_id}
        problem = "no answer"
        for delay in (*delays, None):
            try:
                response = await api.get(url, params=params)
            except httpx.TransportError as exc:
                problem = type(exc).__name__
            else:
                if response.status_code == 200:
                    body = response.json()
                    if not isinstance(body, dict):
                        raise CredentialError(f"credential {alias!r}: malformed answer")
                    return body
                if response.status_code == 404:
                    raise CredentialError(f"credential {alias!r} not found")
                if response.status_code < 500:
                    raise CredentialError(f"credential {alias!r}: HTTP {response.status_code}")
                problem = f"HTTP {response.status_code}"
            if delay is not None:
                await asyncio.sleep(delay)
        raise CredentialError(f"credential {alias!r}: {problem}", retryable=True)

    return resolve
