"""Acceptance: the real NoETL CLI (the `noetl` package from PyPI, 5.x) against this server.

The test starts what a distributed run needs, as separate processes the way a user runs them:
the server under gunicorn, the publisher (outbox to NATS) and the system worker pool (NATS to
claims and events over HTTP), on the test database and the test NATS. It then drives the
commands of issue 6 through the `noetl` binary and checks their effects through the API and
the tables. The server requires an api token; the CLI sends it from NOETL_SESSION_TOKEN as
`Authorization: Bearer`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from core.embedded import free_port
from tests.acceptance.helpers import wait_http_ok
from tests.server.conftest import API, API_TOKEN, server_env, server_factory  # noqa: F401

FILES = Path(__file__).resolve().parent / "files"
ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0


def noetl_binary() -> str:
    beside = Path(sys.executable).with_name("noetl")
    found = str(beside) if beside.exists() else shutil.which("noetl")
    # a dev dependency (pyproject.toml): missing means a broken environment, not a skip
    assert found, "the noetl CLI is not installed: pip install -e '.[dev]'"
    return found


@dataclass
class Stack:
    url: str
    db_url: str
    home: Path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),  # the CLI keeps its contexts there
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "NOETL_SESSION_TOKEN": API_TOKEN,
            "NO_COLOR": "1",
        }
        result = subprocess.run(
            [noetl_binary(), "--server-url", self.url, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        if check:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def cli_json(self, *args: str) -> Any:
        out = self.cli(*args).stdout
        return json.loads(out[out.index("{") :]) if "{" in out else json.loads(out)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=API, timeout=10, **kwargs)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()


def _role(role: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", f"--mode={role}"],
            env=env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture
def stack(
    server_factory: Callable[..., Any],  # noqa: F811
    db_url: str,
    clean_nats: str,
    tmp_path: Path,
) -> Iterator[Stack]:
    server = server_factory(NOETL_SERVER_WORKERS="1", NOETL_API_TOKENS=API_TOKEN)
    roles: list[subprocess.Popen] = []
    try:
        health: list[tuple[str, str, subprocess.Popen]] = []
        for role in ("publisher", "system"):
            port = free_port()
            env = {
                **os.environ,
                **server_env(db_url, tmp_path),
                "NOETL_NATS_URL": clean_nats,
                "NOETL_SERVER_URL": server.url,
                "NOETL_SYSTEM_POOL": "system,default",
                "NOETL_METRICS_HOST": "127.0.0.1",
                "NOETL_METRICS_PORT": str(port),
                "NOETL_SHUTDOWN_GRACE_SECONDS": "5",
                "NOETL_LOG_FORMAT": "json",
            }
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            proc = _role(role, env, tmp_path / f"{role}.log")
            roles.append(proc)
            health.append((role, f"http://127.0.0.1:{port}/health", proc))
        for role, url, proc in health:
            try:
                wait_http_ok(url, 60, proc)
            except AssertionError:
                raise AssertionError((tmp_path / f"{role}.log").read_text()[-3000:]) from None
        home = tmp_path / "home"
        home.mkdir()
        yield Stack(server.url, db_url, home)
    finally:
        for proc in roles:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in roles:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_status(stack: Stack, execution_id: str, wanted: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        status = stack.cli_json("status", execution_id, "--json")
        if status["status"] in wanted:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def _started(output: str) -> str:
    """The execution id from `noetl run` output (its `Execution started:` JSON)."""
    body = json.loads(output[output.index("{") : output.rindex("}") + 1])
    assert body["status"] == "started", output
    return str(body["execution_id"])


def test_register_list_get_run_status(stack: Stack) -> None:
    out = stack.cli("register", "playbook", "-f", str(FILES / "hello.yaml")).stdout
    assert "registered successfully" in out
    entry = stack.api("POST", "/api/catalog/resource", json={"path": "tests/cli/hello"}).json()
    assert entry["version"] == 1 and entry["kind"] == "playbook"
    # the CLI sends the file base64-encoded; the stored content is the decoded YAML
    assert entry["content"] == (FILES / "hello.yaml").read_text()

    out = stack.cli("register", "credential", "-f", str(FILES / "credential.json")).stdout
    assert "registered successfully" in out
    credential = stack.api("GET", "/api/credentials/pg_cli_demo").json()
    assert credential["type"] == "postgres" and credential["data"] is None
    assert credential["tags"] == ["cli", "test"]

    listed = stack.cli_json("catalog", "list", "Playbook", "--json")
    assert "tests/cli/hello" in [e["path"] for e in listed["entries"]]
    api_list = stack.api("POST", "/api/catalog/list", json={"resource_type": "Playbook"})
    assert listed == api_list.json()

    got = stack.cli_json("catalog", "get", "tests/cli/hello")
    assert got["path"] == "tests/cli/hello" and got["catalog_id"] == entry["catalog_id"]

    run = stack.cli("run", "tests/cli/hello", "-r", "distributed", "--payload", '{"name": "cli"}')
    execution_id = _started(run.stdout)
    status = _wait_status(stack, execution_id, {"COMPLETED", "FAILED", "CANCELLED"})
    assert status["status"] == "COMPLETED", status
    assert status["completed"] is True and status["failed"] is False
    plain = stack.cli("status", execution_id).stdout
    assert execution_id in plain and "COMPLETED" in plain
    # the payload reached the playbook: the second step saw the first step's greeting
    results = stack.sql(
        "SELECT node_name, result::text FROM noetl.event WHERE execution_id = %s "
        "AND event_type = 'call.done' ORDER BY event_id",
        int(execution_id),
    )
    assert [r[0] for r in results] == ["start", "shout"]
    assert "HELLO CLI" in results[1][1]


def test_cancel_cascade_stops_parent_and_running_child(stack: Stack) -> None:
    for name in ("sleepy_child", "sleepy_parent"):
        stack.cli("register", "playbook", "-f", str(FILES / f"{name}.yaml"))
    parent = _started(stack.cli("run", "tests/cli/sleepy_parent", "-r", "distributed").stdout)
    # wait until the child runs its sleeping step on a system worker
    deadline = time.monotonic() + DEADLINE
    while True:
        rows = stack.sql(
            "SELECT c.execution_id FROM noetl.execution x JOIN noetl.command c "
            "USING (execution_id) WHERE x.parent_execution_id = %s "
            "AND c.status IN ('CLAIMED', 'RUNNING')",
            int(parent),
        )
        if rows:
            child = str(rows[0][0])
            break
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.2)

    answer = stack.cli_json("cancel", parent, "--cascade", "--json")
    assert answer["status"] == "cancelled", answer
    assert answer["cancelled_executions"][0] == parent
    assert set(answer["cancelled_executions"]) == {parent, child}
    for execution_id in (parent, child):
        status = stack.cli_json("status", execution_id, "--json")
        assert status["status"] == "CANCELLED", status
    open_commands = stack.sql(
        "SELECT count(*) FROM noetl.command WHERE execution_id = ANY(%s) "
        "AND status IN ('PENDING', 'CLAIMED', 'RUNNING')",
        [int(parent), int(child)],
    )
    assert open_commands == [(0,)]
    cancelled = stack.sql(
        "SELECT execution_id FROM noetl.command WHERE execution_id = ANY(%s) "
        "AND status = 'CANCELLED'",
        [int(parent), int(child)],
    )
    assert {str(r[0]) for r in cancelled} == {parent, child}
    # a second cancel is idempotent
    again = stack.cli_json("cancel", parent, "--cascade", "--json")
    assert again["status"] == "already_completed" and again["cancelled_executions"] == []
