"""`noetl-server dev` as a user runs it: it registers the system playbooks (as migrate does) and,
once the server is healthy, the examples; an example then runs to COMPLETED on the system pool
it starts, and the maintenance playbooks the server started do too."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.embedded import free_port
from core.paths import EXAMPLES_DIR
from tests.acceptance.helpers import noetl_server, wait_http_ok

ROLES = ("server", "publisher", "projector", "system")


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    # not pytest's tmp_path: the unprivileged Postgres user must keep access to it
    path = Path(tempfile.mkdtemp(prefix="noetl-dev-examples-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _wait_terminal(client: httpx.Client, execution_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/api/executions/{execution_id}/status").json()["status"]
        if status in ("COMPLETED", "FAILED", "CANCELLED"):
            return str(status)
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_dev_registers_and_runs_the_examples(dev_dir: Path) -> None:
    ports = {role: free_port() for role in ROLES}
    log_path = dev_dir / "dev.log"
    data_dir = dev_dir / "data"
    with log_path.open("w") as log:
        proc = noetl_server(
            "dev",
            "--data-dir",
            str(data_dir),
            env={"NOETL_DEV_PORTS": ",".join(str(ports[r]) for r in ROLES) + ",0"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        server = f"http://127.0.0.1:{ports['server']}"
        wait_http_ok(f"{server}/health", 120, proc)
        wait_http_ok(f"http://127.0.0.1:{ports['system']}/health", 60, proc)
        deadline = time.monotonic() + 60
        while "Examples registered" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        token = (data_dir / "internal_token").read_text().strip()
        with httpx.Client(
            base_url=server, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            entries = client.post("/api/catalog/list", json={}).json()["entries"]
            paths = {e["path"] for e in entries}
            assert {f"examples/{p.stem}" for p in EXAMPLES_DIR.glob("*.yaml")} <= paths
            assert {"system/partitions", "system/cleanup", "system/finalize_abandoned"} <= paths
            answer = client.post("/api/execute", json={"path": "examples/hello"})
            assert answer.status_code == 200, answer.text
            assert _wait_terminal(client, str(answer.json()["execution_id"]), 60) == "COMPLETED"
            # the maintenance lease holder started the system playbooks at start-up (the
            # listing reads the projector's read model, so they may show up a little later)
            deadline = time.monotonic() + 30
            while True:
                listed = client.get("/api/executions", params={"page_size": 50}).json()
                runs = [e for e in listed if str(e.get("path", "")).startswith("system/")]
                if len(runs) >= 3:
                    break
                assert time.monotonic() < deadline, listed
                time.sleep(0.2)
            for run in runs:
                assert _wait_terminal(client, str(run["execution_id"]), 60) == "COMPLETED"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
