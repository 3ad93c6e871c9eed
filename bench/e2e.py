"""`python -m bench e2e`: executions end to end, with every role a real process.

An embedded Postgres and NATS in a temporary folder; `noetl-server migrate`; then the server
(gunicorn, NOETL_SERVER_WORKERS), the publisher, the projector and the system pool, each as
`noetl-server --mode=...`, as `dev` and compose run them. A 3-step python playbook is executed
NOETL_BENCH_EXECUTIONS times (500) by a closed loop of NOETL_BENCH_CONCURRENCY clients (4):
each posts `POST /api/execute` and waits until the execution is terminal, seen on the
`noetl_event` channel the server's own streams use (a LISTEN connection in this process), then
starts the next. A warm-up of 20 executions is not counted.

Reported: executions per second over the measured run, and the execute → COMPLETED latency
(request sent → terminal event committed and notified) at p50 and p99. Every execution must
end COMPLETED (checked in Postgres afterwards). Targets on 2 cores: ≥ 50 executions/s and
p50 < 80 ms. The load generator shares the cores with the roles. Postgres runs as in the test
suite (fsync off), so the numbers measure the control plane, not the disk.

It also measures the CPU every process tree (each role with its children, Postgres, NATS, this
load generator) spent per execution, and from it the physical limit of this machine:
`cpu_bound_executions_per_s` = cores / CPU seconds per execution.

Ends with one JSON line: executions_per_s, e2e_p50_ms, e2e_p99_ms, and the run's parameters.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from core.embedded import EmbeddedNats, EmbeddedPostgres, free_port

EXECUTIONS = int(os.environ.get("NOETL_BENCH_EXECUTIONS", "500"))
CONCURRENCY = int(os.environ.get("NOETL_BENCH_CONCURRENCY", "4"))
WARMUP = 20
TARGETS = {"executions_per_s": 50.0, "e2e_p50_ms": 80.0}
TOKEN = "bench-internal-token-0123456789abcdef"
KEY = "YmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtMzI="  # base64 of 32 bytes, bench only
PG_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
ROLES = ("server", "publisher", "projector", "system")
TERMINAL_TIMEOUT_S = 60.0

PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: e2e
  path: bench/e2e
workload:
  word: hello
  times: 3
workflow:
  - step: start
    input: {word: "{{ word }}", times: "{{ times }}"}
    tool: {kind: python, code: "result = {'words': [word] * times}"}
    next: count
  - step: count
    input: {words: "{{ start.words }}"}
    tool: {kind: python, code: "result = {'n': len(words)}"}
    next: report
  - step: report
    input: {n: "{{ count.n }}"}
    tool: {kind: python, code: "result = {'ok': n == 3}"}
"""


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds of the process and of its reaped children)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        # fields[1] is ppid; utime, stime, cutime, cstime are fields 11..14 after the name
        ticks = sum(int(f) for f in fields[11:15])
        table[int(entry.name)] = (int(fields[1]), ticks / CLOCK_TICKS)
    return table


def tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process and all its descendants."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, root in roots.items():
        total, stack = 0.0, [root]
        while stack:
            pid = stack.pop()
            total += table.get(pid, (0, 0.0))[1]
            stack.extend(children.get(pid, []))
        out[name] = total
    return out


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Roles:
    def __init__(self, folder: Path, database_url: str, nats_url: str) -> None:
        self.folder = folder
        self.server_port = free_port()
        self.base = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NOETL_")},
            "NOETL_DATABASE_URL": database_url,
            "NOETL_NATS_URL": nats_url,
            "NOETL_SERVER_URL": f"http://127.0.0.1:{self.server_port}",
            "NOETL_INTERNAL_API_TOKEN": TOKEN,
            "NOETL_ENCRYPTION_KEY": KEY,
            "NOETL_DATA_DIR": str(folder / "data"),
            "NOETL_SYSTEM_POOL": "system,default",
            "NOETL_SYSTEM_CONCURRENCY": os.environ.get("NOETL_SYSTEM_CONCURRENCY", "16"),
            "NOETL_SERVER_WORKERS": os.environ.get("NOETL_SERVER_WORKERS", "2"),
            "NOETL_PROJECTOR_CONSUMER": "noetl-projector-0",
            "NOETL_HOST": "127.0.0.1",
            "NOETL_METRICS_HOST": "127.0.0.1",
            "NOETL_LOG_LEVEL": "WARNING",
        }
        self.procs: dict[str, tuple[subprocess.Popen, int]] = {}

    def start(self) -> None:
        for role in ROLES:
            env = dict(self.base)
            port = self.server_port if role == "server" else free_port()
            env["NOETL_PORT" if role == "server" else "NOETL_METRICS_PORT"] = str(port)
            with (self.folder / f"{role}.log").open("w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "cli.main", f"--mode={role}"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.procs[role] = (proc, port)
        for role, (proc, port) in self.procs.items():
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{role} exited: {self.tail(role)}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{role} not healthy: {self.tail(role)}")
                time.sleep(0.1)

    def tail(self, role: str) -> str:
        path = self.folder / f"{role}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> dict[str, int | None]:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for role, (proc, _) in self.procs.items():
            try:
                codes[role] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[role] = proc.wait()
        return codes


class Terminals:
    """Terminal events of executions, from LISTEN noetl_event (a NOTIFY wakes; the table says
    which executions ended, as every listener must treat a notification)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.done: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        await conn.execute("LISTEN noetl_event")
        self.task = asyncio.create_task(self._listen(conn))

    async def _listen(self, conn: psycopg.AsyncConnection) -> None:
        async for note in conn.notifies():
            seen = time.perf_counter()
            payload = json.loads(note.payload)
            if payload.get("terminal"):
                self._finish(str(payload["execution_id"]), seen)

    def _finish(self, execution_id: str, seen: float) -> None:
        self.done.setdefault(execution_id, seen)
        waiter = self.waiters.pop(execution_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(self.done[execution_id])

    async def wait(self, execution_id: str) -> float:
        if execution_id in self.done:
            return self.done[execution_id]
        waiter = self.waiters[execution_id] = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(waiter, TERMINAL_TIMEOUT_S)


async def _drive(server_url: str, database_url: str, roots: dict[str, int]) -> dict[str, Any]:
    terminals = Terminals(database_url)
    await terminals.start()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=CONCURRENCY * 2)
    async with httpx.AsyncClient(
        base_url=server_url, headers=headers, timeout=30, limits=limits
    ) as client:
        answer = await client.post("/api/catalog/register", json={"content": PLAYBOOK})
        answer.raise_for_status()

        async def one(latencies: list[float], ids: list[str]) -> None:
            sent = time.perf_counter()
            response = await client.post("/api/execute", json={"path": "bench/e2e"})
            response.raise_for_status()
            execution_id = str(response.json()["execution_id"])
            ended = await terminals.wait(execution_id)
            latencies.append(ended - sent)
            ids.append(execution_id)

        async def run(count: int) -> tuple[list[float], list[str], float]:
            latencies: list[float] = []
            ids: list[str] = []
            queue = iter(range(count))

            async def client_loop() -> None:
                for _ in queue:
                    await one(latencies, ids)

            started = time.perf_counter()
            await asyncio.gather(*(client_loop() for _ in range(CONCURRENCY)))
            return latencies, ids, time.perf_counter() - started

        await run(WARMUP)
        before = tree_cpu(roots)
        own_before = sum(os.times()[:2])
        system_before = _process_table()[roots["system"]][1]
        latencies, ids, elapsed = await run(EXECUTIONS)
        after = tree_cpu(roots)
        # this process alone: its tree holds every role
        before["bench"], after["bench"] = own_before, sum(os.times()[:2])
        # the system pool's tree is the daemon and the python tool's processes: split them
        system_after = _process_table()[roots["system"]][1]
        before["system_python"] = before["system"] - system_before
        after["system_python"] = after["system"] - system_after
        before["system"], after["system"] = system_before, system_after
    if terminals.task is not None:
        terminals.task.cancel()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT status, count(*) FROM noetl.execution"
            " WHERE execution_id = ANY(%s::bigint[]) GROUP BY status",
            ([int(i) for i in ids],),
        )
        statuses = {row[0]: row[1] for row in await cur.fetchall()}
    ordered = sorted(latencies)
    result: dict[str, Any] = {
        "executions_per_s": round(len(ids) / elapsed, 1),
        "e2e_p50_ms": round(statistics.median(ordered) * 1000, 1),
        "e2e_p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "executions": len(ids),
        "completed": statuses.get("COMPLETED", 0),
        "concurrency": CONCURRENCY,
        "seconds": round(elapsed, 2),
        # CPU per execution by process tree: where the 2 cores go
        "cpu_ms_per_execution": {
            name: round((after[name] - before[name]) * 1000 / max(1, len(ids)), 2) for name in after
        },
        "cpu_busy_ratio": round(
            sum(after[n] - before[n] for n in after) / (elapsed * (os.cpu_count() or 1)), 2
        ),
    }
    # the physical limit: every core busy with this work, at the CPU it cost per execution
    spent = sum(after[n] - before[n] for n in after) / max(1, len(ids))
    result["cpu_bound_executions_per_s"] = round((os.cpu_count() or 1) / max(spent, 1e-9), 1)
    return result


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="noetl-bench-e2e-"))
    postgres = EmbeddedPostgres(folder / "pg", PG_SETTINGS)
    nats = EmbeddedNats(folder / "nats")
    roles: Roles | None = None
    try:
        postgres.start()
        nats.start()
        database_url = postgres.url("noetl")
        migrate = subprocess.run(
            [sys.executable, "-m", "cli.main", "migrate", "--database-url", database_url],
            env={**os.environ, "NOETL_ENCRYPTION_KEY": KEY, "NOETL_LOG_LEVEL": "WARNING"},
            capture_output=True,
            text=True,
        )
        if migrate.returncode != 0:
            _log(migrate.stdout + migrate.stderr)
            return 1
        roles = Roles(folder, database_url, nats.url)
        roles.start()
        _log(f"roles up; {EXECUTIONS} executions at concurrency {CONCURRENCY}")
        roots = {role: proc.pid for role, (proc, _) in roles.procs.items()}
        assert postgres.proc is not None and nats.proc is not None
        roots["postgres"], roots["nats"] = postgres.proc.pid, nats.proc.pid
        result = asyncio.run(_drive(f"http://127.0.0.1:{roles.server_port}", database_url, roots))
        codes = roles.stop()
        roles = None
        result["cpus"] = os.cpu_count()
        result["role_exit_codes"] = codes
        result["targets"] = TARGETS
        result["targets_met"] = (
            result["executions_per_s"] >= TARGETS["executions_per_s"]
            and result["e2e_p50_ms"] < TARGETS["e2e_p50_ms"]
            and result["completed"] == result["executions"]
        )
        print(json.dumps(result), flush=True)
        return 0 if result["completed"] == result["executions"] else 1
    finally:
        if roles is not None:
            roles.stop()
        nats.stop()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)
