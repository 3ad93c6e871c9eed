"""The auth matrix of api.md §3: each class of route with no token, a wrong token, a
lower-class token and the right token."""

from __future__ import annotations

import pytest

from app.auth import Authenticator, TokenConfigError
from core.settings import Settings
from tests.server.conftest import API, API_TOKEN, INTERNAL, INTERNAL_TOKEN, WORKER, Client

WRONG = {"Authorization": "Bearer not-a-configured-token-at-all"}
CLOSED = {"NOETL_API_TOKENS": API_TOKEN}


async def _status(client: Client, method: str, path: str, headers: dict, **kw) -> int:
    return (await client.request(method, path, headers=headers, **kw)).status_code


async def test_public_routes_need_no_token(make_client) -> None:
    async with make_client(**CLOSED) as client:
        for path in ("/livez", "/api/runtime/contract", "/api/openapi.json", "/metrics"):
            for headers in ({}, WRONG, API):
                assert await _status(client, "GET", path, headers) == 200, (path, headers)
        assert (await client.get("/health")).status_code in (200, 503)


async def test_api_class(make_client) -> None:
    async with make_client(**CLOSED) as client:
        none = await client.get("/api/credentials")
        assert none.status_code == 401
        assert none.json["code"] == "unauthorized"
        assert none.headers["www-authenticate"] == "Bearer"
        assert await _status(client, "GET", "/api/credentials", WRONG) == 401
        assert await _status(client, "GET", "/api/credentials", {"Authorization": "Basic x"}) == 401
        for headers in (API, WORKER, INTERNAL, {"Authorization": f"bearer {API_TOKEN}"}):
            assert await _status(client, "GET", "/api/credentials", headers) == 200
        ui = await client.get("/api/catalog/x/ui_schema")
        assert ui.status_code == 401  # the sink route checks its class too
        assert (await client.get("/api/catalog/x/ui_schema", headers=API)).status_code == 404


async def test_api_class_is_open_without_api_tokens(client: Client) -> None:
    assert (await client.get("/api/credentials")).status_code == 200
    assert (await client.get("/api/credentials", headers=WRONG)).status_code == 200


async def test_worker_class(make_client) -> None:
    async with make_client(**CLOSED) as client:
        response = await client.post(
            "/api/catalog/register",
            json={
                "content": "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata:\n  name: a\n"
                "workflow:\n  - step: start\n    tool:\n      kind: noop\n"
            },
            headers=API,
        )
        cid = response.json["catalog_id"]
        path = f"/api/keychain/{cid}/tok"
        assert await _status(client, "GET", path, {}) == 401
        assert await _status(client, "GET", path, WRONG) == 401
        lower = await client.get(path, headers=API)
        assert lower.status_code == 403 and lower.json["code"] == "forbidden"
        assert await _status(client, "GET", path, WORKER) == 200
        assert await _status(client, "GET", path, INTERNAL) == 200
        assert await _status(client, "GET", f"/api/keychain/catalog/{cid}", API) == 200


async def test_internal_class(make_client) -> None:
    async with make_client(**CLOSED) as client:
        for method, path, kw in (
            ("GET", "/api/internal/outbox/pending-count", {}),
            ("POST", "/api/catalog/delete", {"json": {"path": "x"}}),
            ("POST", "/api/catalog/restore", {"json": {"path": "x"}}),
        ):
            assert await _status(client, method, path, {}, **kw) == 401
            assert await _status(client, method, path, WRONG, **kw) == 401
            assert await _status(client, method, path, API, **kw) == 403
            assert await _status(client, method, path, WORKER, **kw) == 403
            assert await _status(client, method, path, INTERNAL, **kw) == 200
        pending = await client.get("/api/internal/outbox/pending-count", headers=INTERNAL)
        assert pending.json == {"pending": 0}


async def test_unset_tokens_answer_503(make_client) -> None:
    async with make_client(NOETL_WORKER_API_TOKENS="", NOETL_INTERNAL_API_TOKEN="") as client:
        internal = await client.get("/api/internal/outbox/pending-count", headers=WRONG)
        assert internal.status_code == 503
        assert internal.json["code"] == "internal_token_unset"
        assert internal.headers["retry-after"]
        worker = await client.get("/api/keychain/1/tok")
        assert worker.status_code == 503 and worker.json["code"] == "worker_token_unset"


def test_short_tokens_refuse_to_start() -> None:
    for variable in ("NOETL_API_TOKENS", "NOETL_WORKER_API_TOKENS", "NOETL_INTERNAL_API_TOKEN"):
        settings = Settings.from_env({variable: "long-enough-token-000,short"})
        with pytest.raises(TokenConfigError):
            Authenticator(settings)


def test_identify_compares_every_token() -> None:
    settings = Settings.from_env(
        {
            "NOETL_API_TOKENS": f"{API_TOKEN},another-api-token-00000",
            "NOETL_INTERNAL_API_TOKEN": INTERNAL_TOKEN,
        }
    )
    auth = Authenticator(settings)
    assert auth.identify(f"Bearer {INTERNAL_TOKEN}").token_class == "internal"
    assert auth.identify("Bearer another-api-token-00000").token_class == "api"
    assert auth.identify(f"Bearer {API_TOKEN}x").token_class is None
    assert auth.identify(None).presented is False
