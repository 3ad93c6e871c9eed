"""playbook tool (dsl.md §8.4) against a fake NoETL API given as the injected client: start,
wait on the stream, fall back to polling, result data, failure, timeout, wait: false."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx

from tests.system.helpers import command
from workers.system.run import ToolOutcome, ToolServices, run_tool

CHILD = "700000000000000001"


def call_done(event_id: int, step: str, data: Any) -> dict[str, Any]:
    return {
        "execution_id": CHILD,
        "event_id": event_id,
        "event_type": "call.done",
        "node_name": step,
        "context": {
            "command_id": "1",
            "call_index": 0,
            "result": {"status": "success", "context": {"status": "success", "data": data}},
        },
    }


class FakeApi:
    """The routes the tool calls, answering as api.md §7 says."""

    def __init__(
        self,
        *,
        stream: bool = True,
        final: str = "COMPLETED",
        polls_before_final: int = 1,
        execute_status: int = 200,
    ) -> None:
        self.stream_ok = stream
        self.final = final
        self.polls_before_final = polls_before_final
        self.execute_status = execute_status
        self.requests: list[tuple[str, str]] = []
        self.started: dict[str, Any] | None = None
        self.polls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        if path == "/api/execute":
            self.started = json.loads(request.content)
            if self.execute_status != 200:
                return httpx.Response(
                    self.execute_status,
                    json={
                        "detail": "Executable catalog entry not found: x",
                        "code": "catalog_entry_not_found",
                    },
                )
            return httpx.Response(
                200, json={"execution_id": CHILD, "status": "started", "commands_generated": 1}
            )
        if path == f"/api/executions/{CHILD}/stream":
            if not self.stream_ok:
                return httpx.Response(503, json={"detail": "too many", "code": "too_many_streams"})
            terminal = {"COMPLETED": "playbook.completed", "FAILED": "playbook.failed"}.get(
                self.final
            )
            frames = [
                "retry: 3000\n\n",
                ": keep-alive\n\n",
                'id: 1\nevent: step.enter\ndata: {"event_id": 1}\n\n',
            ]
            if terminal:
                frames.append(f'id: 9\nevent: {terminal}\ndata: {{"event_id": 9}}\n\n')
                frames.append(
                    f'event: end\ndata: {{"execution_id": "{CHILD}", "status": "{self.final}"}}\n\n'
                )
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content="".join(frames).encode()
            )
        if path == f"/api/executions/{CHILD}/status":
            self.polls += 1
            status = self.final if self.polls > self.polls_before_final else "RUNNING"
            return httpx.Response(200, json={"execution_id": CHILD, "status": status})
        if path == f"/api/executions/{CHILD}/events":
            assert request.url.params.get("event_type") == "call.done"
            events = [
                call_done(5, "fetch", {"rows": 3}),
                call_done(7, "report", {"total": 42}),
                call_done(8, "tail", None),
            ]
            return httpx.Response(200, json={"execution_id": CHILD, "events": events[::-1]})
        if path == f"/api/executions/{CHILD}":
            error = "Failed steps: report" if self.final == "FAILED" else None
            return httpx.Response(
                200, json={"execution_id": CHILD, "status": self.final, "error": error}
            )
        return httpx.Response(404, json={"detail": "not found"})


@contextlib.asynccontextmanager
async def api_services(
    services: ToolServices, fake: FakeApi, log: list[str] | None = None
) -> AsyncIterator[ToolServices]:
    @contextlib.asynccontextmanager
    async def waiting() -> AsyncIterator[None]:
        if log is not None:
            log.append("released")
        yield
        if log is not None:
            log.append("reacquired")

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(fake), base_url="http://noetl.test"
    ) as api:
        yield replace(services, api=api, waiting=waiting)


async def run(
    services: ToolServices,
    fake: FakeApi,
    config: dict[str, Any],
    log: list[str] | None = None,
    args: dict[str, Any] | None = None,
) -> ToolOutcome:
    async with api_services(services, fake, log) as svc:
        return await run_tool(command({"kind": "playbook", **config}, args=args), svc)


async def test_child_completes_on_the_stream(services: ToolServices) -> None:
    fake, log = FakeApi(), []
    out = await run(
        services, fake, {"path": "tests/child", "poll_interval": 0.01}, log, args={"n": 2}
    )
    assert out.status == "ok", out.error
    # The last step to finish *with data* ("tail" had none).
    assert out.data == {"execution_id": CHILD, "status": "COMPLETED", "data": {"total": 42}}
    assert fake.started == {
        "parent_execution_id": "612345678901234567",
        "path": "tests/child",
        "payload": {"n": 2},
    }
    assert ("GET", f"/api/executions/{CHILD}/status") not in fake.requests  # the stream sufficed
    assert log == ["released", "reacquired"]  # the wait gave the slot back


async def test_result_step_and_payload(services: ToolServices) -> None:
    fake = FakeApi()
    out = await run(
        services,
        fake,
        {"catalog_id": "55", "version": 2, "payload": {"p": 1}, "result_step": "fetch"},
    )
    assert out.data["data"] == {"rows": 3}
    assert fake.started == {
        "parent_execution_id": "612345678901234567",
        "catalog_id": "55",
        "version": 2,
        "payload": {"p": 1},
    }


async def test_polls_when_the_stream_fails(services: ToolServices) -> None:
    fake = FakeApi(stream=False, polls_before_final=2)
    out = await run(services, fake, {"path": "tests/child", "poll_interval": 0.01})
    assert out.status == "ok" and out.data["status"] == "COMPLETED"
    assert fake.polls == 3


async def test_failed_child_is_an_error_with_its_error(services: ToolServices) -> None:
    out = await run(services, FakeApi(final="FAILED"), {"path": "tests/child"})
    assert out.status == "error" and out.error is not None
    assert out.error["message"] == "Failed steps: report"
    assert out.error["child_status"] == "FAILED" and out.error["execution_id"] == CHILD
    assert out.data["status"] == "FAILED"


async def test_cancelled_child_seen_by_polling(services: ToolServices) -> None:
    out = await run(
        services, FakeApi(stream=False, final="CANCELLED"), {"path": "c", "poll_interval": 0.01}
    )
    assert out.error is not None and out.error["child_status"] == "CANCELLED"


async def test_timeout_leaves_the_child_running(services: ToolServices) -> None:
    fake = FakeApi(stream=False, polls_before_final=10**9)
    out = await run(services, fake, {"path": "c", "timeout_seconds": 0.3, "poll_interval": 0.02})
    assert out.error is not None
    assert (out.error["kind"], out.error["retryable"]) == ("timeout", True)
    assert out.data == {"execution_id": CHILD, "status": "RUNNING", "data": None}
    assert ("POST", f"/api/executions/{CHILD}/cancel") not in fake.requests


async def test_wait_false_returns_at_once(services: ToolServices) -> None:
    fake = FakeApi()
    out = await run(services, fake, {"path": "c", "wait": False})
    assert out.data == {"execution_id": CHILD, "status": "started"}
    assert fake.requests == [("POST", "/api/execute")]


async def test_start_refused(services: ToolServices) -> None:
    out = await run(services, FakeApi(execute_status=404), {"path": "nope"})
    assert out.error is not None and "catalog entry not found" in out.error["message"]
    assert out.error["retryable"] is False


async def test_config_errors(services: ToolServices) -> None:
    out = await run(services, FakeApi(), {})
    assert out.error is not None and out.error["kind"] == "config"
    out = await run_tool(command({"kind": "playbook", "path": "x"}), services)  # no api client
    assert out.error is not None and out.error["kind"] == "not_supported"
