"""The daemon runtime the publisher, projector and system pool share (STYLE.md, the daemon
skeleton): one stop event set by SIGTERM/SIGINT, named and watched side tasks, and an HTTP
side port with /livez, /health and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import falcon.asgi
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.metrics import mark_build
from core.settings import Settings

log = logging.getLogger(__name__)

LIVENESS_STALL_SECONDS = 30.0
DEFAULT_PORTS = {"publisher": 9091, "projector": 9092, "system": 9093}

Check = Callable[[], Awaitable[bool] | bool]


class Health:
    """Readiness checks by name, and the main loop's last turn for liveness."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.checks: dict[str, Check] = {}
        self.last_turn = time.monotonic()

    def turned(self) -> None:
        self.last_turn = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last_turn < LIVENESS_STALL_SECONDS

    async def evaluate(self) -> tuple[bool, dict[str, str]]:
        results: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                outcome = check()
                if asyncio.iscoroutine(outcome):
                    outcome = await asyncio.wait_for(outcome, 1.0)
                results[name] = "ok" if outcome else "failing"
            except Exception as exc:  # a check that raises is a failing check, named in the reply
                results[name] = f"failing: {type(exc).__name__}"
        return all(v == "ok" for v in results.values()), results


class _Livez:
    def __init__(self, health: Health) -> None:
        self.health = health

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if self.health.alive():
            resp.media = {"status": "ok"}
        else:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "reason": "main loop stalled"}


class _Ready:
    def __init__(self, health: Health) -> None:
        self.health = health

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        ok, checks = await self.health.evaluate()
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
        resp.media = {
            "status": "ok" if ok else "unavailable",
            "role": self.health.role,
            "checks": checks,
        }


class _Metrics:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest()


def _not_found(req: Any, resp: Any, ex: Any, params: Any) -> None:
    raise falcon.HTTPNotFound(description="not found")


def side_app(health: Health) -> falcon.asgi.App:
    app = falcon.asgi.App()
    app.add_route("/livez", _Livez(health))
    app.add_route("/health", _Ready(health))
    app.add_route("/metrics", _Metrics())
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(
        dumps=lambda obj: json.dumps(obj, separators=(",", ":"))
    )
    return app


class _QuietServer(uvicorn.Server):
    """uvicorn inside our loop: the daemon, not uvicorn, owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class Daemon:
    """Runs `main(daemon)` until it returns or a stop signal arrives, with the side port up.

    `main` should wait on `self.stopping` between units of work and call `health.turned()`
    each time its loop turns.
    """

    def __init__(self, role: str, settings: Settings) -> None:
        self.role = role
        self.settings = settings
        self.health = Health(role)
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._failed: BaseException | None = None

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        """A named side task; if it dies, the daemon stops and exits non-zero."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self.stopping.is_set():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s died", task.get_name(), exc_info=exc)
            self._failed = exc
        else:
            log.error("task %s ended unexpectedly", task.get_name())
            self._failed = RuntimeError(f"task {task.get_name()} ended")
        self.stopping.set()

    async def run(self, main: Callable[[Daemon], Awaitable[None]]) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        mark_build(self.role)
        port = self.settings.metrics_port or DEFAULT_PORTS[self.role]
        server = _QuietServer(
            uvicorn.Config(
                side_app(self.health),
                host=self.settings.metrics_host,
                port=port,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        self.spawn(server.serve(), "side-port")
        log.info("%s started", self.role, extra={"port": port})
        main_task = self.spawn(main(self), "main")
        await self.stopping.wait()
        grace = self.settings.shutdown_grace_seconds
        await asyncio.wait([main_task], timeout=grace)
        server.should_exit = True
        for task in list(self._tasks):
            if task is not main_task and task.get_name() != "side-port":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._failed is not None:
            return 1
        log.info("%s stopped", self.role)
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s, stopping", sig.name)
        self.stopping.set()

    async def sleep(self, seconds: float) -> bool:
        """Wait for `seconds` or the stop signal; True when stopping."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()
