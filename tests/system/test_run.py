"""The runner: noop, unknown kinds, deferred rendering with the keychain, redaction, the size
limit, the wire result, and the credential resolver over the server API."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.system.conftest import TestServer
from tests.system.helpers import command, with_settings
from workers.system.credentials import api_resolver
from workers.system.run import CredentialError, ToolOutcome, ToolServices, redact, run_tool


async def test_noop(services: ToolServices) -> None:
    out = await run_tool(command({"kind": "noop"}), services)
    assert (out.status, out.data, out.error) == ("ok", {}, None)
    assert out.result() == {
        "status": "success",
        "context": {
            "status": "success",
            "data": {},
            "error": None,
            "stdout": None,
            "stderr": None,
            "exit_code": 0,
            "duration_ms": out.duration_ms,
        },
    }


@pytest.mark.parametrize("kind", ["duckdb", "snowflake", "shell", "workbook"])
async def test_kinds_this_pool_does_not_run(services: ToolServices, kind: str) -> None:
    out = await run_tool(command({"kind": kind}), services)
    assert out.status == "error" and out.error is not None
    assert (out.error["kind"], out.error["retryable"]) == ("not_supported", False)
    assert out.result()["status"] == "error"
    assert out.result()["context"]["error"] == out.error


async def test_kind_falls_back_to_the_tool_config(services: ToolServices) -> None:
    cmd = command({"kind": "noop"})
    del cmd["action"]
    assert (await run_tool(cmd, services)).status == "ok"


async def test_a_command_without_context_is_a_config_error(services: ToolServices) -> None:
    out = await run_tool({"action": "noop", "execution_id": 1}, services)
    assert out.error is not None and out.error["kind"] == "config"


async def test_deferred_strings_render_with_the_keychain(services: ToolServices) -> None:
    cmd = command(
        {
            "kind": "python",
            "code": "result = {'token': token, 'user': user}",
            "input": {
                "token": "{{ keychain['api-bearer'].token }}",
                "user": "{{ keychain['api-basic'].username }}-{{ who }}",
            },
        },
        render_context={"who": "ops"},
        deferred=["/tool_config/input/token", "/tool_config/input/user"],
    )
    out = await run_tool(cmd, services)
    assert out.status == "ok", out.error
    # The token is a resolved secret: redacted on the way out. The user name "ann" is a
    # credential value too, but shorter than 4 characters, so it is kept.
    assert out.data == {"token": "***", "user": "ann-ops"}


async def test_deferred_template_error_names_its_pointer(services: ToolServices) -> None:
    cmd = command(
        {"kind": "noop", "x": {"y": "{{ 1 + missing }}"}},
        deferred=["/tool_config/x/y"],
    )
    out = await run_tool(cmd, services)
    assert out.error is not None and out.error["kind"] == "template"
    assert out.error["path"] == "/tool_config/x/y"


async def test_deferred_pointer_to_nothing(services: ToolServices) -> None:
    out = await run_tool(command({"kind": "noop"}, deferred=["/tool_config/absent"]), services)
    assert out.error is not None and out.error["kind"] == "config"


async def test_unknown_keychain_entry_is_a_credential_error(services: ToolServices) -> None:
    cmd = command({"kind": "noop", "h": "{{ keychain.ghost.token }}"}, deferred=["/tool_config/h"])
    out = await run_tool(cmd, services)
    assert out.error is not None and out.error["kind"] == "credential"


async def test_secrets_in_stdout_and_errors_are_redacted(services: ToolServices) -> None:
    cmd = command(
        {
            "kind": "python",
            "code": "print('token is', t)\nraise RuntimeError('leaked ' + t)",
            "input": {"t": "{{ keychain['api-bearer'].token }}"},
        },
        deferred=["/tool_config/input/t"],
    )
    out = await run_tool(cmd, services)
    assert out.error is not None and out.error["kind"] == "exception"
    text = str(out.result())
    assert "s3cret-token" not in text
    assert out.stdout == "token is ***\n" and "leaked ***" in out.error["message"]


def test_short_values_are_not_treated_as_secrets() -> None:
    out = redact(ToolOutcome(status="ok", data={"v": "abc abcd"}), {"abc", "abcd"})
    assert out.data == {"v": "abc ***"}


async def test_any_oversized_result_becomes_size_limit(services: ToolServices) -> None:
    small = with_settings(services, result_inline_max_bytes=300)
    cmd = command({"kind": "python", "code": "print('y' * 1000)"})
    out = await run_tool(cmd, small)
    assert out.status == "error" and out.error is not None
    assert out.error["kind"] == "size_limit" and out.error["limit"] == 300
    assert out.stdout is None and out.data is None  # the replacement is small
    assert len(str(out.result())) < 600


async def test_unexpected_failures_are_structured(services: ToolServices) -> None:
    async def broken(alias: str) -> dict[str, Any]:
        raise ZeroDivisionError("resolver bug")

    from dataclasses import replace

    cmd = command({"kind": "http", "url": "http://127.0.0.1:9/", "auth": "x"})
    out = await run_tool(cmd, replace(services, resolve=broken))
    assert out.error is not None
    assert out.error["kind"] == "error" and out.error["type"] == "ZeroDivisionError"
    assert "resolver bug" in out.error["message"]
    assert "Traceback" in out.error["traceback"]


# --- the credential resolver over the server API -------------------------------------------


async def test_api_resolver(http_server: TestServer) -> None:
    async with httpx.AsyncClient(base_url=http_server.url) as api:
        resolve = api_resolver(api, "612345678901234567", delays=(0.01, 0.01, 0.01))
        cred = await resolve("good")
        assert cred["data"] == {"token": "tok-612345678901234567"}  # execution_id was sent
        assert (await resolve("flaky-cred"))["name"] == "flaky-cred"  # one 503, then retried
        with pytest.raises(CredentialError) as missing:
            await resolve("missing")
        assert missing.value.error["retryable"] is False
        with pytest.raises(CredentialError) as down:
            await resolve("down")
        assert down.value.error["retryable"] is True
        assert http_server.hits.get("cred", 0) >= 1
