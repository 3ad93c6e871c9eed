"""Catalog routes (api.md §6): register rules, list, resource, ui_schema, delete, restore."""

from __future__ import annotations

import asyncio
import base64
import re
import time

import psycopg
import pytest

from app.services import catalog as catalog_service
from engine.validate import Problem, validate_playbook
from tests.server.conftest import INTERNAL, PLAYBOOK, Client, register

ID = re.compile(r"^[0-9]{1,19}$")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
ENTRY_KEYS = {
    "catalog_id",
    "path",
    "version",
    "kind",
    "content",
    "layout",
    "payload",
    "meta",
    "created_at",
    "archived_at",
}
CREDENTIAL_DOC = """\
apiVersion: noetl.io/v2
kind: Credential
metadata:
  name: pg_demo
  path: tests/credentials/pg_demo
spec:
  type: postgres
"""
MINIMAL = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: v2
  path: {path}
workflow:
  - step: start
    tool:
      kind: noop
"""
AGENT_DOC = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: helper
  path: tests/agents/helper
  agent: "yes"
  capabilities: [search, summarise]
  terminal:
    visible: on
    scopes: "a, b"
workflow:
  - step: start
    tool:
      kind: noop
"""


async def test_register_shape_and_versions(client: Client) -> None:
    first = await register(client, "tests/sample")
    assert first == {
        "status": "success",
        "message": "Resource 'tests/sample' version '1' registered.",
        "path": "tests/sample",
        "version": 1,
        "catalog_id": first["catalog_id"],
        "kind": "playbook",
    }
    assert ID.match(first["catalog_id"])
    second = await register(client, "tests/sample")
    assert second["version"] == 2
    assert int(second["catalog_id"]) != int(first["catalog_id"])


async def test_register_base64_and_stored_entry(client: Client, conn: psycopg.Connection) -> None:
    text = PLAYBOOK.format(path="tests/b64")
    encoded = base64.b64encode(text.encode()).decode()
    wrapped = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60))
    done = (await client.post("/api/catalog/register", json={"content": wrapped})).json
    row = conn.execute(
        "SELECT content, kind, payload, meta, layout FROM noetl.catalog WHERE catalog_id = %s",
        (int(done["catalog_id"]),),
    ).fetchone()
    assert row["content"] == text  # the decoded text is stored
    assert row["kind"] == "playbook"
    assert row["payload"]["metadata"]["path"] == "tests/b64"
    assert row["layout"] is None
    meta = row["meta"]
    assert set(meta) == {
        "registered_at",
        "agent",
        "capabilities",
        "terminal",
        "terminal_visible",
        "terminal_scopes",
    }
    assert meta["agent"] is False and meta["capabilities"] == [] and meta["terminal"] == {}
    assert TS.match(meta["registered_at"])


async def test_register_other_kinds_and_meta(client: Client) -> None:
    credential = await register(client, content=CREDENTIAL_DOC)
    assert credential["kind"] == "credential"
    assert credential["path"] == "tests/credentials/pg_demo"
    custom = await client.post(
        "/api/catalog/register",
        json={"content": "metadata:\n  name: notes/one\nbody: 1\n", "resource_type": "Notebook"},
    )
    assert custom.status_code == 200, custom.text
    assert custom.json["kind"] == "notebook"  # a new kind is added to noetl.resource
    agent = await register(client, content=AGENT_DOC)
    entry = (
        await client.post("/api/catalog/resource", json={"catalog_id": agent["catalog_id"]})
    ).json
    assert entry["meta"]["agent"] is True
    assert entry["meta"]["capabilities"] == ["search", "summarise"]
    assert entry["meta"]["terminal_visible"] is True
    assert entry["meta"]["terminal_scopes"] == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("- just\n- a list\n", ["body", "content"]),
        ("key: [unclosed\n", ["body", "content"]),
        ("kind: Playbook\nworkflow: []\n", ["body", "content", "metadata", "path"]),
        ("metadata:\n  path: a/../b\n", ["body", "content", "metadata", "path"]),
        ("metadata:\n  path: x/ui_schema\n", ["body", "content", "metadata", "path"]),
        ("metadata:\n  path: 'has space'\n", ["body", "content", "metadata", "path"]),
        ("kind: '9bad'\nmetadata:\n  path: a/b\n", ["body", "content", "kind"]),
    ],
)
async def test_register_rejects_bad_documents(client: Client, content: str, field: list) -> None:
    response = await client.post(
        "/api/catalog/register", json={"content": content, "resource_type": "Thing"}
    )
    assert response.status_code == 422, response.text
    body = response.json
    assert body["code"] == "validation_error"
    assert [item["loc"] for item in body["detail"]] == [field]
    assert set(body["detail"][0]) == {"loc", "msg", "type", "path", "line"}


async def test_register_missing_content_and_too_large(make_client) -> None:
    async with make_client(NOETL_CATALOG_MAX_CONTENT_BYTES="100") as client:
        missing = await client.post("/api/catalog/register", json={})
        assert missing.status_code == 422
        assert missing.json["detail"][0]["loc"] == ["body", "content"]
        assert missing.json["detail"][0]["type"] == "missing"
        big = await client.post(
            "/api/catalog/register", json={"content": "metadata: {path: a}\nx: " + "y" * 200}
        )
        assert big.status_code == 413
        assert big.json["code"] == "payload_too_large"


async def test_invalid_playbook_lists_every_problem(client: Client, monkeypatch) -> None:
    problems = [
        Problem(("workflow", i, "step"), f"problem {i}", "missing", f"/workflow/{i}/step", 10 + i)
        for i in range(5)
    ]
    monkeypatch.setattr(catalog_service, "validate_playbook", lambda text: (None, problems))
    response = await client.post(
        "/api/catalog/register", json={"content": PLAYBOOK.format(path="tests/bad")}
    )
    assert response.status_code == 422
    body = response.json
    assert body["code"] == "invalid_playbook"
    assert body["detail"] == (
        "register_resource: 'tests/bad' is not a valid playbook: workflow.0.step: problem 0; "
        "workflow.1.step: problem 1; workflow.2.step: problem 2 (+2 more)"
    )
    assert body["errors"][4] == {
        "loc": ["workflow", 4, "step"],
        "msg": "problem 4",
        "type": "missing",
        "path": "/workflow/4/step",
        "line": 14,
    }
    assert len(body["errors"]) == 5


LEGACY_INVALID = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: compat_invalid
  path: compat/invalid
workflow:
  - step: start
    tool:
      kind: python
      code: |
        result = {"ok": True}
    next:
      - end
  - desc: step without a name
    tool:
      kind: noop
"""


async def test_invalid_playbook_from_the_validator(client: Client) -> None:
    if not validate_playbook(LEGACY_INVALID)[1]:
        pytest.skip("engine.validate has no dsl.md §3 rules yet")
    response = await client.post("/api/catalog/register", json={"content": LEGACY_INVALID})
    assert response.status_code == 422
    assert response.json["code"] == "invalid_playbook"
    assert all(item["path"].startswith("/") for item in response.json["errors"])


async def test_list_order_filters_and_shape(client: Client) -> None:
    v1 = await register(client, "tests/listed")
    v2 = await register(client, "tests/listed")
    cred = await register(client, content=CREDENTIAL_DOC)
    agent = await register(client, content=AGENT_DOC)
    everything = (await client.post("/api/catalog/list", json={})).json["entries"]
    assert [e["catalog_id"] for e in everything] == [
        agent["catalog_id"],
        cred["catalog_id"],
        v2["catalog_id"],
        v1["catalog_id"],
    ]
    for entry in everything:
        assert set(entry) == ENTRY_KEYS
        assert TS.match(entry["created_at"]) and entry["archived_at"] is None
    by_path = (await client.post("/api/catalog/list", json={"path": "tests/listed"})).json
    assert [e["version"] for e in by_path["entries"]] == [2, 1]
    by_kind = (await client.post("/api/catalog/list", json={"resource_type": "Secrets"})).json
    assert [e["catalog_id"] for e in by_kind["entries"]] == [cred["catalog_id"]]
    agents = (await client.post("/api/catalog/list", json={"agent_only": True})).json
    assert [e["catalog_id"] for e in agents["entries"]] == [agent["catalog_id"]]
    capable = (await client.post("/api/catalog/list", json={"capability": "search"})).json
    assert [e["catalog_id"] for e in capable["entries"]] == [agent["catalog_id"]]
    none = (await client.post("/api/catalog/list", json={"capabilities": ["fly"]})).json
    assert none["entries"] == []
    listed = await client.post("/api/catalog/agents/list", json={"capabilities": ["summarise"]})
    assert [e["catalog_id"] for e in listed.json["entries"]] == [agent["catalog_id"]]
    empty_body = await client.post("/api/catalog/agents/list")
    assert len(empty_body.json["entries"]) == 1


async def test_list_validation(client: Client) -> None:
    response = await client.post(
        "/api/catalog/list", json={"agent_only": "maybe", "capabilities": ["x"] * 51}
    )
    assert response.status_code == 422
    assert {tuple(d["loc"]) for d in response.json["detail"]} == {
        ("body", "agent_only"),
        ("body", "capabilities"),
    }


async def test_resource_selectors(client: Client) -> None:
    v1 = await register(client, "tests/res")
    v2 = await register(client, "tests/res")
    by_path = await client.post("/api/catalog/resource", json={"path": "tests/res"})
    assert by_path.status_code == 200
    entry = by_path.json
    assert set(entry) == ENTRY_KEYS
    assert entry["catalog_id"] == v2["catalog_id"] and entry["version"] == 2
    assert entry["kind"] == "playbook"
    assert entry["content"] == PLAYBOOK.format(path="tests/res")
    assert entry["payload"]["workload"]["greeting"] == "hello"
    assert entry["layout"] is None and entry["archived_at"] is None
    for version in (1, "1"):
        picked = await client.post(
            "/api/catalog/resource", json={"path": "tests/res", "version": version}
        )
        assert picked.json["catalog_id"] == v1["catalog_id"]
    for latest in ("latest", "LATEST"):
        picked = await client.post(
            "/api/catalog/resource", json={"path": "tests/res", "version": latest}
        )
        assert picked.json["version"] == 2
    for cid in (v1["catalog_id"], int(v1["catalog_id"])):
        picked = await client.post("/api/catalog/resource", json={"catalog_id": cid, "path": "x"})
        assert picked.json["version"] == 1  # catalog_id wins over path
    listed = (await client.post("/api/catalog/list", json={"path": "tests/res"})).json
    assert listed["entries"][0] == entry  # the SQL and the Python rendering agree


async def test_resource_errors(client: Client) -> None:
    neither = await client.post("/api/catalog/resource", json={"version": 1})
    assert neither.status_code == 422 and neither.json["code"] == "validation_error"
    miss = await client.post("/api/catalog/resource", json={"path": "tests/none"})
    assert miss.status_code == 404
    assert miss.json == {"detail": "Catalog entry not found", "code": "catalog_entry_not_found"}
    miss_id = await client.post("/api/catalog/resource", json={"catalog_id": "123"})
    assert miss_id.status_code == 404
    for bad in ({"catalog_id": "12x"}, {"catalog_id": 0}, {"catalog_id": True}):
        response = await client.post("/api/catalog/resource", json=bad)
        assert response.status_code == 422
        assert response.json["detail"][0]["loc"] == ["body", "catalog_id"]
    for version in (0, "two", 1.5):
        response = await client.post(
            "/api/catalog/resource", json={"path": "tests/x", "version": version}
        )
        assert response.status_code == 422
        assert response.json["detail"][0]["loc"] == ["body", "version"]


EXPECTED_FIELDS = [
    {
        "name": "greeting",
        "kind": "string",
        "default": "hello",
        "description": "Greeting word",
        "secret": False,
        "credential_glob": None,
        "options": None,
        "children": None,
    },
    {
        "name": "repeat",
        "kind": "enum",
        "default": 3,
        "description": None,
        "secret": False,
        "credential_glob": None,
        "options": ["1", "2", "3"],
        "children": None,
    },
    {
        "name": "pg_auth",
        "kind": "string",
        "default": "pg_demo",
        "description": None,
        "secret": False,
        "credential_glob": "pg_*",
        "options": None,
        "children": None,
    },
    {
        "name": "api_key",
        "kind": "string",
        "default": "not-a-real-key",
        "description": None,
        "secret": True,
        "credential_glob": None,
        "options": None,
        "children": None,
    },
    {
        "name": "options",
        "kind": "object",
        "default": {"verbose": False},
        "description": None,
        "secret": False,
        "credential_glob": None,
        "options": None,
        "children": [
            {
                "name": "verbose",
                "kind": "boolean",
                "default": False,
                "description": None,
                "secret": False,
                "credential_glob": None,
                "options": None,
                "children": None,
            }
        ],
    },
]


async def test_ui_schema(client: Client) -> None:
    await register(client, "tests/ui/form")
    await register(client, "tests/ui/form", MINIMAL.format(path="tests/ui/form"))
    first = await client.get("/api/catalog/tests/ui/form/ui_schema", params={"version": "1"})
    assert first.status_code == 200, first.text
    body = first.json
    assert body["fields"] == EXPECTED_FIELDS
    assert {k: v for k, v in body.items() if k not in ("fields", "generated_at")} == {
        "path": "tests/ui/form",
        "version": 1,
        "kind": "playbook",
        "title": "sample",
        "description_markdown": "Sample playbook.",
        "exposed_in_ui": True,
    }
    assert TS.match(body["generated_at"])
    latest = (await client.get("/api/catalog/tests/ui/form/ui_schema")).json
    assert latest["version"] == 2 and latest["fields"] == [] and latest["exposed_in_ui"] is False
    missing = await client.get("/api/catalog/tests/none/ui_schema")
    assert missing.status_code == 404
    assert missing.json == {
        "detail": "resource not found: tests/none@latest",
        "code": "catalog_entry_not_found",
    }
    missing_v = await client.get("/api/catalog/tests/ui/form/ui_schema", params={"version": "7"})
    assert missing_v.json["detail"] == "resource not found: tests/ui/form@7"
    bad = await client.get("/api/catalog/tests/ui/form/ui_schema", params={"version": "0"})
    assert bad.status_code == 422 and bad.json["detail"][0]["loc"] == ["query", "version"]
    wrong_method = await client.post("/api/catalog/tests/ui/form/ui_schema")
    assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["allow"]


async def test_delete_and_restore(client: Client) -> None:
    v1 = await register(client, "tests/gone")
    v2 = await register(client, "tests/gone")
    deleted = await client.post(
        "/api/catalog/delete", json={"path": "tests/gone", "version": 2}, headers=INTERNAL
    )
    assert deleted.status_code == 200, deleted.text
    assert deleted.json == {
        "status": "success",
        "message": "Archived 1 version(s) of 'tests/gone'.",
        "path": "tests/gone",
        "deleted": [{"catalog_id": v2["catalog_id"], "version": 2}],
        "count": 1,
    }
    latest = (await client.post("/api/catalog/resource", json={"path": "tests/gone"})).json
    assert latest["version"] == 1  # the archived latest is hidden at once (cache dropped)
    hidden = await client.post("/api/catalog/resource", json={"path": "tests/gone", "version": 2})
    assert hidden.status_code == 404
    by_id = (await client.post("/api/catalog/resource", json={"catalog_id": v2["catalog_id"]})).json
    assert TS.match(by_id["archived_at"])
    everything = await client.post(
        "/api/catalog/delete", json={"path": "tests/gone"}, headers=INTERNAL
    )
    assert everything.json["deleted"] == [{"catalog_id": v1["catalog_id"], "version": 1}]
    again = await client.post("/api/catalog/delete", json={"path": "tests/gone"}, headers=INTERNAL)
    assert again.json["count"] == 0 and again.json["deleted"] == []
    unknown = await client.post("/api/catalog/delete", json={"path": "no/such"}, headers=INTERNAL)
    assert unknown.status_code == 200 and unknown.json["count"] == 0
    listed = (await client.post("/api/catalog/list", json={"path": "tests/gone"})).json
    assert listed["entries"] == []
    archived = (
        await client.post(
            "/api/catalog/list", json={"path": "tests/gone", "include_archived": True}
        )
    ).json
    assert len(archived["entries"]) == 2
    gone_ui = await client.get("/api/catalog/tests/gone/ui_schema")
    assert gone_ui.status_code == 404
    restored = await client.post(
        "/api/catalog/restore", json={"path": "tests/gone"}, headers=INTERNAL
    )
    assert restored.json["restored"] == [
        {"catalog_id": v1["catalog_id"], "version": 1},
        {"catalog_id": v2["catalog_id"], "version": 2},
    ]
    assert restored.json["count"] == 2
    assert (await client.post("/api/catalog/resource", json={"path": "tests/gone"})).json[
        "version"
    ] == 2
    again3 = await register(client, "tests/gone")
    assert again3["version"] == 3  # versions are never reused
    bad = await client.post("/api/catalog/delete", json={"version": 1}, headers=INTERNAL)
    assert bad.status_code == 422


async def test_cache_is_dropped_by_notify(client: Client, conn: psycopg.Connection) -> None:
    """A register committed by someone else (here: plain SQL) reaches the cache by NOTIFY."""
    await client.state.hub.connected.wait()
    await register(client, "tests/cached")
    first = (await client.post("/api/catalog/resource", json={"path": "tests/cached"})).json
    assert first["version"] == 1
    generation = client.state.cache.generation
    conn.execute(
        "SELECT * FROM noetl.catalog_register('tests/cached', 'playbook', 'x: 1', '{}', NULL, '{}')"
    )
    deadline = time.monotonic() + 5
    while client.state.cache.generation == generation and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # waiting on the effect: the hub's invalidation
    second = (await client.post("/api/catalog/resource", json={"path": "tests/cached"})).json
    assert second["version"] == 2
