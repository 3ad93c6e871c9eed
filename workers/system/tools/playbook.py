"""playbook (dsl.md §8.4): start a child execution and wait for it on its SSE stream
(api.md §7.7), polling the status route when the stream fails.

The server is reached through `services.api`, an httpx client whose base URL is the NoETL
server (the daemon gives it the worker token; tests give it a fake transport)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from workers.system.tools.base import (
    ToolContext,
    ToolFailure,
    ToolOutcome,
    http_retryable,
    timeout_setting,
)

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
TERMINAL_EVENTS = {
    "playbook.completed": "COMPLETED",
    "workflow.completed": "COMPLETED",
    "playbook.failed": "FAILED",
    "workflow.failed": "FAILED",
    "execution.cancelled": "CANCELLED",
}
EVENTS_PAGE_SIZE = 500


def execute_body(ctx: ToolContext) -> dict[str, Any]:
    config = ctx.config
    body: dict[str, Any] = {"parent_execution_id": ctx.execution_id}
    if config.get("catalog_id") not in (None, ""):
        body["catalog_id"] = str(config["catalog_id"])
    elif isinstance(config.get("path"), str) and config["path"]:
        body["path"] = config["path"]
    else:
        raise ToolFailure("config", "playbook tool needs `path` or `catalog_id`")
    if config.get("version") not in (None, ""):
        body["version"] = config["version"]
    args = {**(config.get("args") or {}), **(config.get("input") or {}), **ctx.args}
    payload = config.get("payload")
    workload = args if args else payload
    if workload is not None and not isinstance(workload, dict):
        raise ToolFailure("config", "playbook `payload` must be a mapping")
    body["payload"] = workload or {}
    return body


class ChildWatch:
    """The calls the tool makes about one child, on the server's API."""

    def __init__(self, api: httpx.AsyncClient) -> None:
        self.api = api

    async def start(self, body: dict[str, Any]) -> str:
        try:
            response = await self.api.post("/api/execute", json=body)
        except httpx.TransportError as exc:
            raise ToolFailure(
                "connection", f"cannot start the child playbook: {exc}", retryable=True
            ) from None
        if response.status_code != 200:
            raise ToolFailure(
                "error",
                f"starting the child playbook failed: HTTP {response.status_code}: "
                f"{_detail(response)}",
                retryable=http_retryable(response.status_code),
                status_code=response.status_code,
            )
        return str(response.json()["execution_id"])

    async def stream_status(self, execution_id: str) -> str | None:
        """The terminal status seen on the stream, or None when the stream broke first."""
        url = f"/api/executions/{execution_id}/stream"
        try:
            async with self.api.stream("GET", url, timeout=httpx.Timeout(10.0, read=None)) as resp:
                if resp.status_code != 200:
                    return None
                event = None
                async for line in resp.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event is not None:
                        status = _frame_status(event, line[5:].strip())
                        if status in TERMINAL:
                            return status
                    elif not line:
                        event = None
        except httpx.HTTPError:
            return None
        return None

    async def status(self, execution_id: str) -> str | None:
        try:
            response = await self.api.get(f"/api/executions/{execution_id}/status")
            return str(response.json().get("status")) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None

    async def outcome(self, execution_id: str) -> tuple[list[dict[str, Any]], str | None]:
        """(call.done events newest first, the child's error text)."""
        events: list[dict[str, Any]] = []
        error = None
        try:
            response = await self.api.get(
                f"/api/executions/{execution_id}/events",
                params={"event_type": "call.done", "page_size": EVENTS_PAGE_SIZE},
            )
            if response.status_code == 200:
                events = list(response.json().get("events") or [])
            detail = await self.api.get(
                f"/api/executions/{execution_id}", params={"include_events": "false"}
            )
            if detail.status_code == 200:
                error = detail.json().get("error")
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        return events, error


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


def _frame_status(event: str, data: str) -> str | None:
    if event == "end":
        try:
            return str(json.loads(data).get("status", "")).upper()
        except (ValueError, AttributeError):
            return None
    return TERMINAL_EVENTS.get(event)


def _result_data(row: dict[str, Any]) -> Any:
    """A call.done row's data: the first present of result.context.data, result.data,
    result.context, result (dsl.md §6.1)."""
    context = row.get("context")
    result = context.get("result") if isinstance(context, dict) else None
    if result is None:
        result = row.get("result")
    if isinstance(result, dict):
        inner = result.get("context")
        if isinstance(inner, dict) and "data" in inner:
            return inner["data"]
        if "data" in result:
            return result["data"]
        if inner is not None:
            return inner
    return result


def child_data(events: list[dict[str, Any]], result_step: str | None) -> Any:
    """The data of `result_step`, else of the child's last step to finish with data."""
    rows = sorted(events, key=lambda r: int(r.get("event_id") or 0), reverse=True)
    for row in rows:
        step = row.get("node_name") or row.get("step")
        if result_step and step != result_step:
            continue
        data = _result_data(row)
        if data is not None:
            return data
    return None


async def wait_for_child(
    watch: ChildWatch, execution_id: str, timeout: float, poll_interval: float
) -> str | None:
    """The child's terminal status, or None when `timeout` ran out first."""
    deadline = time.monotonic() + timeout
    try:
        async with asyncio.timeout(timeout):
            status = await watch.stream_status(execution_id)
            while status not in TERMINAL:
                status = await watch.status(execution_id)
                if status in TERMINAL:
                    break
                await asyncio.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))
            return status
    except TimeoutError:
        return None


async def run(ctx: ToolContext) -> ToolOutcome:
    config = ctx.config
    if ctx.services.api is None:
        raise ToolFailure("not_supported", "the playbook tool needs the server API")
    body = execute_body(ctx)
    timeout = timeout_setting(config, ctx.settings.playbook_tool_timeout_seconds)
    poll_interval = timeout_setting(config, 2.0, "poll_interval")
    result_step = config.get("result_step") or config.get("return_step")
    watch = ChildWatch(ctx.services.api)
    child = await watch.start(body)
    if config.get("wait", True) is False:
        return ToolOutcome(status="ok", data={"execution_id": child, "status": "started"})
    async with ctx.services.waiting():
        status = await wait_for_child(watch, child, timeout, poll_interval)
    if status is None:
        return ToolOutcome.failed(
            {
                "kind": "timeout",
                "message": f"child execution {child} did not finish within {timeout:g}s",
                "retryable": True,
                "execution_id": child,
            },
            data={"execution_id": child, "status": "RUNNING", "data": None},
        )
    events, error = await watch.outcome(child)
    data = {"execution_id": child, "status": status, "data": child_data(events, result_step)}
    if status == "COMPLETED":
        return ToolOutcome(status="ok", data=data)
    return ToolOutcome.failed(
        {
            "kind": "error",
            "message": error or f"child execution {child} ended {status}",
            "retryable": False,
            "execution_id": child,
            "child_status": status,
        },
        data=data,
    )
