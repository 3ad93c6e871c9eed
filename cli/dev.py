"""`noetl-server dev`: every role on the embedded default, under one supervisor.

Postgres and NATS run as children of this process with their data in NOETL_DATA_DIR; the four
roles run as children too, each in its own session so a terminal's Ctrl-C reaches only the
supervisor, which then stops the roles first and the servers last. A role that dies ends the
whole run with its name and exit status: nothing is restarted silently.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from cli.system_playbooks import register_examples, register_system_playbooks
from core.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from core.migrate import upgrade
from core.settings import Settings

log = logging.getLogger("noetl.dev")
ROLES = ("server", "publisher", "projector", "system")
EXAMPLES_WAIT_SECONDS = 120.0
STOP_BUDGET_SECONDS = 12.0  # of the 15 s a user waits for Ctrl-C; the servers take the rest


@dataclass
class Child:
    role: str
    proc: subprocess.Popen


def _secret_file(path: Path, make) -> str:
    """Generated once, kept for the next run, readable only by the owner."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


def _ports(spec: str) -> dict[str, int]:
    names = ("server", "publisher", "projector", "system", "nats")
    try:
        values = [int(p) for p in spec.split(",")]
    except ValueError:
        raise SystemExit(
            f"NOETL_DEV_PORTS: expected 5 comma-separated numbers, got {spec!r}"
        ) from None
    if len(values) != len(names):
        raise SystemExit(f"NOETL_DEV_PORTS: expected 5 ports ({','.join(names)}), got {spec!r}")
    return {name: value or free_port() for name, value in zip(names, values, strict=True)}


def run_dev(settings: Settings, data_dir_arg: str | None) -> int:
    data_dir = Path(data_dir_arg or settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = _ports(settings.dev_ports)
    token = _secret_file(data_dir / "internal_token", lambda: secrets.token_urlsafe(32))
    _secret_file(data_dir / "encryption.key", lambda: base64.b64encode(os.urandom(32)).decode())

    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    postgres = EmbeddedPostgres(data_dir)
    nats = EmbeddedNats(data_dir, ports["nats"])
    children: list[Child] = []
    code = 0
    try:
        postgres.start()
        nats.start()
        database_url = postgres.url("noetl")
        upgrade(database_url)
        # as `noetl-server migrate` does; the key is the one the children will use
        register_system_playbooks(
            database_url,
            replace(settings, data_dir=str(data_dir), allow_insecure_default_key=True),
        )
        server_url = f"http://127.0.0.1:{ports['server']}"
        env = dict(os.environ)
        env.update(
            {
                "NOETL_DATABASE_URL": database_url,
                "NOETL_NATS_URL": nats.url,
                "NOETL_SERVER_URL": server_url,
                "NOETL_INTERNAL_API_TOKEN": token,
                "NOETL_DATA_DIR": str(data_dir),
                "NOETL_ALLOW_INSECURE_DEFAULT_KEY": "true",
                "NOETL_PROJECTOR_CONSUMER": "noetl-projector-0",
                "NOETL_SYSTEM_POOL": "system,default",
                "NOETL_HOST": "127.0.0.1",
                "NOETL_METRICS_HOST": "127.0.0.1",
                # each role must finish inside the supervisor's own stop budget
                "NOETL_SHUTDOWN_GRACE_SECONDS": str(min(settings.shutdown_grace_seconds, 10.0)),
            }
        )
        for role in ROLES:
            role_env = dict(env)
            if role == "server":
                role_env["NOETL_PORT"] = str(ports["server"])
            else:
                role_env["NOETL_METRICS_PORT"] = str(ports[role])
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", f"--mode={role}"],
                env=role_env,
                start_new_session=True,
            )
            children.append(Child(role, proc))
        _announce(server_url, token, database_url, nats.url, ports)
        threading.Thread(
            target=_register_examples, args=(server_url, token, stop), daemon=True
        ).start()
        code = _supervise(children, stop)
    finally:
        _stop_children(children)
        nats.stop()
        postgres.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _announce(server_url: str, token: str, database_url: str, nats_url: str, ports: dict) -> None:
    lines = [
        "",
        f"NoETL is up. API: {server_url}",
        "Environment for a client in another shell:",
        f"  export NOETL_SERVER_URL={server_url}",
        f"  export NOETL_INTERNAL_API_TOKEN={token}",
        f"  export NOETL_DATABASE_URL='{database_url}'",
        f"  export NOETL_NATS_URL={nats_url}",
        "Health: " + ", ".join(f"{role} http://127.0.0.1:{ports[role]}/livez" for role in ROLES),
        "Ctrl-C stops everything; data is kept for the next run.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _register_examples(server_url: str, token: str, stop: threading.Event) -> None:
    """examples/ through the API, once the server answers its health check."""
    deadline = time.monotonic() + EXAMPLES_WAIT_SECONDS
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            if httpx.get(f"{server_url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        stop.wait(0.5)
    else:
        return
    try:
        paths = register_examples(server_url, token)
    except httpx.HTTPError as exc:
        print(f"noetl-server dev: examples not registered: {exc}", file=sys.stderr, flush=True)
        return
    print(f"Examples registered: {', '.join(paths)}", flush=True)


def _supervise(children: list[Child], stop: threading.Event) -> int:
    while not stop.wait(0.2):
        for child in children:
            status = child.proc.poll()
            if status is not None:
                print(
                    f"noetl-server dev: role {child.role} exited with status {status}; "
                    "stopping everything (see its log lines above)",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
    return 0


def _stop_children(children: list[Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_BUDGET_SECONDS
    for child in children:
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(
                f"noetl-server dev: role {child.role} did not stop in time; killing it",
                file=sys.stderr,
                flush=True,
            )
            child.proc.kill()
            child.proc.wait()
