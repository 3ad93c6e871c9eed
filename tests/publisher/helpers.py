"""Helpers for the publisher tests: bulk events, the publisher process or an in-process
relay, and a consumer that reads a whole stream back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from core.embedded import free_port
from core.settings import Settings
from workers.daemon import Daemon
from workers.publisher import OutboxRelay


def new_executions(conn: psycopg.Connection, count: int) -> list[int]:
    """Execution ids minted by the database (current month, so a real event partition)."""
    rows = conn.execute(
        "SELECT noetl.snowflake_id() AS id FROM generate_series(1, %s)", (count,)
    ).fetchall()
    return [r["id"] if isinstance(r, dict) else r[0] for r in rows]


def insert_events(
    conn: psycopg.Connection, executions: list[int], count: int, pad: int = 200
) -> int:
    """`count` events spread round-robin over `executions` in one statement: the outbox
    trigger turns them into outbox rows in event id order, as append_events would."""
    conn.execute(
        """
        INSERT INTO noetl.event (event_id, execution_id, catalog_id, event_type, status,
                                 context, meta)
        SELECT b.base + g, (%(execs)s::bigint[])[1 + g %% cardinality(%(execs)s::bigint[])],
               1, 'test.event', 'RUNNING', jsonb_build_object('pad', repeat('x', %(pad)s)),
               jsonb_build_object('seq', g)
          FROM generate_series(0, %(n)s - 1) AS g, (SELECT noetl.snowflake_id() AS base) b
         ORDER BY g
        """,
        {"execs": executions, "n": count, "pad": pad},
    )
    return count


def outbox_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) AS n FROM noetl.event_outbox").fetchone()
    assert row is not None
    return int(row["n"] if isinstance(row, dict) else row[0])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


async def wait_until_async(
    predicate: Callable[[], Awaitable[bool] | bool], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = predicate()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class StreamMessage:
    subject: str
    msg_id: str
    headers: dict[str, str]
    body: dict[str, Any]


async def read_stream(nats_url: str, stream: str, timeout: float = 60) -> list[StreamMessage]:
    """Every message of `stream`, in stream order, through an ephemeral pull consumer."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        out: list[StreamMessage] = []
        if total == 0:
            return out
        subject = (await js.stream_info(stream)).config.subjects[0]
        sub = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=30.0,
            ),
        )
        deadline = time.monotonic() + timeout
        while len(out) < total and time.monotonic() < deadline:
            with contextlib.suppress(nats.errors.TimeoutError):
                for msg in await sub.fetch(batch=2000, timeout=2):
                    headers = dict(msg.headers or {})
                    out.append(
                        StreamMessage(
                            msg.subject,
                            headers.get("Nats-Msg-Id", ""),
                            headers,
                            json.loads(msg.data),
                        )
                    )
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def report(name: str, events_in: int, messages: list[StreamMessage]) -> tuple[int, int]:
    """Print events in / unique events out / duplicates; return (unique, duplicates)."""
    unique = len({m.msg_id for m in messages})
    duplicates = len(messages) - unique
    print(f"{name}: events in {events_in} / unique events out {unique} / duplicates {duplicates}")
    return unique, duplicates


def assert_execution_order(messages: list[StreamMessage]) -> None:
    """Per execution, event ids arrive in append (id) order."""
    last: dict[str, int] = {}
    for m in messages:
        execution_id, event_id = m.body["execution_id"], int(m.body["event_id"])
        assert event_id > last.get(execution_id, 0), f"out of order in execution {execution_id}"
        last[execution_id] = event_id


class PublisherProcess:
    """`noetl-server --mode=publisher` as a child process, logs to a file."""

    def __init__(self, db_url: str, nats_url: str, log_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "NOETL_DATABASE_URL": db_url,
            "NOETL_NATS_URL": nats_url,
            "NOETL_METRICS_HOST": "127.0.0.1",
            "NOETL_METRICS_PORT": str(self.port),
            "NOETL_LOG_FORMAT": "json",
            **env,
        }
        self.log_path = log_dir / f"publisher-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> PublisherProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "--mode=publisher"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            response = httpx.get(self.url("/health"), timeout=2.0)
        except httpx.HTTPError:
            return 0, {}
        return response.status_code, response.json()

    def wait_healthy(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"publisher exited with {self.proc.returncode}:\n{self.log()}")
            return self.health()[0] == 200

        wait_until(ready, timeout, "publisher /health 200")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` on /metrics whose labels include `labels`."""
        text = httpx.get(self.url("/metrics"), timeout=2.0).text
        wanted = {f'{k}="{v}"' for k, v in labels.items()}
        total = 0.0
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            metric, _, label_text = sample.partition("{")
            if metric == name and wanted <= set(label_text.rstrip("}").split(",")):
                total += float(value)
        return total

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds to exit)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]


@contextlib.asynccontextmanager
async def running_relay(db_url: str, nats_url: str, **env: str) -> AsyncIterator[OutboxRelay]:
    """The publisher's relay in this event loop (no side port), until the block ends."""
    settings = Settings.from_env({"NOETL_DATABASE_URL": db_url, "NOETL_NATS_URL": nats_url, **env})
    daemon = Daemon("publisher", settings)
    relay = OutboxRelay(daemon)
    task = asyncio.ensure_future(relay.run())
    try:
        await wait_until_async(
            lambda: task.done() or (relay.streams_ok and relay.listen_ok), 30, "relay ready"
        )
        if task.done():
            task.result()
        yield relay
    finally:
        daemon.stopping.set()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            await relay.close()
