"""Losing a system worker, on real processes: `kill -9` in the middle of a command, and SIGTERM
during a long python step. The server runs with a short claim lease, heartbeat staleness and
re-notify age, so the command reaper hands a dead worker's command to a second worker within
one reaper interval (30 s) instead of minutes.

The long step is a python tool that sleeps only the first time it runs (a marker file says
whether it ran before), so the second worker's run is quick and the test can tell the runs
apart; the first run's pid goes into the marker so the test can clean up a killed worker's
orphaned child."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.worker.stack import Api, Role, Stack

SLOW_ONCE = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: {name}
  path: tests/worker/{name}
workload:
  marker: /nonexistent
  first_sleep: 120
workflow:
  - step: start
    tool: {{kind: python, code: "result = 1"}}
    next: slow
  - step: slow
    tool:
      kind: python
      input: {{marker: "{{{{ marker }}}}", first_sleep: "{{{{ first_sleep }}}}"}}
      code: |
        import os, time
        first = not os.path.exists(marker)
        if first:
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(first_sleep)
        result = {{"first_run": first}}
    next: finish
  - step: finish
    tool:
      kind: python
      input: {{first: "{{{{ slow.first_run }}}}"}}
      code: "result = {{'slow_was_first_run': first}}"
"""

SERVER_ENV = {
    "NOETL_SERVER_WORKERS": "1",
    "NOETL_COMMAND_CLAIM_LEASE_SECONDS": "2",
    "NOETL_COMMAND_WORKER_HEARTBEAT_STALE_SECONDS": "3",
    "NOETL_COMMAND_RENOTIFY_AFTER_SECONDS": "2",
}
WORKER_ENV = {"NOETL_WORKER_HEARTBEAT_SECONDS": "1", "NOETL_COMMAND_HEARTBEAT_SECONDS": "1"}


@pytest.fixture(scope="module")
def stack(e2e_dir: Path, e2e_db: str, e2e_nats: str) -> Iterator[Stack]:
    stack = Stack(e2e_dir / "roles", e2e_db, e2e_nats)
    try:
        stack.start("server", **SERVER_ENV)
        stack.start("publisher")
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture
def api(stack: Stack) -> Iterator[Api]:
    client = Api(stack)
    yield client
    client.close()


@pytest.fixture
def marker(e2e_dir: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    path = e2e_dir / f"marker-{request.node.name}"
    yield path
    if path.exists():  # a killed worker's child may still sleep: end it
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(path.read_text() or 0), signal.SIGKILL)


@pytest.fixture
def workers(stack: Stack) -> Iterator[list[Role]]:
    """System workers a test starts; stopped after it, so the next test starts with none."""
    started: list[Role] = []
    yield started
    for role in started:
        stack.stop(role)


def _worker(stack: Stack, workers: list[Role], name: str, **extra: str) -> Role:
    role = stack.start("system", NOETL_WORKER_NAME=name, **WORKER_ENV, **extra)
    workers.append(role)
    return role


def _wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not seen within {timeout}s"
        time.sleep(0.05)


def _stored(database_url: str, execution_id: str, step: str) -> list[dict[str, Any]]:
    """The step's stored events with their worker and meta (which API rows do not carry)."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT event_type, worker_id, meta FROM noetl.event"
            " WHERE execution_id = %s AND node_name = %s ORDER BY event_id",
            (int(execution_id), step),
        ).fetchall()


def _claims(database_url: str, execution_id: str, step: str) -> list[dict[str, Any]]:
    return [
        e for e in _stored(database_url, execution_id, step) if e["event_type"] == "command.claimed"
    ]


def test_kill_9_mid_command_the_reaper_and_a_second_worker_finish(
    stack: Stack, api: Api, marker: Path, workers: list[Role]
) -> None:
    api.register(SLOW_ONCE.format(name="crash_once"))
    first = _worker(stack, workers, "worker-a")
    execution_id = api.execute("tests/worker/crash_once", {"marker": str(marker)})
    _wait_for(marker.exists, 30, "the slow step's first run")
    os.killpg(first.proc.pid, signal.SIGKILL)  # no deregistration, no events: gone
    first.proc.wait(10)
    assert first.proc.returncode == -signal.SIGKILL

    _worker(stack, workers, "worker-b")
    # stale heartbeat (3 s) + lease (2 s) + at most one reaper interval (30 s)
    status = api.wait(execution_id, 75)
    assert status["status"] == "COMPLETED", status
    assert status["variables"]["finish"] == {"slow_was_first_run": False}
    claims = _claims(stack.database_url, execution_id, "slow")
    assert [c["worker_id"] for c in claims] == ["worker-a", "worker-b"]
    meta = claims[1]["meta"]
    assert meta["reclaimed"] is True and meta["reclaimed_from_worker"] == "worker-a"
    assert meta["reclaimed_reason"] in ("worker_heartbeat_stale", "worker_inactive")
    slow = _stored(stack.database_url, execution_id, "slow")
    assert [e["worker_id"] for e in slow if e["event_type"] == "call.done"] == ["worker-b"]


def test_sigterm_during_a_long_python_step_loses_no_command(
    stack: Stack, api: Api, marker: Path, workers: list[Role]
) -> None:
    api.register(SLOW_ONCE.format(name="sigterm_once"))
    # grace 6 s: the step is cancelled 3 s after the signal, and the worker is gone before 6 s
    first = _worker(stack, workers, "worker-c", NOETL_SHUTDOWN_GRACE_SECONDS="6")
    execution_id = api.execute("tests/worker/sigterm_once", {"marker": str(marker)})
    _wait_for(marker.exists, 30, "the slow step's first run")
    started = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(15) == 0, stack.tail(first)
    assert time.monotonic() - started < 6.5
    orphan = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(orphan, 0)  # the cancelled step's process is gone

    # deregistered: the server re-notified the command at once, and the next worker takes it
    # over without waiting for the lease or the reaper
    _worker(stack, workers, "worker-d")
    status = api.wait(execution_id, 20)
    assert status["status"] == "COMPLETED", status
    claims = _claims(stack.database_url, execution_id, "slow")
    assert [c["worker_id"] for c in claims] == ["worker-c", "worker-d"]
    assert claims[1]["meta"]["reclaimed_reason"] == "worker_offline"
    by_first = [
        e["event_type"]
        for e in _stored(stack.database_url, execution_id, "slow")
        if e["worker_id"] == "worker-c"
    ]
    assert "call.done" not in by_first and "call.error" not in by_first


def test_sigterm_lets_a_short_step_finish_and_report(
    stack: Stack, api: Api, marker: Path, workers: list[Role]
) -> None:
    api.register(SLOW_ONCE.format(name="short_once"))
    first = _worker(stack, workers, "worker-e")
    execution_id = api.execute("tests/worker/short_once", {"marker": str(marker), "first_sleep": 2})
    _wait_for(marker.exists, 30, "the slow step's first run")
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(25) == 0, stack.tail(first)
    slow = _stored(stack.database_url, execution_id, "slow")
    reported = [e["event_type"] for e in slow if e["worker_id"] == "worker-e"]
    assert reported[-2:] == ["call.done", "command.completed"], reported
    # the next step was issued while the worker stopped; the next worker runs it
    _worker(stack, workers, "worker-f")
    status = api.wait(execution_id, 30)
    assert status["status"] == "COMPLETED", status
    assert status["variables"]["finish"] == {"slow_was_first_run": True}
