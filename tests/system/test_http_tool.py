"""http tool (dsl.md §8.2) against a local server: shapes, bodies, auth, errors, pooling, and
the retry policies of a pipeline against flaky, slow and paginated endpoints."""

from __future__ import annotations

import base64
from typing import Any

from tests.system.conftest import TestServer
from tests.system.helpers import command, with_settings
from workers.system.run import ToolOutcome, ToolServices, run_tool


async def http(services: ToolServices, **config: Any) -> ToolOutcome:
    return await run_tool(command({"kind": "http", **config}), services)


async def test_json_response_shape(services: ToolServices, http_server: TestServer) -> None:
    out = await http(services, url=f"{http_server.url}/json")
    assert out.status == "ok" and out.error is None
    data = out.data
    assert data["status_code"] == 200
    assert data["data"] == data["body"] == {"hello": "world", "n": 1}
    assert data["headers"]["content-type"] == "application/json"
    assert data["headers"]["x-test"] == "yes"
    assert out.http == {"status": 200, "headers": data["headers"]}
    wire = out.result()
    assert wire["status"] == "success" and wire["context"]["data"] == data


async def test_text_response_is_kept_as_text(
    services: ToolServices, http_server: TestServer
) -> None:
    out = await http(services, url=f"{http_server.url}/text")
    assert out.data["data"] == out.data["body"] == "plain words"


async def test_request_parts_reach_the_server(
    services: ToolServices, http_server: TestServer
) -> None:
    out = await http(
        services,
        url=f"{http_server.url}/echo",
        method="post",
        params={"a": 1, "flag": True, "gone": None},
        headers={"X-Num": 7, "X-Null": None},
        json={"k": [1, 2]},
    )
    echo = out.data["data"]
    assert echo["method"] == "POST"
    assert echo["query"] == {"a": "1", "flag": "true"}
    assert echo["headers"]["x-num"] == "7" and "x-null" not in echo["headers"]
    assert echo["headers"]["content-type"] == "application/json"
    assert echo["body"] == '{"k":[1,2]}' or echo["body"].replace(" ", "") == '{"k":[1,2]}'


async def test_params_merge_with_the_url_query(
    services: ToolServices, http_server: TestServer
) -> None:
    out = await http(services, url=f"{http_server.url}/echo?x=1", params={"a": 2})
    assert out.data["data"]["query"] == {"x": "1", "a": "2"}


async def test_form_and_raw_bodies(services: ToolServices, http_server: TestServer) -> None:
    out = await http(
        services, url=f"{http_server.url}/echo", method="POST", form={"a": "x y", "b": 2}
    )
    assert out.data["data"]["body"] == "a=x+y&b=2"
    out = await http(services, url=f"{http_server.url}/echo", method="PUT", body="raw text")
    assert out.data["data"]["body"] == "raw text"
    out = await http(services, url=f"{http_server.url}/echo", method="PUT", body={"as": "json"})
    assert out.data["data"]["body"] == '{"as": "json"}'
    assert out.data["data"]["headers"]["content-type"] == "application/json"


async def test_two_bodies_are_a_config_error(
    services: ToolServices, http_server: TestServer
) -> None:
    out = await http(services, url=f"{http_server.url}/echo", json={}, body="x")
    assert out.error is not None and out.error["kind"] == "config"


async def test_missing_url_is_a_config_error(services: ToolServices) -> None:
    out = await http(services)
    assert out.error is not None and out.error["kind"] == "config"


async def test_error_status_keeps_the_data(services: ToolServices, http_server: TestServer) -> None:
    out = await http(services, url=f"{http_server.url}/status/404")
    assert out.status == "error" and out.error is not None
    assert out.error == {
        "kind": "http_status",
        "message": "HTTP 404",
        "retryable": False,
        "status_code": 404,
    }
    assert out.data["status_code"] == 404 and out.data["data"] == {"error": "as asked"}
    assert out.http is not None and out.http["status"] == 404
    for code, retryable in ((503, True), (429, True), (408, True), (500, True), (400, False)):
        out = await http(services, url=f"{http_server.url}/status/{code}")
        assert out.error is not None and out.error["retryable"] is retryable, code


async def test_redirects_follow_by_default(services: ToolServices, http_server: TestServer) -> None:
    out = await http(services, url=f"{http_server.url}/redirect")
    assert out.data["data"] == {"hello": "world", "n": 1}
    out = await http(services, url=f"{http_server.url}/redirect", follow_redirects=False)
    assert out.status == "error" and out.data["status_code"] == 302


async def test_connection_refused(services: ToolServices, unused_port: int) -> None:
    out = await http(services, url=f"http://127.0.0.1:{unused_port}/x")
    assert out.status == "error" and out.data is None
    assert out.error is not None
    assert (out.error["kind"], out.error["retryable"]) == ("connection", True)
    assert out.http == {"status": None, "headers": {}}


async def test_timeout(services: ToolServices, http_server: TestServer) -> None:
    out = await http(services, url=f"{http_server.url}/slow?seconds=3", timeout_seconds=0.3)
    assert out.status == "error" and out.data is None and out.error is not None
    assert (out.error["kind"], out.error["retryable"]) == ("timeout", True)
    out = await http(
        with_settings(services, http_timeout_seconds=0.3), url=f"{http_server.url}/slow?seconds=3"
    )
    assert out.error is not None and out.error["kind"] == "timeout"


async def test_response_above_the_inline_limit(
    services: ToolServices, http_server: TestServer
) -> None:
    out = await http(
        with_settings(services, result_inline_max_bytes=10_000),
        url=f"{http_server.url}/big?bytes=50000",
    )
    assert out.error is not None and out.error["kind"] == "size_limit"
    assert out.error["limit"] == 10_000


async def test_one_pooled_connection_serves_many_requests(
    services: ToolServices, http_server: TestServer
) -> None:
    before = len(http_server.peers)
    for _ in range(3):
        out = await http(services, url=f"{http_server.url}/json")
        assert out.status == "ok"
    ports = {port for _, port in http_server.peers[before:]}
    assert len(ports) == 1  # keep-alive: the client pool reused one connection


async def test_inline_auth_kinds(services: ToolServices, http_server: TestServer) -> None:
    url = f"{http_server.url}/echo"
    out = await http(services, url=url, auth={"type": "bearer", "token": "abcd-1234"})
    assert out.data["data"]["headers"]["authorization"] == "Bearer ***"  # the token is redacted
    out = await http(
        services, url=url, auth={"type": "basic", "username": "u", "password": "pw-secret"}
    )
    raw = base64.b64encode(b"u:pw-secret").decode()
    assert out.data["data"]["headers"]["authorization"] == f"Basic {raw}"
    out = await http(
        services, url=url, auth={"type": "api_key", "header": "X-Token", "token": "tkn-42"}
    )
    assert out.data["data"]["headers"]["x-token"] == "***"


async def test_auth_from_credential_aliases(
    services: ToolServices, http_server: TestServer
) -> None:
    url = f"{http_server.url}/echo"
    out = await http(services, url=url, auth="api-bearer")
    assert out.status == "ok"
    # The secret reached the server, and left the worker only as ***.
    assert out.data["data"]["headers"]["authorization"] == "Bearer ***"
    out = await http(services, url=url, auth="api-basic")
    assert out.data["data"]["headers"]["authorization"].startswith("Basic ")
    out = await http(services, url=url, auth="api-key")
    assert out.data["data"]["headers"]["x-key"] == "***"
    out = await http(services, url=url, auth={"type": "bearer", "credential": "api-bearer"})
    assert out.data["data"]["headers"]["authorization"] == "Bearer ***"


async def test_credential_errors(services: ToolServices, http_server: TestServer) -> None:
    url = f"{http_server.url}/echo"
    out = await http(services, url=url, auth="weird")
    assert out.error is not None and out.error["kind"] == "credential"
    assert "oauth2" in out.error["message"]
    out = await http(services, url=url, auth="nobody")
    assert out.error is not None
    assert (out.error["kind"], out.error["retryable"]) == ("credential", False)


async def test_deferred_keychain_strings_render_on_the_worker(
    services: ToolServices, http_server: TestServer
) -> None:
    cmd = command(
        {
            "kind": "http",
            "url": f"{http_server.url}/echo",
            "headers": {
                "Authorization": "Bearer {{ keychain['api-bearer'].token }}",
                "X-Plain": "{{ not_rendered }}",
            },
        },
        deferred=["/tool_config/headers/Authorization"],
    )
    out = await run_tool(cmd, services)
    headers = out.data["data"]["headers"]
    assert headers["authorization"] == "Bearer ***"
    assert headers["x-plain"] == "{{ not_rendered }}"  # only deferred strings are rendered


# --- retry policies of a pipeline ----------------------------------------------------------


def fetch_task(url: str, rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"fetch": {"kind": "http", "url": url, "spec": {"policy": {"rules": rules}}, **extra}}


RETRY_ON_RETRYABLE = {
    "when": "{{ output.status == 'error' and output.error.retryable }}",
    "then": {"do": "retry", "attempts": 4, "backoff": "exponential", "delay": 0.01},
}


async def test_flaky_endpoint_succeeds_after_retries(
    services: ToolServices, http_server: TestServer
) -> None:
    url = f"{http_server.url}/flaky/a?fail=2"
    cmd = command(
        [
            fetch_task(
                url,
                [
                    RETRY_ON_RETRYABLE,
                    {"when": "{{ output.status == 'error' }}", "then": {"do": "fail"}},
                ],
            ),
            {
                "after": {
                    "kind": "python",
                    "input": {
                        "seen": "{{ _prev.data }}",
                        "attempt": "{{ _results.fetch.data.attempt }}",
                    },
                    "code": "result = {'attempt': attempt, 'ok': seen['ok']}",
                }
            },
        ]
    )
    out = await run_tool(cmd, services)
    assert out.status == "ok", out.error
    assert out.data["fetch"]["data"] == {"ok": True, "attempt": 3}
    assert out.data["after"] == {"attempt": 3, "ok": True}
    assert http_server.hits["/flaky/a"] == 3


async def test_retries_exhausted_fail_with_the_last_error(
    services: ToolServices, http_server: TestServer
) -> None:
    url = f"{http_server.url}/flaky/b?fail=10"
    rule = {**RETRY_ON_RETRYABLE, "then": {**RETRY_ON_RETRYABLE["then"], "attempts": 3}}
    out = await run_tool(command([fetch_task(url, [rule])]), services)
    assert out.status == "error" and out.error is not None
    assert out.error["kind"] == "http_status" and out.error["task"] == "fetch"
    assert http_server.hits["/flaky/b"] == 3  # attempts counts the first run
    assert out.data["fetch"]["status_code"] == 503


async def test_slow_endpoint_times_out_on_every_attempt(
    services: ToolServices, http_server: TestServer
) -> None:
    rule = {
        "when": "{{ output.error.kind == 'timeout' }}",
        "then": {"do": "retry", "attempts": 2, "delay": 0.01},
    }
    cmd = command([fetch_task(f"{http_server.url}/slow?seconds=2", [rule], timeout_seconds=0.2)])
    out = await run_tool(cmd, services)
    assert out.error is not None
    assert (out.error["kind"], out.error["task"]) == ("timeout", "fetch")


async def test_paginated_endpoint_with_jump_and_set(
    services: ToolServices, http_server: TestServer
) -> None:
    rules = [
        {"when": "{{ output.status == 'error' }}", "then": {"do": "fail"}},
        {
            "when": "{{ output.data.data.next }}",
            "then": {
                "do": "jump",
                "to": "fetch",
                "set": {"ctx.page": "{{ output.data.data.next }}"},
            },
        },
        {"else": {"then": {"do": "break"}}},
    ]
    cmd = command(
        [
            fetch_task(
                f"{http_server.url}/items",
                rules,
                params={"page": "{{ page | default(1) }}"},
                set={
                    "ctx.collected": "{{ (collected | default([])) + output.data.data['items'] }}"
                },
            ),
            {"never": {"kind": "python", "code": "result = 'not reached after break'"}},
        ]
    )
    out = await run_tool(cmd, services)
    assert out.status == "ok", out.error
    assert out.data["_context_updates"] == {"collected": ["a", "b", "c", "d", "e"], "page": 3}
    assert out.data["fetch"]["data"]["page"] == 3
    assert "never" not in out.data
