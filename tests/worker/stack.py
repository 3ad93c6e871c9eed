"""The roles as real processes, the way `noetl-server dev` starts them, on a database and a NATS
server the test provides: the server under gunicorn, the publisher, the system pool (one or
more, to kill and replace) and, when asked, the projector. Shared by the end-to-end tests and
`python -m bench e2e`."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.embedded import free_port

TOKEN = "e2e-internal-token-0123456789abcdef"
KEY = base64.b64encode(b"e" * 32).decode()
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


@dataclass
class Role:
    name: str
    proc: subprocess.Popen
    log: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Stack:
    workdir: Path
    database_url: str
    nats_url: str
    env: dict[str, str] = field(default_factory=dict)  # overrides for every role
    roles: list[Role] = field(default_factory=list)
    server_port: int = field(default_factory=free_port)

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def role_env(self, name: str, port: int, extra: dict[str, str]) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("NOETL_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        env.update(
            {
                "NOETL_DATABASE_URL": self.database_url,
                "NOETL_NATS_URL": self.nats_url,
                "NOETL_SERVER_URL": self.server_url,
                "NOETL_INTERNAL_API_TOKEN": TOKEN,
                "NOETL_ENCRYPTION_KEY": KEY,
                "NOETL_DATA_DIR": str(self.workdir / "data"),
                "NOETL_SYSTEM_POOL": "system,default",
                "NOETL_PROJECTOR_CONSUMER": "noetl-projector-0",
                "NOETL_HOST": "127.0.0.1",
                "NOETL_METRICS_HOST": "127.0.0.1",
                "NOETL_LOG_FORMAT": "json",
                "NOETL_SHUTDOWN_GRACE_SECONDS": "10",
            }
        )
        env.update(self.env)
        env.update(extra)
        if name == "server":
            env["NOETL_PORT"] = str(port)
        else:
            env["NOETL_METRICS_PORT"] = str(port)
        return env

    def start(self, name: str, wait: bool = True, **extra: str) -> Role:
        port = self.server_port if name == "server" else free_port()
        log = self.workdir / f"{name}-{port}.log"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:  # a file, not a pipe: a role's logs must never block it
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", f"--mode={name}"],
                env=self.role_env(name, port, extra),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        role = Role(name, proc, log, port)
        self.roles.append(role)
        if wait:
            self.wait_healthy(role)
        return role

    def wait_healthy(self, role: Role, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if role.proc.poll() is not None:
                code = role.proc.returncode
                raise AssertionError(f"{role.name} exited {code}:\n{self.tail(role)}")
            try:
                answer = httpx.get(f"{role.url}/health", timeout=2)
                if answer.status_code == 200:
                    return
                last = answer.text
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"{role.name} not healthy: {last!r}\n{self.tail(role)}")

    def stop(self, role: Role, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if role.proc.poll() is None:
            role.proc.send_signal(sig)
            try:
                role.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                role.proc.kill()
                role.proc.wait()
        return role.proc.returncode

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for role in reversed(self.roles):  # workers first, the server last
            if role.proc.poll() is None:
                role.proc.send_signal(signal.SIGTERM)
        for role in reversed(self.roles):
            try:
                role.proc.wait(30)
            except subprocess.TimeoutExpired:
                role.proc.kill()
                role.proc.wait()
            codes[f"{role.name}-{role.port}"] = role.proc.returncode
        return codes

    def tail(self, role: Role | None = None, lines: int = 40) -> str:
        chosen = [role] if role else self.roles
        out = []
        for r in chosen:
            text = r.log_text().splitlines()[-lines:]
            out.append(f"--- {r.name} ({r.port}) ---\n" + "\n".join(line[:600] for line in text))
        return "\n".join(out)

    # --- the API, as a client uses it -----------------------------------------------------

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.server_url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=timeout,
        )


class Api:
    """A client session: register, execute, wait."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = stack.client()

    def close(self) -> None:
        self.http.close()

    def register(self, text: str) -> dict[str, Any]:
        answer = self.http.post("/api/catalog/register", json={"content": text})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def credential(self, name: str, type_: str, data: dict[str, Any]) -> None:
        body = {"name": name, "type": type_, "data": data}
        answer = self.http.post("/api/credentials", json=body)
        assert answer.status_code == 200, answer.text

    def execute(self, path: str, payload: dict[str, Any] | None = None) -> str:
        body = {"path": path, "payload": payload or {}}
        answer = self.http.post("/api/execute", json=body)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["execution_id"])

    def status(self, execution_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/api/executions/{execution_id}/status")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait(self, execution_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(execution_id)
            if str(status.get("status")).upper() in TERMINAL:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"execution {execution_id} still {status.get('status')} after {timeout}s\n"
                    f"{self.stack.tail()}"
                )
            time.sleep(0.1)

    def events(self, execution_id: str) -> list[dict[str, Any]]:
        answer = self.http.get(f"/api/executions/{execution_id}/events", params={"page_size": 500})
        assert answer.status_code == 200, answer.text
        return sorted(answer.json()["events"], key=lambda e: int(e["event_id"]))
