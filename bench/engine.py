"""`python -m bench engine`: the engine and execution API end to end, in one run.

The real server (`noetl-server --mode=server`: gunicorn, NOETL_SERVER_WORKERS uvicorn workers,
default 2) runs on an embedded Postgres in a temporary folder. The in-process test worker of
tests/execution/worker.py takes command notifications from the outbox (as the publisher
would), claims over HTTP and posts command.started, call.done and command.completed per
command, one after the other, as NoETL workers do. Completion is observed from the trigger's
`noetl_event` NOTIFY (`terminal: true`), never by polling.

  e2e          200 runs of a 2-step python playbook one after the other: execute -> COMPLETED
  throughput   1,000 executions of it submitted at once (64 concurrent requests): executions/s
               from the first submit to the last COMPLETED
  loop         one parallel loop over 1,000 items (max_in_flight 100): iterations/s

Targets on 2 cores: p50 < 50 ms, p99 < 150 ms, >= 100 executions/s. Ends with one JSON line.
Sizes: NOETL_BENCH_RUNS, NOETL_BENCH_EXECUTIONS, NOETL_BENCH_LOOP_ITEMS; NOETL_BENCH_ASYNC_COMMIT=1
runs Postgres with synchronous_commit=off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.api import _stop, start_server
from core.embedded import EmbeddedPostgres
from core.migrate import upgrade
from tests.execution.worker import TestWorker

WORKERS = os.environ.get("NOETL_SERVER_WORKERS", "2")
RUNS = int(os.environ.get("NOETL_BENCH_RUNS", "200"))
EXECUTIONS = int(os.environ.get("NOETL_BENCH_EXECUTIONS", "1000"))
LOOP_ITEMS = int(os.environ.get("NOETL_BENCH_LOOP_ITEMS", "1000"))
SUBMIT_CONCURRENCY = 64
TARGETS = {"e2e_p50_ms": 50.0, "e2e_p99_ms": 150.0, "executions_per_s": 100.0}
PG_SETTINGS = {"max_connections": "200", "shared_buffers": "256MB"}
if os.environ.get("NOETL_BENCH_ASYNC_COMMIT"):
    # every write here NOTIFYs, and Postgres serialises notifying commits through their WAL
    # flush: this shows what the same run does without waiting for the disk
    PG_SETTINGS["synchronous_commit"] = "off"

TWO_STEP = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: bench_two_step
  path: bench/two_step
workload:
  x: 2
workflow:
  - step: start
    tool:
      kind: python
      input: {x: "{{ x }}"}
      code: "result = {'y': x * 2}"
    next: finish
  - step: finish
    tool:
      kind: python
      input: {y: "{{ start.y }}"}
      code: "result = {'z': y + 1}"
"""
LOOP = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: bench_loop
  path: bench/loop
workload:
  items: []
workflow:
  - step: start
    loop:
      in: "{{ items }}"
      iterator: item
      spec: {mode: parallel, max_in_flight: 100}
    tool:
      kind: python
      input: {n: "{{ item }}"}
      code: "result = n * 2"
"""


class Terminals:
    """Futures resolved by the `noetl_event` NOTIFY of an execution's terminal event."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.done: dict[str, float] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        await conn.execute("LISTEN noetl_event")
        self._task = asyncio.create_task(self._listen(conn))

    async def _listen(self, conn: psycopg.AsyncConnection) -> None:
        async with conn:
            async for note in conn.notifies():
                body = json.loads(note.payload)
                if body.get("terminal"):
                    at = time.perf_counter()
                    execution_id = body["execution_id"]
                    self.done[execution_id] = at
                    future = self.waiting.pop(execution_id, None)
                    if future is not None and not future.done():
                        future.set_result(at)

    async def wait(self, execution_id: str, timeout: float = 60) -> float:
        if execution_id in self.done:
            return self.done[execution_id]
        future = self.waiting.setdefault(execution_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(future, timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await self._task


async def _status(client: httpx.AsyncClient, execution_id: str) -> str:
    answer = await client.get(f"/api/executions/{execution_id}/status")
    return answer.json()["status"]


async def run(base: str, database_url: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=SUBMIT_CONCURRENCY * 2, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def post(path: str, body: dict[str, Any]) -> tuple[int, Any]:
            answer = await client.post(path, json=body)
            return answer.status_code, answer.json()

        for text in (TWO_STEP, LOOP):
            (await client.post("/api/catalog/register", json={"content": text})).raise_for_status()
        terminals = Terminals(database_url)
        await terminals.start()
        worker = TestWorker(database_url, post, worker_id="bench-worker")
        worker_task = asyncio.create_task(worker.run())
        try:
            # warm-up: caches, pools, the id block
            for _ in range(10):
                started = (
                    await client.post("/api/execute", json={"path": "bench/two_step"})
                ).json()
                await terminals.wait(started["execution_id"])

            # 1. latency, one at a time
            latencies = []
            for _ in range(RUNS):
                t0 = time.perf_counter()
                answer = await client.post("/api/execute", json={"path": "bench/two_step"})
                execution_id = answer.json()["execution_id"]
                latencies.append(await terminals.wait(execution_id) - t0)
            assert await _status(client, execution_id) == "COMPLETED"
            latencies.sort()
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
            print(f"e2e        {RUNS} runs  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms", flush=True)

            # 2. throughput: everything submitted at once
            gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)
            rejected = 0

            async def submit() -> str | None:
                nonlocal rejected
                async with gate:
                    answer = await client.post("/api/execute", json={"path": "bench/two_step"})
                if answer.status_code != 200:
                    rejected += 1
                    return None
                return answer.json()["execution_id"]

            t0 = time.perf_counter()
            ids = [i for i in await asyncio.gather(*(submit() for _ in range(EXECUTIONS))) if i]
            submitted = time.perf_counter() - t0
            ends = await asyncio.gather(*(terminals.wait(i, 300) for i in ids))
            elapsed = max(ends) - t0
            rate = len(ids) / elapsed
            statuses = {await _status(client, i) for i in ids[:20]}
            assert statuses == {"COMPLETED"}, statuses
            print(
                f"throughput {len(ids)} executions in {elapsed:5.2f} s ({rate:6.1f}/s; "
                f"submitted in {submitted:5.2f} s; {rejected} rejected)",
                flush=True,
            )

            # 3. one parallel loop
            t0 = time.perf_counter()
            answer = await client.post(
                "/api/execute",
                json={"path": "bench/loop", "payload": {"items": list(range(LOOP_ITEMS))}},
            )
            execution_id = answer.json()["execution_id"]
            loop_elapsed = await terminals.wait(execution_id, 600) - t0
            assert await _status(client, execution_id) == "COMPLETED"
            steps = LOOP_ITEMS / loop_elapsed
            print(f"loop       {LOOP_ITEMS} iterations in {loop_elapsed:5.2f} s ({steps:6.1f}/s)")
        finally:
            await worker.stop()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(worker_task, 10)
            await terminals.stop()
        if worker.errors:
            raise RuntimeError(f"test worker errors: {worker.errors[:3]}")
    return {
        "e2e_p50_ms": round(p50, 2),
        "e2e_p99_ms": round(p99, 2),
        "executions_per_s": round(rate, 1),
        "loop_steps_per_s": round(steps, 1),
        "rejected": rejected,
        "runs": RUNS,
        "executions": len(ids),
        "loop_items": LOOP_ITEMS,
        "workers": int(WORKERS),
    }


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="noetl-bench-engine-"))
    postgres = EmbeddedPostgres(workdir / "data", PG_SETTINGS)
    proc: subprocess.Popen | None = None
    try:
        postgres.start()
        database_url = postgres.url("noetl")
        upgrade(database_url)
        proc, base = start_server(workdir, database_url)
        line = asyncio.run(run(base, database_url))
    except BaseException:
        server_log = workdir / "server.log"
        if server_log.exists():
            print(server_log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        if proc is not None:
            _stop(proc)
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    met = (
        line["e2e_p50_ms"] < TARGETS["e2e_p50_ms"]
        and line["e2e_p99_ms"] < TARGETS["e2e_p99_ms"]
        and line["executions_per_s"] >= TARGETS["executions_per_s"]
    )
    print(
        f"targets: p50 < {TARGETS['e2e_p50_ms']} ms, p99 < {TARGETS['e2e_p99_ms']} ms, "
        f">= {TARGETS['executions_per_s']} executions/s: {'met' if met else 'NOT met'}"
    )
    print(json.dumps(line))
    return 0
