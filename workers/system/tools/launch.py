"""Starting the python tool's child processes.

An interpreter start costs tens of milliseconds of CPU, more than a short step itself, so
children come from a fork server (`_pyrunner.py --serve`): a small interpreter started once per
worker process, which runs no user code and forks one child per call. Each child is in its own
session, with its stdout and stderr on pipes the worker reads. If the fork server cannot be
started, every call spawns `sys.executable` instead, with the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("_pyrunner.py")
START_TIMEOUT_SECONDS = 10.0
# Worker credentials stay out of the children's environment, the fork server's included (a
# child could read it in /proc): the code is trusted, but its output is not always looked at
# before it is stored.
HIDDEN_ENV = frozenset(
    {
        "NOETL_INTERNAL_API_TOKEN",
        "NOETL_API_TOKENS",
        "NOETL_WORKER_API_TOKENS",
        "NOETL_ENCRYPTION_KEY",
    }
)


def base_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in HIDDEN_ENV}


@dataclass
class Child:
    """A started call: its pid (also its process group), its exit status to come, and the read
    ends of its stdout and stderr pipes (the caller closes them)."""

    pid: int
    exited: asyncio.Future[int]
    stdout_fd: int
    stderr_fd: int

    def kill(self) -> None:
        # The child leads its own session; killing the pid too covers the instant before setsid.
        for kill, target in ((os.killpg, self.pid), (os.kill, self.pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(target, signal.SIGKILL)


class ForkServer:
    """The worker's fork server, bound to the event loop that started it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.next_id = 0
        self.started: dict[int, asyncio.Future[int]] = {}  # request id → pid
        self.exits: dict[int, asyncio.Future[int]] = {}  # request id → exit status
        self.failed = False

    def _start(self) -> None:
        self.close()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = dict(base_environment(), PYTHONUNBUFFERED="1")
            self.proc = subprocess.Popen(
                [sys.executable, str(RUNNER), "--serve", str(child.fileno())],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )
        finally:
            child.close()
        parent.setblocking(False)
        self.sock = parent
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(parent, self._on_message)

    def _on_message(self) -> None:
        assert self.sock is not None
        while True:
            try:
                raw = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                raw = b""
            if not raw:
                self._broken("the python fork server exited")
                return
            message = json.loads(raw)
            rid = message.get("id")
            if "pid" in message:
                future = self.started.pop(rid, None)
                if future is not None and not future.done():
                    future.set_result(int(message["pid"]))
            else:
                future = self.exits.pop(rid, None)
                if future is not None and not future.done():
                    future.set_result(int(message["status"]))

    def _broken(self, reason: str) -> None:
        log.warning("python fork server lost", extra={"reason": reason})
        error = RuntimeError(reason)
        for future in [*self.started.values(), *self.exits.values()]:
            if not future.done():
                future.set_exception(error)
        self.started.clear()
        self.exits.clear()
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.sock)
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    async def launch(
        self, spec_path: Path, result_path: Path, memory_mb: int, env: dict[str, str]
    ) -> Child:
        if self.sock is None or self.loop is not asyncio.get_running_loop():
            self._start()
        assert self.sock is not None and self.loop is not None
        self.next_id += 1
        rid = self.next_id
        started = self.started[rid] = self.loop.create_future()
        exited = self.exits[rid] = self.loop.create_future()
        request = {
            "id": rid,
            "spec_path": str(spec_path),
            "result_path": str(result_path),
            "memory_mb": memory_mb,
            "env": env,
        }
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            # A tiny datagram: the socket buffer never fills unless the server is stuck.
            socket.send_fds(self.sock, [json.dumps(request).encode()], [out_w, err_w])
            pid = await asyncio.wait_for(started, START_TIMEOUT_SECONDS)
        except BaseException:
            self.started.pop(rid, None)
            self.exits.pop(rid, None)
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        return Child(pid, exited, out_r, err_r)


async def spawn(spec_path: Path, result_path: Path, memory_mb: int, env: dict[str, str]) -> Child:
    """One fresh interpreter for one call (the fallback, and a reference for tests)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(RUNNER),
            str(spec_path),
            str(result_path),
            str(memory_mb),
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    # The pipes are ours, not asyncio's, so wait() resolves at exit, not when they close.
    return Child(proc.pid, asyncio.ensure_future(proc.wait()), out_r, err_r)


_server = ForkServer()


async def launch(
    spec_path: Path, result_path: Path, memory_mb: int, env: dict[str, str], *, fork: bool = True
) -> Child:
    if fork and not _server.failed:
        try:
            return await _server.launch(spec_path, result_path, memory_mb, env)
        except (OSError, RuntimeError, TimeoutError) as exc:
            # One restart; if that fails too, this process spawns from now on.
            log.warning("python fork server failed, restarting it", extra={"error": str(exc)})
            _server.close()
            try:
                return await _server.launch(spec_path, result_path, memory_mb, env)
            except (OSError, RuntimeError, TimeoutError) as again:
                log.error("python fork server unusable, spawning", extra={"error": str(again)})
                _server.failed = True
                _server.close()
    return await spawn(spec_path, result_path, memory_mb, env)


def shutdown() -> None:
    """Stop the fork server (the daemon calls this at exit; it also stops on its own when the
    worker's end of the socket closes)."""
    _server.close()


async def drain(fd: int, keep: Any) -> None:
    """Read a pipe to its end, handing each chunk to `keep`; closes the fd."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                readable.clear()
                await readable.wait()
                continue
            if not chunk:
                return
            keep(chunk)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
