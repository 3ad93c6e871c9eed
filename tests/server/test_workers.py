"""Worker pool registry (api.md §8.4) and execution variables (api.md §8.5)."""

from __future__ import annotations

import re

import psycopg

from tests.server.conftest import WORKER, Client

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
WORKER_BODY = {
    "name": "worker-b02b92b1",
    "component_type": "worker_pool",
    "runtime": "python",
    "status": "READY",
    "capacity": 1,
    "pid": 17240,
    "hostname": "unknown",
    "labels": {"nats_consumer": "noetl_worker_pool"},
    "meta": {"nats_url": "nats://127.0.0.1:4222"},
}


def _stored_status(conn: psycopg.Connection) -> str:
    row = conn.execute(
        "SELECT status FROM noetl.runtime WHERE kind = 'worker_pool' AND name = 'worker-b02b92b1'"
    ).fetchone()
    return row["status"]


async def test_register_list_heartbeat_deregister(client: Client, conn: psycopg.Connection) -> None:
    first = await client.post("/api/worker/pool/register", json=WORKER_BODY)
    assert first.status_code == 200, first.text
    assert first.json == {
        "status": "ok",
        "name": "worker-b02b92b1",
        "runtime_id": first.json["runtime_id"],
        "kind": "worker_pool",
        "runtime": "python",
    }
    assert first.json["runtime_id"].isdigit()
    again = await client.post("/api/worker/pool/register", json=WORKER_BODY)
    assert again.json["runtime_id"] == first.json["runtime_id"]  # upsert on (kind, name)

    listed = (await client.get("/api/worker/pools")).json
    assert listed["count"] == 1 and listed["error"] is None
    assert listed["runtime"] is None and listed["status"] is None
    item = listed["items"][0]
    assert item["runtime"] == {
        "type": "python",
        "pid": 17240,
        "hostname": "unknown",
        "nats_url": "nats://127.0.0.1:4222",
    }
    assert item["status"] == "ready" and item["capacity"] == 1
    assert item["labels"] == {"nats_consumer": "noetl_worker_pool"}
    assert all(TS.match(item[k]) for k in ("heartbeat", "created_at", "updated_at"))
    filtered = (
        await client.get("/api/worker/pools", params={"status": "ready", "runtime": "python"})
    ).json
    assert filtered["count"] == 1 and filtered["status"] == "ready"
    assert (await client.get("/api/worker/pools", params={"runtime": "rust"})).json["count"] == 0

    beat = await client.post("/api/worker/pool/heartbeat", json={"name": "worker-b02b92b1"})
    assert beat.json == {
        "status": "ok",
        "name": "worker-b02b92b1",
        "runtime_id": first.json["runtime_id"],
    }

    # display only: a silent pool shows offline, the stored row keeps its status
    conn.execute(
        "UPDATE noetl.runtime SET heartbeat = now() - interval '2 minutes' "
        "WHERE kind = 'worker_pool'"
    )
    stale = (await client.get("/api/worker/pools")).json["items"][0]
    assert stale["status"] == "offline"
    assert _stored_status(conn) == "ready"

    for method in ("POST", "DELETE"):
        gone = await client.request(
            method, "/api/worker/pool/deregister", json={"name": "worker-b02b92b1"}
        )
        assert gone.status_code == 200, gone.text
        assert gone.json == {
            "status": "ok",
            "name": "worker-b02b92b1",
            "kind": "worker_pool",
            "runtime_id": None,
            "runtime": None,
        }
    assert _stored_status(conn) == "offline"
    unknown = await client.request(
        "DELETE",
        "/api/worker/pool/deregister",
        json={"name": "nobody", "component_type": "worker_pool"},
    )
    assert unknown.status_code == 200 and unknown.json["name"] == "nobody"


async def test_runtime_object_is_merged(client: Client) -> None:
    body = {"name": "w2", "runtime": {"kind": "rust", "version": "1.2"}, "meta": {"zone": "a"}}
    response = await client.post("/api/worker/pool/register", json=body)
    assert response.json["runtime"] == {"kind": "rust", "version": "1.2"}  # echoed as sent
    item = (await client.get("/api/worker/pools")).json["items"][0]
    assert item["runtime"] == {
        "type": "rust",
        "version": "1.2",
        "zone": "a",
        "pid": None,
        "hostname": None,
    }


async def test_heartbeat_unknown_and_recreated(client: Client) -> None:
    unknown = await client.post("/api/worker/pool/heartbeat", json={"name": "ghost"})
    assert unknown.status_code == 404
    assert unknown.json == {
        "detail": {"status": "unknown", "name": "ghost"},
        "code": "runtime_unknown",
    }
    assert unknown.headers["retry-after"] == "3"
    recreated = await client.post(
        "/api/worker/pool/heartbeat",
        json={"name": "ghost", "registration": {"runtime": "python", "capacity": 2}},
    )
    assert recreated.status_code == 200
    assert recreated.json["status"] == "recreated" and recreated.json["runtime_id"].isdigit()
    assert (await client.get("/api/worker/pools")).json["items"][0]["capacity"] == 2
    bad = await client.post(
        "/api/worker/pool/heartbeat", json={"name": "ghost", "registration": {"capacity": -1}}
    )
    assert bad.status_code == 422
    assert bad.json["detail"][0]["loc"] == ["body", "registration", "capacity"]


async def test_register_validation(client: Client) -> None:
    cases = [
        ({}, ["body", "name"]),
        ({"name": "x", "component_type": "server_api"}, ["body", "component_type"]),
        ({"name": "x", "kind": "lease"}, ["body", "kind"]),
        ({"name": "x", "runtime": 5}, ["body", "runtime"]),
        ({"name": "x", "capacity": "many"}, ["body", "capacity"]),
        ({"name": "x", "labels": []}, ["body", "labels"]),
        ({"name": "x" * 257}, ["body", "name"]),
    ]
    for body, loc in cases:
        response = await client.post("/api/worker/pool/register", json=body)
        assert response.status_code == 422, body
        assert response.json["detail"][0]["loc"] == loc
    assert (await client.post("/api/worker/pool/deregister", json={})).status_code == 422


async def test_vars_three_shapes(client: Client) -> None:
    base = "/api/vars/612"
    first = await client.post(
        base, json={"variables": {"a": 1, "b": {"x": [1, 2]}}, "source_step": "start"}
    )
    assert first.status_code == 200, first.text
    assert first.json == {"execution_id": 612, "variables_set": 2, "var_names": ["a", "b"]}
    second = await client.post(
        base,
        json={
            "variables": [
                {"var_name": "c", "var_value": "text", "var_type": "computed"},
                {"var_name": "d"},
            ]
        },
    )
    assert second.json["var_names"] == ["c", "d"]
    third = await client.post(base, json={"e": True, "a": 10})
    assert third.json["variables_set"] == 2

    listed = (await client.get(base)).json
    assert listed["execution_id"] == 612 and listed["count"] == 5
    assert set(listed["variables"]) == {"a", "b", "c", "d", "e"}
    a = listed["variables"]["a"]
    assert a["value"] == 10 and a["type"] == "user_defined" and a["source_step"] is None
    assert listed["variables"]["b"]["source_step"] == "start"
    assert listed["variables"]["c"]["type"] == "computed"
    assert listed["variables"]["d"]["value"] is None
    assert TS.match(a["created_at"]) and a["access_count"] == 0

    one = await client.get(f"{base}/a")
    assert one.json == {
        "execution_id": 612,
        "var_name": "a",
        "value": 10,
        "type": "user_defined",
        "source_step": None,
        "created_at": one.json["created_at"],
        "accessed_at": one.json["accessed_at"],
        "access_count": 1,
    }
    assert (await client.get(f"{base}/a")).json["access_count"] == 2
    missing = await client.get(f"{base}/zzz")
    assert missing.status_code == 404 and missing.json["code"] == "var_not_found"

    deleted = await client.delete(f"{base}/a")
    assert deleted.json == {"execution_id": 612, "var_name": "a", "deleted": True}
    assert (await client.delete(f"{base}/a")).json["deleted"] is False
    cleared = await client.delete(base)
    assert cleared.json == {"execution_id": 612, "deleted_count": 4}
    assert (await client.delete(base)).json["deleted_count"] == 0


async def test_vars_redaction_by_caller(client: Client) -> None:
    await client.post(
        "/api/vars/7", json={"api_token": "abc", "plain": "eyJhbGciOi.eyJzdWIiOiIx.sig123", "n": 1}
    )
    anonymous = (await client.get("/api/vars/7")).json["variables"]
    assert anonymous["api_token"]["value"] == "[REDACTED]"
    assert anonymous["plain"]["value"] == "[REDACTED]"
    assert anonymous["n"]["value"] == 1
    worker = (await client.get("/api/vars/7", headers=WORKER)).json["variables"]
    assert worker["api_token"]["value"] == "abc"
    one = (await client.get("/api/vars/7/api_token")).json
    assert one["value"] == "[REDACTED]"


async def test_vars_validation(client: Client) -> None:
    assert (await client.post("/api/vars/7", json={})).status_code == 422
    assert (await client.post("/api/vars/7", json={"variables": {}})).status_code == 422
    many = {f"v{i}": i for i in range(101)}
    assert (await client.post("/api/vars/7", json=many)).status_code == 422
    bad_name = await client.post("/api/vars/7", json={"variables": {"1bad": 1}})
    assert bad_name.json["detail"][0]["loc"] == ["body", "variables", "1bad"]
    bad_type = await client.post("/api/vars/7", json={"variables": {"a": 1}, "var_type": "x"})
    assert bad_type.json["detail"][0]["loc"] == ["body", "var_type"]
    big = await client.post("/api/vars/7", json={"a": "x" * (1024 * 1024 + 1)})
    assert big.status_code == 422
    bad_id = await client.get("/api/vars/abc")
    assert bad_id.status_code == 422 and bad_id.json["detail"][0]["loc"] == ["path", "eid"]
    bad_var = await client.get("/api/vars/7/bad name")
    assert bad_var.status_code == 422
