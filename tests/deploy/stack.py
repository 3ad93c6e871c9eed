"""The compose file, played as processes on this machine.

Every service of docker-compose.yml that runs the project's image is started with the command
compose would give it (the image's entrypoint `noetl-server` plus the service's `command`) and the
environment compose would give it (.env.example, then the service's `environment`). Only
addresses change: the `postgres`, `nats` and `server` hosts become the embedded servers and the
local server, and every listening port becomes a free one, because 8082 and 909x may be taken
here. Services start in the order their `depends_on` conditions allow, and a service counts as
healthy when its own compose health check command passes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.embedded import free_port
from tests.deploy.manifests import ROOT, load_compose, role_services, service_env

EXTERNAL = {"postgres", "nats"}  # provided by the test harness, healthy from the start


def noetl_server_binary() -> list[str]:
    """The console script the image's ENTRYPOINT names, from this environment."""
    script = Path(sys.executable).parent / "noetl-server"
    if script.exists():
        return [str(script)]
    found = shutil.which("noetl-server")
    return [found] if found else [sys.executable, "-m", "cli.main"]


@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    env: dict[str, str]
    ports: dict[int, int] = field(default_factory=dict)  # compose port -> local port
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def argv(self) -> list[str]:
        return [*noetl_server_binary(), *self.spec["command"]]

    def local_port(self, compose_port: int) -> int:
        return self.ports[compose_port]

    def healthcheck_argv(self) -> list[str]:
        test = list(self.spec["healthcheck"]["test"])
        assert test[:2] == ["CMD", "python"], test
        code = test[3]
        for compose_port, local in self.ports.items():
            code = code.replace(f"127.0.0.1:{compose_port}/", f"127.0.0.1:{local}/")
        return [sys.executable, test[2], code]

    def healthy(self) -> bool:
        timeout = float(str(self.spec["healthcheck"].get("timeout", "5s")).rstrip("s"))
        try:
            result = subprocess.run(self.healthcheck_argv(), capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").splitlines()[-15:]
        # the start-up settings line is long: a failure message needs only its head
        return "\n".join([f"--- {self.name} ---", *(line[:400] for line in lines)])


class ComposeStack:
    def __init__(self, workdir: Path, database_url: str, nats_url: str) -> None:
        self.workdir = workdir
        self.compose = load_compose()
        services = role_services(self.compose)
        self.services = {name: Service(name, spec, {}) for name, spec in services.items()}
        self.server_port = free_port()
        for service in self.services.values():
            service.env = self._local_env(service, database_url, nats_url)

    def _local_env(self, service: Service, database_url: str, nats_url: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("NOETL_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        compose_env = service_env(service.spec)
        env.update(compose_env)
        swaps = {
            "NOETL_DATABASE_URL": ("postgres", database_url),
            "NOETL_NATS_URL": ("nats", nats_url),
            "NOETL_SERVER_URL": ("server", f"http://127.0.0.1:{self.server_port}"),
        }
        for name, (host, address) in swaps.items():
            if name in compose_env:
                assert urlsplit(compose_env[name]).hostname == host, (service.name, name)
                env[name] = address
        if service.name == "server":
            service.ports[int(compose_env.get("NOETL_PORT", "8082"))] = self.server_port
            env["NOETL_PORT"] = str(self.server_port)
        elif "NOETL_METRICS_PORT" in compose_env:
            local = free_port()
            service.ports[int(compose_env["NOETL_METRICS_PORT"])] = local
            env["NOETL_METRICS_PORT"] = str(local)
        env["NOETL_HOST"] = env["NOETL_METRICS_HOST"] = "127.0.0.1"
        # the named volume of the service (or the image's folder when it has none)
        data_dir = self.workdir / "volumes" / service.name
        data_dir.mkdir(parents=True, exist_ok=True)
        env["NOETL_DATA_DIR"] = str(data_dir)
        # compose waits stop_grace_period (30 s) for the default 20 s; keep the test shorter
        env["NOETL_SHUTDOWN_GRACE_SECONDS"] = "10"
        return env

    def run_one_shot(self, name: str, timeout: float = 180) -> subprocess.CompletedProcess:
        service = self.services[name]
        return subprocess.run(
            service.argv,
            env=service.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _satisfied(self, name: str, started: set[str], healthy: set[str], done: set[str]) -> bool:
        for dep, rule in (self.services[name].spec.get("depends_on") or {}).items():
            if dep in EXTERNAL:
                continue
            condition = rule["condition"]
            if condition == "service_completed_successfully" and dep not in done:
                return False
            if condition == "service_healthy" and dep not in healthy:
                return False
            if condition == "service_started" and dep not in started:
                return False
        return True

    def up(self, completed: set[str], timeout: float = 120) -> None:
        """Start the long-running services in depends_on order; wait until each is healthy."""
        waiting = {n for n, s in self.services.items() if "healthcheck" in s.spec} - completed
        started: set[str] = set()
        healthy: set[str] = set()
        deadline = time.monotonic() + timeout
        while healthy != waiting:
            for name in sorted(waiting - started):
                if self._satisfied(name, started, healthy, completed):
                    self._start(self.services[name])
                    started.add(name)
            for name in sorted(started - healthy):
                service = self.services[name]
                assert service.proc is not None
                if service.proc.poll() is not None:
                    raise AssertionError(
                        f"{name} exited with {service.proc.returncode}\n{self.logs()}"
                    )
                if service.healthy():
                    healthy.add(name)
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy in time: {waiting - healthy}\n{self.logs()}")
            if healthy != waiting:
                time.sleep(0.2)

    def _start(self, service: Service) -> None:
        service.log = self.workdir / f"{service.name}.log"
        with service.log.open("w") as log:  # a file, not a pipe: logs must never block a role
            service.proc = subprocess.Popen(
                service.argv,
                env=service.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> list[Service]:
        return [s for s in self.services.values() if s.proc is not None]

    def stop(self, timeout: float = 30) -> dict[str, int | None]:
        """`docker compose stop`: SIGTERM to every role, then wait for the exits."""
        for service in self.running():
            assert service.proc is not None
            if service.proc.poll() is None:
                service.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for service in self.running():
            assert service.proc is not None
            try:
                codes[service.name] = service.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[service.name] = None
        return codes

    def kill(self) -> None:
        """Last resort after a failure: the process group of every role we started."""
        for service in self.running():
            assert service.proc is not None
            if service.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.proc.pid, signal.SIGKILL)
                service.proc.wait()

    def logs(self) -> str:
        return "\n".join(s.log_tail() for s in self.running())


def readme_example_session() -> str | None:
    """The first sh/bash block under the README heading that names "Example session"."""
    text = (ROOT / "README.md").read_text()
    heading = re.search(r"^(#+)[^\n]*example session[^\n]*$", text, re.IGNORECASE | re.MULTILINE)
    if not heading:
        return None
    level = len(heading.group(1))
    rest = text[heading.end() :]
    following = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    section = rest[: following.start()] if following else rest
    block = re.search(r"```(?:sh|bash|shell|console)\n(.*?)```", section, re.DOTALL)
    if not block:
        return None
    lines = []
    for line in block.group(1).splitlines():
        line = line.removeprefix("$ ")
        # the session runs after `docker compose up`: compose itself is played by the stack
        if re.match(r"\s*docker[ -]compose\b", line):
            continue
        lines.append(line)
    return "\n".join(lines)
