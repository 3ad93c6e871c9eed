"""Running the real `noetl-server` process the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx


def noetl_server(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    full_env = {**os.environ, "NOETL_LOG_FORMAT": "json", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=full_env, **kwargs)


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll a readiness URL until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} was up")
        try:
            response = httpx.get(url, timeout=1.0)
            if response.status_code == 200:
                return
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout}s (last: {last!r})")
