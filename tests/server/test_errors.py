"""The single error format of api.md §2, request ids, CORS, and the database 503s."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from app.services.credentials import CredentialService
from tests.server.conftest import Client


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json
    assert body["code"] == code
    assert "detail" in body
    return body


async def test_unknown_route_and_wrong_method(client: Client) -> None:
    assert assert_error(await client.get("/api/does-not-exist"), 404, "not_found") == {
        "detail": "Not Found",
        "code": "not_found",
    }
    assert_error(await client.post("/nothing", json={}), 404, "not_found")
    wrong = await client.get("/api/catalog/register")
    assert assert_error(wrong, 405, "method_not_allowed")["detail"] == "Method Not Allowed"
    assert "POST" in wrong.headers["allow"]
    assert_error(await client.request("PATCH", "/api/credentials"), 405, "method_not_allowed")


async def test_bad_bodies(make_client) -> None:
    async with make_client(NOETL_HTTP_MAX_BODY_BYTES="1000") as client:
        bad_json = await client.post(
            "/api/catalog/list", body=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert_error(bad_json, 400, "invalid_json")
        nan = await client.post("/api/catalog/list", body=b'{"path": NaN}')
        assert_error(nan, 400, "invalid_json")
        text = await client.post(
            "/api/catalog/list", body=b"{}", headers={"Content-Type": "text/plain"}
        )
        assert_error(text, 415, "unsupported_media_type")
        charset = await client.post(
            "/api/catalog/list",
            body=b"{}",
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert charset.status_code == 200
        absent = await client.post("/api/catalog/list", body=b"{}")
        assert absent.status_code == 200
        big = await client.post("/api/catalog/list", json={"path": "x" * 2000})
        assert_error(big, 413, "payload_too_large")
        not_object = await client.post("/api/catalog/list", json=[1, 2])
        assert_error(not_object, 422, "validation_error")


async def test_ids_that_are_not_ids(client: Client) -> None:
    for path in ("/api/vars/0", "/api/vars/-1", "/api/vars/99999999999999999999", "/api/vars/1e3"):
        body = assert_error(await client.get(path), 422, "validation_error")
        assert body["detail"][0]["loc"] == ["path", "eid"]
        assert body["detail"][0]["path"] == "/eid"


async def test_request_id(client: Client) -> None:
    mine = await client.get("/livez", headers={"X-Request-ID": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    fresh = await client.get("/api/nothing")
    assert len(fresh.headers["x-request-id"]) == 32
    odd = await client.get("/livez", headers={"X-Request-ID": "bad value\x7f"})
    assert odd.headers["x-request-id"] != "bad value\x7f"


async def test_unexpected_exception_is_logged_not_leaked(
    client: Client, monkeypatch, caplog
) -> None:
    async def explode(self, *args, **kwargs):
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(CredentialService, "list", explode)
    with caplog.at_level(logging.ERROR):
        response = await client.get("/api/credentials", headers={"X-Request-ID": "req-42"})
    assert response.json == {"detail": "internal error", "code": "internal_error"}
    assert response.status_code == 500 and "internals" not in response.text
    record = next(r for r in caplog.records if r.getMessage() == "unhandled error")
    assert record.request_id == "req-42"


async def test_cors(client: Client) -> None:
    simple = await client.get("/livez", headers={"Origin": "https://ui.example"})
    assert simple.headers["access-control-allow-origin"] == "*"
    preflight = await client.request(
        "OPTIONS",
        "/api/catalog/delete",
        headers={
            "Origin": "https://ui.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200  # no token needed, though the route is internal
    assert "POST" in preflight.headers["access-control-allow-methods"]


async def test_pool_saturated_answers_503_with_retry_after(make_client) -> None:
    async with make_client(
        NOETL_DB_POOL_MAX="1", NOETL_DB_POOL_MIN="1", NOETL_DB_POOL_ACQUIRE_TIMEOUT_SECONDS="0.2"
    ) as client:
        async with client.state.db.session():  # hold the only connection
            response = await client.get("/api/credentials")
        body = assert_error(response, 503, "pool_saturated")
        assert body["detail"] == "database pool saturated"
        assert 1 <= int(response.headers["retry-after"]) <= 30
        status = (await client.get("/api/pool/status")).json
        assert status["pool_max"] == 1 and status["status"] in ("ok", "saturated")
        assert (await client.get("/api/credentials")).status_code == 200


async def test_query_timeout(make_client, conn: psycopg.Connection, db_url: str) -> None:
    async with make_client(NOETL_API_STATEMENT_TIMEOUT_MS="200") as client:
        with psycopg.connect(db_url) as locker:
            locker.execute("LOCK TABLE noetl.credential IN ACCESS EXCLUSIVE MODE")
            response = await client.get("/api/credentials")
            locker.rollback()
        assert_error(response, 503, "query_timeout")
        assert response.headers["retry-after"] == "2"


async def test_db_unavailable_short_circuits(make_client, pg_admin_url: str) -> None:
    from core.dburl import with_dbname

    missing = with_dbname(pg_admin_url, "no_such_database_here")
    async with make_client(
        NOETL_DATABASE_URL=missing, NOETL_DB_POOL_ACQUIRE_TIMEOUT_SECONDS="0.5"
    ) as client:
        first = await client.get("/api/credentials")
        assert_error(first, 503, "db_unavailable")
        assert int(first.headers["retry-after"]) >= 1
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json["status"] == "unavailable"
        assert health.json["checks"]["database"] == "failing"
        pool = (await client.get("/api/pool/status")).json
        assert pool["status"] == "unavailable"


async def test_circuit_opens_on_connection_errors(client: Client, db_url: str) -> None:
    # kill every pooled connection: the next query fails with a connection-class error
    await client.get("/api/credentials")
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'noetl-server'"
        )
    statuses = []
    for _ in range(3):
        statuses.append((await client.get("/api/credentials")).status_code)
    assert 503 in statuses
    assert client.state.db.circuit_open or statuses[-1] == 200
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        if (await client.get("/api/credentials")).status_code == 200:
            break
        await asyncio.sleep(0.2)  # the circuit stays open for its backoff, then closes
    else:
        pytest.fail("the circuit never closed")
    assert not client.state.db.circuit_open


async def test_deep_json_is_refused(client: Client) -> None:
    deep = b'{"variables": {"a": ' + b"[" * 150 + b"]" * 150 + b"}}"
    response = await client.post("/api/vars/5", body=deep)
    body = assert_error(response, 422, "validation_error")
    assert body["detail"][0]["type"] == "too_deep"
    fine = b'{"variables": {"a": ' + b"[" * 50 + b"]" * 50 + b"}}"
    assert (await client.post("/api/vars/5", body=fine)).status_code == 200
