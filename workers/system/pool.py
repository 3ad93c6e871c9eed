"""The system worker pool daemon (`noetl-server --mode=system`, worker-protocol.md).

For each pool of NOETL_SYSTEM_POOL one durable pull consumer on NOETL_COMMANDS feeds one fetch
loop. A notification is claimed over HTTP, acked after a 200 claim, run by `run_tool`, and
reported as events in the order of §7. At most NOETL_SYSTEM_CONCURRENCY commands hold a slot at
once, over every pool; a playbook tool waiting for its child gives its slot back meanwhile.

Shutdown (§10): stop fetching and nak what is not claimed yet; let running commands finish until
3 s before the grace period ends; then cancel the rest (their python children are killed and no
events are posted); deregister, so the server hands those commands on at once; close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from core.ids import InvalidId, new_id, parse_id
from core.metrics import package_version
from core.settings import Settings
from core.timefmt import rfc3339, utcnow
from workers.connections import connect_nats
from workers.daemon import Daemon
from workers.system import consumer
from workers.system import metrics as m
from workers.system.credentials import api_resolver
from workers.system.run import ToolOutcome, ToolServices, run_tool
from workers.system.server_api import GAVE_UP, Claim, ServerApi
from workers.system.tools import launch

log = logging.getLogger(__name__)

STREAM_RETRY_SECONDS = 5.0
CONSUMER_CHECK_SECONDS = 10.0
REGISTER_RETRY_SECONDS = 1.0
SERVER_HEALTH_WINDOW = 30.0
SHUTDOWN_MARGIN_SECONDS = 3.0
LOOPS_MARGIN_SECONDS = 2.0  # deregistering and closing fit in what is left of the grace
FETCH_ERROR_BACKOFF = 1.0


class SlotsClosed(Exception):
    """The pool is stopping: no new command may take a slot."""


class Slots:
    """NOETL_SYSTEM_CONCURRENCY slots shared by every pool.

    `held` counts commands running a tool, `queued` messages fetched and waiting for a slot, so
    the fetch loops ask JetStream only for what can start (the rest stays with other replicas).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.held = 0
        self.queued = 0
        self.closed = False
        self._changed = asyncio.Event()

    @property
    def free(self) -> int:
        return self.capacity - self.held - self.queued

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()  # every current waiter wakes once

    async def _wait(self, ready: Any) -> None:
        while not ready():
            await self._changed.wait()

    async def wait_free(self) -> None:
        await self._wait(lambda: self.free > 0 or self.closed)

    async def take_queued(self) -> None:
        """A fetched message's turn: from queued to held; SlotsClosed when stopping."""
        try:
            await self._wait(lambda: self.held < self.capacity or self.closed)
        finally:
            self.queued -= 1
        if self.closed:
            self._notify()
            raise SlotsClosed
        self.held += 1

    async def take_back(self) -> None:
        """A waiting tool resumes; while stopping it gets its slot at once (no new work)."""
        await self._wait(lambda: self.held < self.capacity or self.closed)
        self.held += 1

    def release(self) -> None:
        self.held -= 1
        self._notify()

    def unqueue(self) -> None:
        """A fetched message left without taking a slot."""
        self.queued -= 1
        self._notify()

    def close(self) -> None:
        self.closed = True
        self._notify()


def make_worker_id(settings: Settings) -> str:
    return settings.worker_name or f"{socket.gethostname()}-{secrets.token_hex(4)}"


def registration(settings: Settings, worker_id: str) -> dict[str, Any]:
    return {
        "name": worker_id,
        "component_type": "worker_pool",
        "runtime": {
            "kind": "python",
            "pools": settings.system_pools,
            "version": package_version(),
            "concurrency": settings.system_concurrency,
        },
        "status": "ready",
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "capacity": settings.system_concurrency,
        "labels": {"pool_name": settings.system_pool},
    }


class Command:
    """One claimed command: its identity, from the claim body (worker-protocol.md §5)."""

    def __init__(self, body: dict[str, Any], pool: str, worker_id: str) -> None:
        meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
        assert isinstance(meta, dict)
        self.body = body
        self.pool = pool
        self.worker_id = worker_id
        self.execution_id = str(body.get("execution_id") or meta.get("execution_id") or "")
        self.command_id = str(meta.get("command_id") or "")
        self.step = str(body.get("node_name") or meta.get("step") or body.get("node_id") or "")
        self.tool_kind = str(body.get("action") or meta.get("tool_kind") or "")
        attempts = meta.get("attempts")
        self.attempts = attempts if isinstance(attempts, int) and attempts > 0 else 1

    def event(
        self, event_type: str, status: str, context: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        """One event body (§7); its `event_id` is minted here and reused on every retry."""
        return {
            "execution_id": self.execution_id,
            "event_id": str(new_id()),
            "event_type": event_type,
            "step": self.step,
            "status": status,
            "worker_id": self.worker_id,
            "created_at": rfc3339(utcnow()),
            "meta": {"attempts": self.attempts},
            "context": {"command_id": self.command_id, **context},
            **extra,
        }

    def terminal_events(self, outcome: ToolOutcome) -> list[dict[str, Any]]:
        result = outcome.result()
        if outcome.ok:
            return [
                self.event(
                    "call.done",
                    "COMPLETED",
                    {"call_index": 0, "result": result},
                    duration=outcome.duration_ms,
                ),
                self.event("command.completed", "COMPLETED", {"status": "success"}),
            ]
        error = outcome.error or {"kind": "error", "message": "tool failed", "retryable": False}
        message = str(error.get("message") or error.get("kind") or "tool failed")
        return [
            self.event(
                "call.error",
                "FAILED",
                {"call_index": 0, "error": error, "result": result},
                error=message,
                duration=outcome.duration_ms,
            ),
            self.event("command.failed", "FAILED", {"error": error}, error=message),
        ]

    def log_fields(self, **more: Any) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "command_id": self.command_id,
            "step": self.step,
            "pool": self.pool,
            **more,
        }


class SystemPool:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.settings = daemon.settings
        self.pools = self.settings.system_pools
        self.worker_id = make_worker_id(self.settings)
        self.registration = registration(self.settings, self.worker_id)
        self.slots = Slots(self.settings.system_concurrency)
        self.active: set[str] = set()  # commands (or events) being claimed or run here
        self.handlers: set[asyncio.Task] = set()  # notifications being handled or run
        self.subs: list[JetStreamContext.PullSubscription] = []
        self.registered = False
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.stream_ok = False
        self.consumers_ok: dict[str, bool] = dict.fromkeys(self.pools, False)
        self.client = ServerApi.make_client(self.settings)
        self.api = ServerApi(self.settings, self.worker_id, self.client)
        # tools' own clients: the http tool's pool, and the server for credentials and child
        # playbooks (waiting playbook tools hold a stream each, so no connection cap)
        self.tool_http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20)
        )
        self.tool_api = httpx.AsyncClient(
            base_url=self.settings.server_url.rstrip("/"),
            headers=ServerApi.auth_headers(self.settings),
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        )

    # --- life -----------------------------------------------------------------------------

    async def run(self) -> None:
        m.init_labels(self.pools)
        checks = self.daemon.health.checks
        checks["nats"] = lambda: self.nc is not None and self.nc.is_connected
        checks["stream"] = lambda: self.stream_ok
        checks["consumers"] = lambda: all(self.consumers_ok.values())
        # a registry heartbeat answers at least every NOETL_WORKER_HEARTBEAT_SECONDS
        window = max(SERVER_HEALTH_WINDOW, 2 * self.settings.worker_heartbeat_seconds)
        checks["server"] = lambda: self.api.healthy(window)
        log.info(
            "system pool starting",
            extra={"worker_id": self.worker_id, "pools": self.pools},
        )
        loops: list[asyncio.Task] = []
        try:
            if await self._start():
                self.daemon.spawn(self._registry_heartbeats(), "system-heartbeat")
                self.daemon.spawn(self._watch_consumers(), "system-consumers")
                for pool in self.pools:
                    loops.append(self.daemon.spawn(self._fetch_loop(pool), f"fetch-{pool}"))
                while not await self.daemon.sleep(1.0):
                    self.daemon.health.turned()
        finally:
            await self._shutdown(loops)

    async def _start(self) -> bool:
        """NATS, the stream, the consumers and the registration; False when stopped first."""
        while True:
            try:
                self.nc = await connect_nats(self.settings, f"noetl-system-{self.worker_id}")
                break
            except Exception as exc:  # NATS not up yet: health says so; try again
                log.warning("nats connect failed", extra={"problem": repr(exc)})
                if await self.daemon.sleep(STREAM_RETRY_SECONDS):
                    return False
        self.js = self.nc.jetstream()
        while not await self._consumers_ready():
            self.daemon.health.turned()
            if await self.daemon.sleep(STREAM_RETRY_SECONDS):
                return False
        # registered before the first fetch (§8), so no claim is made by an unknown worker
        while not await self.api.register(self.registration):
            self.daemon.health.turned()
            if await self.daemon.sleep(REGISTER_RETRY_SECONDS):
                return False
        self.registered = True
        log.info("system pool ready", extra={"worker_id": self.worker_id})
        return True

    async def _consumers_ready(self) -> bool:
        """The stream exists (the publisher creates it) and every pool has its consumer."""
        assert self.js is not None
        try:
            if not await consumer.stream_exists(self.js, self.settings.commands_stream):
                log.warning("stream_missing", extra={"stream": self.settings.commands_stream})
                return False
            self.stream_ok = True
            for pool in self.pools:
                await consumer.ensure_consumer(self.js, self.settings, pool)
                self.consumers_ok[pool] = True
        except Exception as exc:  # JetStream not answering yet: health says so; try again
            log.warning("jetstream not ready", extra={"problem": repr(exc)})
            return False
        return True

    async def _shutdown(self, loops: list[asyncio.Task]) -> None:
        stop_at = time.monotonic()
        deadline = stop_at + max(
            0.0, self.settings.shutdown_grace_seconds - SHUTDOWN_MARGIN_SECONDS
        )
        self.slots.close()
        # Running commands finish until the deadline, 3 s before the grace period ends; the
        # rest are cancelled (their python children killed, no events posted).
        if self.handlers:
            log.info("finishing running commands", extra={"count": len(self.handlers)})
            await asyncio.wait(set(self.handlers), timeout=max(0.0, deadline - time.monotonic()))
        leftover = [t for t in self.handlers if not t.done()]
        for task in leftover:
            task.cancel()
        if leftover:
            log.warning(
                "cancelled unfinished commands at the deadline", extra={"count": len(leftover)}
            )
            await asyncio.gather(*leftover, return_exceptions=True)
        # The fetch loops end when their long poll expires (at most FETCH_SECONDS), naking
        # what it brought. Then the subscriptions go: JetStream skips a pull request whose
        # inbox has no subscriber, so an open one cannot take the notifications the server
        # sends when this worker deregisters.
        loops_deadline = stop_at + max(
            0.0, self.settings.shutdown_grace_seconds - LOOPS_MARGIN_SECONDS
        )
        if loops:
            await asyncio.wait(loops, timeout=max(0.0, loops_deadline - time.monotonic()))
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        await self._unsubscribe()
        if self.registered:
            await self.api.deregister()  # the server re-notifies what was cancelled at once
        launch.shutdown()
        await self.tool_http.aclose()
        await self.tool_api.aclose()
        await self.client.aclose()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
        log.info("system pool stopped", extra={"seconds": round(time.monotonic() - stop_at, 3)})

    async def _unsubscribe(self) -> None:
        for sub in self.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.subs.clear()
        if self.nc is not None and self.nc.is_connected:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=1)  # the unsubscriptions, acks and naks are out

    async def _registry_heartbeats(self) -> None:
        while not await self.daemon.sleep(self.settings.worker_heartbeat_seconds):
            await self.api.heartbeat(self.registration)

    async def _watch_consumers(self) -> None:
        """Recreate a consumer that vanished (a NATS restart) and refresh the pending gauge."""
        assert self.js is not None
        while not await self.daemon.sleep(CONSUMER_CHECK_SECONDS):
            for pool in self.pools:
                await self._check_consumer(pool)

    async def _check_consumer(self, pool: str) -> None:
        assert self.js is not None
        try:
            pending = await consumer.consumer_pending(self.js, self.settings, pool)
            if pending is None:
                self.consumers_ok[pool] = False
                log.warning("consumer gone, recreating", extra={"pool": pool})
                if not await consumer.stream_exists(self.js, self.settings.commands_stream):
                    self.stream_ok = False
                    return
                self.stream_ok = True
                await consumer.ensure_consumer(self.js, self.settings, pool)
                pending = 0
            self.consumers_ok[pool] = True
            m.CONSUMER_PENDING.labels(pool=pool).set(pending)
        except Exception as exc:  # NATS down or slow: reported by health, retried next round
            self.consumers_ok[pool] = False
            log.warning("consumer check failed", extra={"pool": pool, "problem": repr(exc)})

    # --- fetching -------------------------------------------------------------------------

    async def _fetch_loop(self, pool: str) -> None:
        assert self.js is not None
        sub = await consumer.bind(self.js, self.settings, pool)
        self.subs.append(sub)
        while not self.daemon.stopping.is_set():
            self.daemon.health.turned()
            await self.slots.wait_free()
            if self.slots.closed:
                break
            try:
                msgs = await sub.fetch(max(1, self.slots.free), timeout=consumer.FETCH_SECONDS)
            except TimeoutError:
                continue
            except Exception as exc:  # consumer gone, NATS reconnecting: check and retry
                log.warning("fetch failed", extra={"pool": pool, "problem": repr(exc)})
                await self._check_consumer(pool)
                if await self.daemon.sleep(FETCH_ERROR_BACKOFF):
                    break
                continue
            for msg in msgs:
                if self.slots.closed:
                    await _settle(msg.nak(delay=0))
                    continue
                self.slots.queued += 1
                task = asyncio.create_task(self._handle(pool, msg))
                self.handlers.add(task)
                task.add_done_callback(self.handlers.discard)

    # --- one notification (§4) ------------------------------------------------------------

    async def _handle(self, pool: str, msg: Msg) -> None:
        queued = True  # the fetch loop counted this message as waiting for a slot
        try:
            note = _parse(msg)
            if note is None:
                m.COMMANDS.labels(pool=pool, outcome="error").inc()
                log.error("unreadable notification", extra={"pool": pool, "data": msg.data[:500]})
                await _settle(msg.term())
                return
            event_id, execution_id, payload = note
            target = payload.get("pool")
            if isinstance(target, str) and target not in self.pools:
                log.warning(
                    "notification for another pool",
                    extra={"pool": pool, "target_pool": target, "execution_id": str(execution_id)},
                )
                await _settle(msg.ack())
                return
            key = str(payload.get("command_id") or f"event:{event_id}")
            if key in self.active:
                await _settle(msg.ack())  # a duplicate of a command this worker is on
                return
            self.active.add(key)
            try:
                queued = False
                try:
                    await self.slots.take_queued()
                except SlotsClosed:
                    await _settle(msg.nak(delay=0))
                    return
                try:
                    await self._claim_and_run(pool, msg, event_id, execution_id)
                finally:
                    self.slots.release()
            finally:
                self.active.discard(key)
        finally:
            if queued:
                self.slots.unqueue()

    async def _claim_and_run(self, pool: str, msg: Msg, event_id: int, execution_id: int) -> None:
        """Holding a slot: claim, then ack and run, or settle the message as §4 says."""
        started = time.monotonic()
        claim = await self.api.claim(event_id, pool, _deliveries(msg))
        if claim.action != "run":
            await self._settle_refusal(pool, msg, claim, event_id, execution_id)
            return
        assert claim.body is not None
        await _settle(msg.ack())  # from here the claim, not the message, protects the command
        await self._run(Command(claim.body, pool, self.worker_id), started)

    async def _settle_refusal(
        self, pool: str, msg: Msg, claim: Claim, event_id: int, execution_id: int
    ) -> None:
        fields = {"pool": pool, "execution_id": str(execution_id), "event_id": str(event_id)}
        if claim.action == "skip":
            outcome = "claim_conflict" if claim.code == "active_claim" else "already_terminal"
            m.COMMANDS.labels(pool=pool, outcome=outcome).inc()
            await _settle(msg.ack())
        elif claim.action == "nak":
            log.info(
                "claim deferred", extra={**fields, "reason": claim.reason, "delay": claim.delay}
            )
            await _settle(msg.nak(delay=claim.delay))
        else:
            m.COMMANDS.labels(pool=pool, outcome="error").inc()
            level = logging.WARNING if claim.reason == "command not found" else logging.ERROR
            log.log(level, "claim refused for good", extra={**fields, "reason": claim.reason})
            await _settle(msg.term())

    # --- one command (§7) -----------------------------------------------------------------

    async def _run(self, command: Command, started: float) -> None:
        pool = command.pool
        m.INFLIGHT.labels(pool=pool).inc()
        try:
            # command.started is sent before the tool runs; its answer is awaited before the
            # next event is sent (§7), not before the tool starts: one round trip less per step
            announced = asyncio.create_task(
                self.api.post_event(command.event("command.started", "STARTED", {}), pool)
            )
            await asyncio.sleep(0)  # let it write the request first
            heartbeats = asyncio.create_task(self._command_heartbeats(command, announced))
            try:
                outcome = await run_tool(command.body, self._services(command))
            except BaseException:
                announced.cancel()  # the shutdown deadline: no events for this command
                raise
            finally:
                heartbeats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeats
            if await announced == GAVE_UP:
                # the server is out of reach: the lease and the reaper take the command over
                m.COMMANDS.labels(pool=pool, outcome="error").inc()
                return
            for body in command.terminal_events(outcome):
                # a refused event is logged and the next one still goes (command.completed or
                # .failed then ends the command); after giving up, nothing may overtake it
                if await self.api.post_event(body, pool) == GAVE_UP:
                    break
            m.COMMANDS.labels(pool=pool, outcome="completed" if outcome.ok else "failed").inc()
            if not outcome.ok:
                log.info(
                    "command failed",
                    extra=command.log_fields(error_kind=(outcome.error or {}).get("kind")),
                )
        finally:
            m.INFLIGHT.labels(pool=pool).dec()
            m.COMMAND_DURATION.labels(pool=pool, tool_kind=command.tool_kind or "unknown").observe(
                time.monotonic() - started
            )

    async def _command_heartbeats(self, command: Command, announced: asyncio.Task) -> None:
        interval = max(0.1, self.settings.command_heartbeat_seconds)
        await asyncio.shield(announced)  # no heartbeat overtakes command.started
        while True:
            await asyncio.sleep(interval)
            await self.api.post_heartbeat(
                command.event("command.heartbeat", "RUNNING", {}), command.pool
            )

    def _services(self, command: Command) -> ToolServices:
        return ToolServices(
            http=self.tool_http,
            resolve=api_resolver(self.tool_api, command.execution_id),
            settings=self.settings,
            api=self.tool_api,
            waiting=self._waiting,
        )

    @contextlib.asynccontextmanager
    async def _waiting(self) -> AsyncIterator[None]:
        """A tool that only waits (a playbook on its child) gives its slot back meanwhile."""
        self.slots.release()
        try:
            yield
        finally:
            await self.slots.take_back()


def _parse(msg: Msg) -> tuple[int, int, dict[str, Any]] | None:
    try:
        payload = json.loads(msg.data)
        if not isinstance(payload, dict):
            return None
        return parse_id(payload["event_id"]), parse_id(payload["execution_id"]), payload
    except (ValueError, KeyError, InvalidId):
        return None


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered or 1)
    except Exception:  # not a JetStream message (tests publish plain ones)
        return 1


async def _settle(ack: Any) -> None:
    """An ack, nak or term; a failure only means JetStream redelivers after ack_wait."""
    try:
        await ack
    except Exception as exc:
        log.warning("could not settle a message", extra={"problem": repr(exc)})


async def main(daemon: Daemon) -> None:
    await SystemPool(daemon).run()
