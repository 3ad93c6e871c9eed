"""Keychain routes (api.md §10)."""

from __future__ import annotations

import json
import re

import psycopg

from app.crypto import is_envelope
from tests.server.conftest import WORKER, Client, register

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
TOKEN = {"access_token": "fake-token-not-real", "token_type": "Bearer"}


async def _catalog_id(client: Client) -> int:
    return int((await register(client, "tests/kc"))["catalog_id"])


async def test_set_get_delete_global(client: Client, conn: psycopg.Connection) -> None:
    cid = await _catalog_id(client)
    path = f"/api/keychain/{cid}/compat_token"
    stored = await client.post(
        path,
        json={"token_data": TOKEN, "credential_type": "bearer", "ttl_seconds": 3600},
        headers=WORKER,
    )
    assert stored.status_code == 200, stored.text
    body = stored.json
    assert body == {
        "status": "success",
        "message": "Keychain entry cached successfully with 3600s TTL",
        "keychain_name": "compat_token",
        "catalog_id": cid,
        "cache_key": f"compat_token:{cid}:global",
        "expires_at": body["expires_at"],
        "ttl_seconds": 3600,
        "auto_renew": False,
    }
    assert TS.match(body["expires_at"])
    row = conn.execute("SELECT data_encrypted FROM noetl.keychain").fetchone()
    assert "fake-token-not-real" not in row["data_encrypted"]
    assert is_envelope(json.loads(row["data_encrypted"]))

    got = await client.get(path, headers=WORKER)
    assert got.status_code == 200
    entry = got.json
    assert entry["status"] == "success" and entry["token_data"] == TOKEN
    assert entry["catalog_id"] == cid and isinstance(entry["catalog_id"], int)
    assert entry["cache_key"] == f"compat_token:{cid}:global"
    assert entry["credential_type"] == "bearer" and entry["cache_type"] == "token"
    assert entry["scope_type"] == "global" and entry["expired"] is False
    assert 3590 < entry["ttl_seconds"] <= 3600 and isinstance(entry["ttl_seconds"], float)
    assert entry["access_count"] == 1 and TS.match(entry["accessed_at"])
    assert entry["auto_renew"] is False and entry["renew_config"] is None
    assert (await client.get(path, headers=WORKER)).json["access_count"] == 2

    listed = await client.get(f"/api/keychain/catalog/{cid}")
    assert listed.status_code == 200
    assert listed.json["count"] == 1 and listed.json["catalog_id"] == cid
    item = listed.json["entries"][0]
    assert set(item) == {
        "keychain_name",
        "cache_key",
        "credential_type",
        "cache_type",
        "scope_type",
        "execution_id",
        "expires_at",
        "expired",
        "auto_renew",
        "access_count",
        "accessed_at",
        "created_at",
    }
    assert "fake-token" not in listed.text

    deleted = await client.delete(path, headers=WORKER)
    assert deleted.json == {
        "status": "success",
        "message": "Keychain entry deleted successfully",
        "keychain_name": "compat_token",
        "catalog_id": cid,
    }
    missing = (await client.get(path, headers=WORKER)).json
    assert missing == {
        "status": "not_found",
        "keychain_name": "compat_token",
        "catalog_id": cid,
        "cache_key": f"compat_token:{cid}:global",
        "token_data": None,
        "credential_type": None,
        "cache_type": None,
        "scope_type": None,
        "expires_at": None,
        "ttl_seconds": None,
        "accessed_at": None,
        "access_count": None,
        "auto_renew": False,
        "renew_config": None,
        "expired": False,
    }
    again = await client.delete(path, headers=WORKER)
    assert again.status_code == 200 and again.json["message"] == "Keychain entry not found"


async def test_scopes_and_keys(client: Client) -> None:
    cid = await _catalog_id(client)
    base = f"/api/keychain/{cid}/tok"
    local = await client.post(
        base,
        json={
            "token_data": {"v": 1},
            "credential_type": "bearer",
            "scope_type": "local",
            "execution_id": "42",
        },
        headers=WORKER,
    )
    assert local.json["cache_key"] == f"tok:{cid}:42"
    assert local.json["ttl_seconds"] == 3600
    shared = await client.post(
        base,
        json={
            "token_data": {"v": 2},
            "credential_type": "bearer",
            "scope_type": "shared",
            "execution_id": 42,
        },
        headers=WORKER,
    )
    assert shared.json["cache_key"] == f"tok:{cid}:shared:42"
    assert shared.json["ttl_seconds"] == 86400
    got = await client.get(
        base, params={"scope_type": "local", "execution_id": "42"}, headers=WORKER
    )
    assert got.json["token_data"] == {"v": 1}
    no_id = await client.get(base, params={"scope_type": "local"}, headers=WORKER)
    assert no_id.status_code == 422
    assert no_id.json["detail"][0]["loc"] == ["query", "execution_id"]
    post_no_id = await client.post(
        base,
        json={"token_data": {}, "credential_type": "x", "scope_type": "shared"},
        headers=WORKER,
    )
    assert post_no_id.status_code == 422
    listed = (await client.get(f"/api/keychain/catalog/{cid}")).json
    assert {e["execution_id"] for e in listed["entries"]} == {"42"}


async def test_expiry_and_auto_renew(client: Client, conn: psycopg.Connection) -> None:
    cid = await _catalog_id(client)
    for name, renew in (("plain", False), ("renewing", True)):
        response = await client.post(
            f"/api/keychain/{cid}/{name}",
            json={
                "token_data": {"v": name},
                "credential_type": "oauth2",
                "auto_renew": renew,
                "renew_config": {"url": "https://example.invalid/token"} if renew else None,
                "expires_at": "2999-01-01T00:00:00",
            },
            headers=WORKER,
        )
        assert response.status_code == 200, response.text
        assert response.json["expires_at"] == "2999-01-01T00:00:00.000000Z"
    conn.execute("UPDATE noetl.keychain SET expires_at = now() - interval '1 minute'")
    gone = (await client.get(f"/api/keychain/{cid}/plain", headers=WORKER)).json
    assert gone["status"] == "not_found"
    expired = (await client.get(f"/api/keychain/{cid}/renewing", headers=WORKER)).json
    assert expired["status"] == "expired" and expired["expired"] is True
    assert expired["token_data"] is None
    assert expired["renew_config"] == {"url": "https://example.invalid/token"}
    assert expired["ttl_seconds"] == 0.0
    listed = (await client.get(f"/api/keychain/catalog/{cid}")).json
    assert all(e["expired"] for e in listed["entries"])


async def test_validation(client: Client) -> None:
    cid = await _catalog_id(client)
    cases = [
        (
            "/api/keychain/abc/tok",
            {"token_data": {}, "credential_type": "x"},
            ["path", "catalog_id"],
        ),
        (
            f"/api/keychain/{cid}/bad name!",
            {"token_data": {}, "credential_type": "x"},
            ["path", "keychain_name"],
        ),
        (f"/api/keychain/{cid}/tok", {"credential_type": "x"}, ["body", "token_data"]),
        (f"/api/keychain/{cid}/tok", {"token_data": {}}, ["body", "credential_type"]),
        (
            f"/api/keychain/{cid}/tok",
            {"token_data": {}, "credential_type": "x", "ttl_seconds": 0},
            ["body", "ttl_seconds"],
        ),
        (
            f"/api/keychain/{cid}/tok",
            {"token_data": {}, "credential_type": "x", "cache_type": "z"},
            ["body", "cache_type"],
        ),
        (
            f"/api/keychain/{cid}/tok",
            {"token_data": {}, "credential_type": "x", "expires_at": "2001-01-01T00:00:00Z"},
            ["body", "expires_at"],
        ),
        (
            f"/api/keychain/{cid}/tok",
            {"token_data": {}, "credential_type": "x", "expires_at": "soon"},
            ["body", "expires_at"],
        ),
    ]
    for path, body, loc in cases:
        response = await client.post(path, json=body, headers=WORKER)
        assert response.status_code == 422, (path, body, response.text)
        assert response.json["detail"][0]["loc"] == loc, response.text
    unknown = await client.post(
        "/api/keychain/123/tok", json={"token_data": {}, "credential_type": "x"}, headers=WORKER
    )
    assert unknown.status_code == 404 and unknown.json["code"] == "catalog_entry_not_found"
    bad_list = await client.get("/api/keychain/catalog/nope")
    assert bad_list.status_code == 422


async def test_legacy_plaintext_keychain_row_is_resealed(
    client: Client, conn: psycopg.Connection
) -> None:
    cid = await _catalog_id(client)
    conn.execute(
        """INSERT INTO noetl.keychain (cache_key, keychain_name, catalog_id, credential_type,
               cache_type, scope_type, data_encrypted, expires_at)
           VALUES (%s, 'old', %s, 'bearer', 'token', 'global', %s, now() + interval '1 hour')""",
        (f"old:{cid}:global", cid, json.dumps(TOKEN)),
    )
    got = await client.get(f"/api/keychain/{cid}/old", headers=WORKER)
    assert got.json["token_data"] == TOKEN
    stored = conn.execute("SELECT data_encrypted FROM noetl.keychain").fetchone()
    assert "fake-token" not in stored["data_encrypted"]
