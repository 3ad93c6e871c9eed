"""The OpenAPI document and the runtime contract describe exactly the mounted routes."""

from __future__ import annotations

from falcon import inspect

from app.asgi import create_app
from app.state import State
from core.settings import Settings
from tests.server.conftest import API_TOKEN, INTERNAL_TOKEN, WORKER_TOKEN, Client, server_env

METHODS = {"get", "post", "put", "patch", "delete"}


def mounted(app, state: State) -> set[tuple[str, str]]:
    """(path, METHOD) of every responder falcon routes to, sinks included."""
    found = {
        (route.path, method.method)
        for route in inspect.inspect_routes(app)
        for method in route.methods
        if not method.internal  # falcon's default OPTIONS and 405 responders
    }
    for sink in inspect.inspect_sinks(app):
        owners = [r for r in state.routes if r.sink is not None and r.sink.pattern == sink.prefix]
        assert len(owners) == 1, f"sink {sink.prefix} has no documented route"
        found |= {(owners[0].path, method) for method in owners[0].ops}
    return found


async def test_every_route_is_documented_and_nothing_else(client: Client) -> None:
    document = (await client.get("/api/openapi.json")).json
    assert document["openapi"] == "3.1.0"
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    app = client.conductor.app
    assert mounted(app, client.state) == documented
    for path, item in document["paths"].items():
        for method, operation in item.items():
            success = [c for c in operation["responses"] if c.startswith("2")]
            assert success and operation["responses"][success[0]]["content"], (method, path)
            assert "Error" in str(operation["responses"].get("500"))
            if "{" in path:
                names = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
                assert names == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}


def test_a_route_without_a_document_fails_the_check(db_url: str, tmp_path) -> None:
    """The check above really compares: a route added behind the table's back is caught."""
    settings = Settings.from_env(server_env(db_url, tmp_path))
    state = State.build(settings)
    app = create_app(settings, state)

    class Stray:
        async def on_get(self, req, resp) -> None:
            resp.media = {}

    app.add_route("/api/stray", Stray())
    documented = {(r.path, m) for r in state.routes for m in r.ops}
    assert ("/api/stray", "GET") in mounted(app, state) - documented


async def test_runtime_contract(make_client) -> None:
    async with make_client(NOETL_API_TOKENS=API_TOKEN) as client:
        response = await client.get("/api/runtime/contract")
        assert response.status_code == 200
        contract = response.json
        text = response.text
        for token in (API_TOKEN, WORKER_TOKEN, INTERNAL_TOKEN):
            assert token not in text
        listed = [line for lines in contract["routes"].values() for line in lines]
        expected = sorted(f"{m} {r.path}" for r in client.state.routes for m in r.ops)
        assert sorted(listed) == expected  # each mounted route exactly once
        grouped = [line for lines in contract["groups"].values() for line in lines]
        assert sorted(grouped) == expected
        assert set(contract["routes"]) == {"public", "protected", "worker", "internal"}
        assert "GET /livez" in contract["routes"]["public"]
        assert "POST /api/catalog/delete" in contract["routes"]["internal"]
        assert "GET /api/keychain/{catalog_id}/{keychain_name}" in contract["routes"]["worker"]
        assert {
            "health",
            "catalog",
            "executions",
            "worker",
            "credentials",
            "keychain",
            "internal",
            "dashboard",
        } <= set(contract["groups"])
        assert contract["authentication"]["api"]["required"] is True
        assert contract["authentication"]["public"]["required"] is False
        assert contract["server"] == "noetl-control-plane"
        assert contract["api_version"] == "1"
        assert contract["execution_contract"]["start"]["path"] == "/api/execute"
        assert contract["cli_operation_mapping"]["catalog_register"] == "/api/catalog/register"
        assert "query" not in contract["cli_operation_mapping"]
        assert contract["limits"]["http_max_body_bytes"] == 16777216
        assert contract["streams"]["resume_header"] == "Last-Event-ID"
    async with make_client() as open_client:
        contract = (await open_client.get("/api/runtime/contract")).json
        assert contract["authentication"]["api"]["required"] is False


async def test_metrics_use_route_templates(client: Client) -> None:
    await client.get("/api/vars/612")
    await client.get("/api/vars/613")
    text = (await client.get("/metrics")).text
    assert 'route="/api/vars/{eid}"' in text
    assert "612" not in text.split("noetl_server_request_duration_seconds", 1)[1].split("\n# ")[0]
    assert "noetl_build_info{" in text and 'role="server"' in text
    assert "noetl_server_db_pool_connections" in text
