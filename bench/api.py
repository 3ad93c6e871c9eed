"""`python -m bench api`: the server's routes against the framework limit, in one run.

The real server (`noetl-server --mode=server`: gunicorn, uvicorn workers, NOETL_SERVER_WORKERS
of them, default settings otherwise) runs on an embedded Postgres in a temporary folder. A
load generator at concurrency 32 drives each route for 10 s:

  bare                  GET  /livez: {"status": "ok"} through the whole middleware stack, no
                        database: the limit of this framework on this machine
  catalog_resource      POST /api/catalog/resource {"path": ...} (served from the cache)
  catalog_list          POST /api/catalog/list, 100 entries in the answer
  credential_get        GET  /api/credentials/{name}

The routes alternate for NOETL_BENCH_ROUNDS rounds (default 3) and the best round of each
route counts (its rate with that round's p50 and p99). For the record it also measures a
bare falcon WSGI app under gunicorn's gthread workers (the same worker count), the framework
limit of the WSGI alternative.

The load generator is wrk when it is installed (or installable with apt-get, as root);
otherwise a Python asyncio client, which shares the 2 cores with the server and so
understates every rate. Ends with one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from core.embedded import EmbeddedPostgres, free_port
from core.migrate import upgrade

CONCURRENCY = int(os.environ.get("NOETL_BENCH_CONCURRENCY", "32"))
SECONDS = float(os.environ.get("NOETL_BENCH_SECONDS", "10"))
WORKERS = os.environ.get("NOETL_SERVER_WORKERS", "2")
# rounds alternate the routes and the best of each counts, so a neighbour's burst on the
# shared machine does not decide the ratio
ROUNDS = int(os.environ.get("NOETL_BENCH_ROUNDS", "3"))
LIST_ENTRIES = 100
TARGETS = {"ratio": 0.5, "p99_ms": 20.0}
KEY = "YmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtMzI="  # base64 of 32 bytes, bench only

PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: bench_{n}
  path: bench/playbook_{n}
  description: A benchmark playbook of realistic size.
workload:
  greeting: hello  # ui:description=Greeting word
  repeat: 3  # ui:enum=[1, 2, 3]
  options:
    verbose: false
workflow:
  - step: start
    desc: Python step with input bindings
    input:
      word: "{{{{ workload.greeting }}}}"
      times: "{{{{ workload.repeat }}}}"
    tool:
      kind: python
      code: |
        def main(word, times):
            return {{"message": " ".join([word] * int(times)), "count": int(times)}}
    next:
      arcs:
        - step: route
  - step: route
    tool:
      kind: python
      code: |
        result = {{"routed": True}}
    next:
      spec:
        mode: exclusive
      arcs:
        - step: end
          when: "{{{{ start.count >= 3 }}}}"
        - step: end
          when: "{{{{ start.count < 3 }}}}"
  - step: end
    tool:
      kind: noop
"""


def wsgi_bare_app() -> Any:
    """A falcon WSGI app with one bare route, for `gunicorn 'bench.api:wsgi_bare_app()'`."""
    import falcon

    class Livez:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.media = {"status": "ok"}

    app = falcon.App()
    app.add_route("/livez", Livez())
    return app


# ---------------------------------------------------------------------- load generators


def _ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("bench api: installing wrk with apt-get", file=sys.stderr)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "wrk"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        timeout=300,
    )
    return shutil.which("wrk")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk(wrk: str, url: str, method: str, body: dict | None, workdir: Path) -> dict[str, float]:
    script = workdir / "request.lua"
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(json.dumps(body))}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [wrk, "-t2", f"-c{CONCURRENCY}", f"-d{int(SECONDS)}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=SECONDS + 60,
        check=True,
    )
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    p50 = re.search(r"^\s+50%\s+([0-9.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:.*", out)
    if errors or socket_errors:
        raise RuntimeError(f"{method} {url}: failed requests\n{out}")
    assert p99 is not None and p50 is not None
    return {
        "rps": rps,
        "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)],
        "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
    }


async def _python_load(url: str, method: str, body: dict | None) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.monotonic() + SECONDS
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def user() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await client.request(method, url, json=body)
                if response.status_code != 200:
                    raise RuntimeError(f"{method} {url}: {response.status_code} {response.text}")
                latencies.append(time.perf_counter() - started)

        started = time.monotonic()
        await asyncio.gather(*(user() for _ in range(CONCURRENCY)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def measure(wrk: str | None, url: str, method: str, body: dict | None, workdir: Path) -> dict:
    if wrk:
        return _wrk(wrk, url, method, body, workdir)
    return asyncio.run(_python_load(url, method, body))


# ---------------------------------------------------------------------- processes


def _wait_ok(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _seed(base: str) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        for n in range(LIST_ENTRIES):
            response = client.post("/api/catalog/register", json={"content": PLAYBOOK.format(n=n)})
            response.raise_for_status()
        client.post(
            "/api/credentials",
            json={
                "name": "bench_pg",
                "type": "postgres",
                "data": {"host": "db.example.invalid", "user": "bench", "password": "not-real"},
                "tags": ["bench"],
            },
        ).raise_for_status()
        listed = client.post("/api/catalog/list", json={}).json()["entries"]
        assert len(listed) == LIST_ENTRIES, len(listed)
        assert client.post("/api/catalog/resource", json={"path": "bench/playbook_7"}).is_success


def _wsgi_bare(wrk: str | None, workdir: Path) -> float | None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            WORKERS,
            "--worker-class",
            "gthread",
            "--threads",
            "8",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "bench.api:wsgi_bare_app()",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_ok(f"http://127.0.0.1:{port}/livez", proc)
        return measure(wrk, f"http://127.0.0.1:{port}/livez", "GET", None, workdir)["rps"]
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"bench api: WSGI comparison skipped: {exc}", file=sys.stderr)
        return None
    finally:
        _stop(proc)


def start_server(workdir: Path, database_url: str) -> tuple[subprocess.Popen, str]:
    """The real server (gunicorn, NOETL_SERVER_WORKERS workers) on a free port, once healthy;
    its log goes to workdir/server.log."""
    port = free_port()
    env = {
        **os.environ,
        "NOETL_DATABASE_URL": database_url,
        "NOETL_HOST": "127.0.0.1",
        "NOETL_PORT": str(port),
        "NOETL_SERVER_WORKERS": WORKERS,
        "NOETL_ENCRYPTION_KEY": KEY,
        "NOETL_LOG_LEVEL": "WARNING",
        "NOETL_DATA_DIR": str(workdir),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--mode=server"],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    _wait_ok(f"{base}/health", proc)
    return proc, base


def main() -> int:
    wrk = _ensure_wrk()
    generator = "wrk" if wrk else "python-asyncio (wrk not available: rates are understated)"
    workdir = Path(tempfile.mkdtemp(prefix="noetl-bench-api-"))
    postgres = EmbeddedPostgres(workdir / "data")
    proc: subprocess.Popen | None = None
    try:
        postgres.start()
        database_url = postgres.url("noetl")
        upgrade(database_url)
        proc, base = start_server(workdir, database_url)
        _seed(base)
        routes = {
            "bare": ("GET", "/livez", None),
            "catalog_resource": ("POST", "/api/catalog/resource", {"path": "bench/playbook_7"}),
            "catalog_list": ("POST", "/api/catalog/list", {}),
            "credential_get": ("GET", "/api/credentials/bench_pg", None),
        }
        results: dict[str, dict[str, float]] = {}
        for round_ in range(1, ROUNDS + 1):
            for name, (method, path, body) in routes.items():
                r = measure(wrk, base + path, method, body, workdir)
                print(
                    f"round {round_} {name:18s} {method:4s} {path:28s} {r['rps']:9.0f} req/s  "
                    f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms",
                    flush=True,
                )
                if name not in results or r["rps"] > results[name]["rps"]:
                    results[name] = r
        _stop(proc)
        proc = None
        wsgi = _wsgi_bare(wrk, workdir)
        if wsgi is not None:
            print(f"{'wsgi_bare':18s} GET  /livez (falcon WSGI, gthread) {wsgi:9.0f} req/s")
    finally:
        if proc is not None:
            _stop(proc)
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    ratio = results["catalog_resource"]["rps"] / results["bare"]["rps"]
    p99 = results["catalog_resource"]["p99_ms"]
    line = {
        "bare_rps": round(results["bare"]["rps"], 1),
        "catalog_resource_rps": round(results["catalog_resource"]["rps"], 1),
        "catalog_list_rps": round(results["catalog_list"]["rps"], 1),
        "credential_get_rps": round(results["credential_get"]["rps"], 1),
        "ratio": round(ratio, 3),
        "p99_ms": round(p99, 2),
        "wsgi_bare_rps": None if wsgi is None else round(wsgi, 1),
        "workers": int(WORKERS),
        "concurrency": CONCURRENCY,
        "seconds": SECONDS,
        "rounds": ROUNDS,
        "generator": "wrk" if wrk else "python",
    }
    met = ratio >= TARGETS["ratio"] and p99 < TARGETS["p99_ms"]
    print(
        f"targets: ratio >= {TARGETS['ratio']} and p99 < {TARGETS['p99_ms']} ms: "
        f"{'met' if met else 'NOT met'} ({generator})"
    )
    print(json.dumps(line))
    return 0
