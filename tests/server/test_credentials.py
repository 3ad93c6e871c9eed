"""Credentials (api.md §9) and secrets at rest (api.md §4)."""

from __future__ import annotations

import base64
import json
import re
import subprocess

import psycopg
import pytest

from app.crypto import is_envelope
from core.embedded import pg_binary
from tests.server.conftest import API, INTERNAL, WORKER, Client, register

SECRET = "fake-password-not-real"
BODY = {
    "name": " pg_demo ",
    "type": "postgres",
    "data": {"host": "db.example.invalid", "port": 5432, "password": SECRET},
    "meta": {"env": "sample"},
    "tags": "compat,sample",
    "description": "Fake Postgres credential",
}
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


async def _create(client: Client, **changes) -> dict:
    response = await client.post("/api/credentials", json={**BODY, **changes})
    assert response.status_code == 200, response.text
    return response.json


async def test_put_list_get_delete(client: Client) -> None:
    created = await _create(client)
    assert created == {
        "id": created["id"],
        "name": "pg_demo",
        "type": "postgres",
        "meta": {"env": "sample"},
        "tags": ["compat", "sample"],
        "description": "Fake Postgres credential",
        "created_at": created["created_at"],
        "updated_at": created["updated_at"],
        "data": None,
    }
    assert created["id"].isdigit() and TS.match(created["created_at"])
    again = await _create(client, tags=["a", "b", "c"], credential_type="pg", type=None)
    assert again["id"] == created["id"]  # upsert by name
    assert again["tags"] == ["a", "b", "c"] and again["type"] == "pg"
    await _create(client, name="other", type="http", description="something else")

    listed = (await client.get("/api/credentials")).json
    names = [i["name"] for i in listed["items"]]  # the server may hold its own (noetl_system_db)
    assert [n for n in names if n in ("other", "pg_demo")] == ["other", "pg_demo"]
    assert names == sorted(names)
    assert listed["filter"] == {"type": None, "q": None}
    assert all(i["data"] is None for i in listed["items"])
    filtered = (await client.get("/api/credentials", params={"type": "pg", "q": "PG_"})).json
    assert [i["name"] for i in filtered["items"]] == ["pg_demo"]
    assert filtered["filter"] == {"type": "pg", "q": "PG_"}
    by_description = (await client.get("/api/credentials", params={"q": "else"})).json
    assert [i["name"] for i in by_description["items"]] == ["other"]

    by_name = (await client.get("/api/credentials/pg_demo")).json
    assert by_name["id"] == created["id"] and by_name["data"] is None
    by_id = (await client.get(f"/api/credentials/{created['id']}")).json
    assert by_id["name"] == "pg_demo"
    with_data = await client.get(
        "/api/credentials/pg_demo", params={"include_data": "true"}, headers=WORKER
    )
    assert with_data.status_code == 200
    assert with_data.json["data"] == BODY["data"]

    deleted = await client.delete("/api/credentials/pg_demo")
    assert deleted.json == {
        "message": "Credential deleted successfully",
        "id": created["id"],
        "name": "pg_demo",
    }
    gone = await client.get("/api/credentials/pg_demo")
    assert gone.status_code == 404
    assert gone.json == {"detail": "Credential not found", "code": "credential_not_found"}
    again_gone = await client.delete("/api/credentials/pg_demo")
    assert again_gone.status_code == 404


async def test_digit_identifier_is_an_id_first_then_a_name(client: Client) -> None:
    numeric = await _create(client, name="12345")
    other = await _create(client, name="by-id")
    assert (await client.get("/api/credentials/12345")).json["id"] == numeric["id"]
    assert (await client.get(f"/api/credentials/{other['id']}")).json["name"] == "by-id"


async def test_put_validation(client: Client) -> None:
    missing = await client.post("/api/credentials", json={"name": "x"})
    assert missing.status_code == 422
    assert missing.json["detail"][0]["loc"] == ["body", "data"]
    assert missing.json["detail"][0]["type"] == "missing"
    bad = await client.post(
        "/api/credentials",
        json={
            "name": "x" * 256,
            "data": [1],
            "tags": [1, 2],
            "type": "",
            "description": "d" * 2001,
        },
    )
    assert bad.status_code == 422
    assert {tuple(d["loc"]) for d in bad.json["detail"]} == {
        ("body", "name"),
        ("body", "data"),
        ("body", "tags"),
        ("body", "type"),
        ("body", "description"),
    }
    too_big = await client.post(
        "/api/credentials", json={"name": "big", "data": {"v": "x" * 70000}}
    )
    assert too_big.status_code == 422
    many_tags = await client.post(
        "/api/credentials", json={"name": "t", "data": {}, "tags": ",".join("abc" * 51)}
    )
    assert many_tags.status_code == 422


async def test_include_data_needs_a_worker_token(make_client) -> None:
    async with make_client(NOETL_API_TOKENS="api-token-0123456789abcdef") as client:
        await client.post("/api/credentials", json=BODY, headers=API)
        path, params = "/api/credentials/pg_demo", {"include_data": "true"}
        none = await client.get(path, params=params)
        assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
        lower = await client.get(path, params=params, headers=API)
        assert lower.status_code == 403
        assert lower.json["code"] == "credential_data_forbidden"
        assert "data" not in lower.text or SECRET not in lower.text
        for headers in (WORKER, INTERNAL):
            ok = await client.get(path, params=params, headers=headers)
            assert ok.status_code == 200 and ok.json["data"]["password"] == SECRET
        plain = await client.get(path, headers=API)
        assert plain.status_code == 200 and plain.json["data"] is None


async def test_include_data_without_worker_tokens_is_503(make_client) -> None:
    async with make_client(NOETL_WORKER_API_TOKENS="", NOETL_INTERNAL_API_TOKEN="") as client:
        await client.post("/api/credentials", json=BODY)
        response = await client.get("/api/credentials/pg_demo", params={"include_data": "1"})
        assert response.status_code == 503
        assert response.json["code"] == "worker_token_unset"
        assert int(response.headers["retry-after"]) >= 1


async def test_stored_row_is_sealed(client: Client, conn: psycopg.Connection) -> None:
    created = await _create(client)
    row = conn.execute(
        "SELECT data_encrypted FROM noetl.credential WHERE id = %s", (int(created["id"]),)
    ).fetchone()
    stored = row["data_encrypted"]
    assert SECRET not in stored and "db.example.invalid" not in stored
    envelope = json.loads(stored)
    assert is_envelope(envelope)
    assert envelope["alg"] == "AES-256-GCM"
    assert envelope["dek"] == {
        "p": "local",
        "kid": "env:NOETL_ENCRYPTION_KEY",
        "kv": "v1",
        "ct": envelope["dek"]["ct"],
    }
    assert len(base64.b64decode(envelope["dek"]["ct"])) == 12 + 32 + 16
    # the same data sealed twice gives different ciphertexts (fresh DEK and nonces)
    again = await _create(client)
    assert again["id"] == created["id"]
    restored = conn.execute(
        "SELECT data_encrypted FROM noetl.credential WHERE id = %s", (int(created["id"]),)
    ).fetchone()
    assert json.loads(restored["data_encrypted"])["ct"] != envelope["ct"]


async def test_wrong_key_fails_without_returning_ciphertext(
    make_client, conn: psycopg.Connection
) -> None:
    async with make_client() as client:
        await _create(client)
    stored = conn.execute("SELECT data_encrypted FROM noetl.credential").fetchone()
    other_key = base64.b64encode(b"o" * 32).decode()
    async with make_client(NOETL_ENCRYPTION_KEY=other_key) as client:
        response = await client.get(
            "/api/credentials/pg_demo", params={"include_data": "true"}, headers=WORKER
        )
        assert response.status_code == 500
        assert response.json == {
            "detail": "stored secret could not be decrypted",
            "code": "decrypt_failed",
        }
        envelope = json.loads(stored["data_encrypted"])
        assert envelope["ct"] not in response.text and envelope["dek"]["ct"] not in response.text
        without_data = await client.get("/api/credentials/pg_demo")
        assert without_data.status_code == 200  # metadata still reads


async def test_legacy_plaintext_row_is_read_and_resealed(
    client: Client, conn: psycopg.Connection
) -> None:
    legacy = {"host": "db.example.invalid", "password": SECRET}
    conn.execute(
        "INSERT INTO noetl.credential (name, type, data_encrypted) "
        "VALUES ('legacy', 'postgres', %s)",
        (json.dumps(legacy),),
    )
    response = await client.get(
        "/api/credentials/legacy", params={"include_data": "true"}, headers=WORKER
    )
    assert response.status_code == 200
    assert response.json["data"] == legacy
    stored = conn.execute(
        "SELECT data_encrypted FROM noetl.credential WHERE name = 'legacy'"
    ).fetchone()["data_encrypted"]
    assert SECRET not in stored and is_envelope(json.loads(stored))
    again = await client.get(
        "/api/credentials/legacy", params={"include_data": "true"}, headers=WORKER
    )
    assert again.json["data"] == legacy


@pytest.fixture
def execution(conn: psycopg.Connection):
    """An execution of a playbook with a keychain alias, inserted as the engine would."""

    def make(catalog_id: int) -> int:
        execution_id = conn.execute("SELECT noetl.snowflake_id() AS id").fetchone()["id"]
        conn.execute(
            """INSERT INTO noetl.execution (execution_id, catalog_id, pool, status, last_event_id,
                                            start_time)
               VALUES (%s, %s, 'default', 'RUNNING', 0, now())""",
            (execution_id, catalog_id),
        )
        return execution_id

    return make


ALIAS_PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: alias
  path: tests/alias
keychain:
  - name: db
    kind: credential
    credential: pg_demo
workflow:
  - step: start
    tool:
      kind: noop
"""


async def test_alias_resolution_order(client: Client, execution) -> None:
    entry = await register(client, content=ALIAS_PLAYBOOK)
    catalog_id = int(entry["catalog_id"])
    execution_id = execution(catalog_id)
    await _create(client)  # pg_demo
    params = {"include_data": "true", "execution_id": str(execution_id)}
    alias = await client.get("/api/credentials/db", params=params, headers=WORKER)
    assert alias.status_code == 200, alias.text
    assert alias.json["name"] == "pg_demo" and alias.json["data"]["password"] == SECRET
    direct = await client.get("/api/credentials/pg_demo", params=params, headers=WORKER)
    assert direct.json["name"] == "pg_demo"
    # a keychain row of the execution's catalog entry is the last resort
    cached = await client.post(
        f"/api/keychain/{catalog_id}/token_x",
        json={"token_data": {"access_token": "t"}, "credential_type": "bearer"},
        headers=WORKER,
    )
    assert cached.status_code == 200
    from_keychain = await client.get("/api/credentials/token_x", params=params, headers=WORKER)
    assert from_keychain.status_code == 200
    assert from_keychain.json["id"] == f"token_x:{catalog_id}:global"
    assert from_keychain.json["type"] == "bearer"
    assert from_keychain.json["data"] == {"access_token": "t"}
    missing = await client.get("/api/credentials/nothing", params=params, headers=WORKER)
    assert missing.status_code == 404
    bad = await client.get("/api/credentials/db", params={"execution_id": "x1"}, headers=WORKER)
    assert bad.status_code == 422 and bad.json["detail"][0]["loc"] == ["query", "execution_id"]


async def test_database_dump_holds_no_secret(client: Client, db_url: str) -> None:
    await _create(client)
    catalog_id = (await register(client, "tests/dump"))["catalog_id"]
    stored = await client.post(
        f"/api/keychain/{catalog_id}/tok",
        json={
            "token_data": {"access_token": "keychain-secret-value"},
            "credential_type": "bearer",
            "renew_config": {"client_secret": "renew-secret-value"},
            "auto_renew": True,
        },
        headers=WORKER,
    )
    assert stored.status_code == 200
    dump = subprocess.run(
        [pg_binary("pg_dump"), "--data-only", "--schema=noetl", "--dbname", db_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "pg_demo" in dump  # the rows are in the dump...
    for secret in (SECRET, "keychain-secret-value", "renew-secret-value"):
        assert secret not in dump  # ...their secrets are not
