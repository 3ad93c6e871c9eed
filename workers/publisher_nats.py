"""One claimed outbox batch to JetStream: pipelined publishes, every ack awaited, each row's
outcome classified (envelope.md §5.2, §6.2).

The pipeline is ours rather than nats-py's `publish_async`: in nats-py 2.16 a JetStream
error reply (a rejected message) is raised inside the reply callback and the future never
resolves, so a permanent rejection would look like an ack timeout, and a whole batch of them
like a NATS outage that never ends.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import (
    BadHeaderError,
    BadSubjectError,
    ConnectionClosedError,
    ConnectionDrainingError,
    ConnectionReconnectingError,
    MaxPayloadError,
    OutboundBufferLimitError,
)

from core.settings import Settings
from core.shard import shard_for

COMMAND_SUBJECT = re.compile(r"noetl\.commands\.[a-z0-9][a-z0-9_-]{0,63}\.[0-9]{1,19}")
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")
TRIGGER_HEADERS = frozenset({"Noetl-Event-Type", "Noetl-Execution-Id"})  # valid names
MSG_ID = re.compile(r"[!-~]{1,512}")  # printable ASCII, no blanks: it travels as a header
HEADER_OVERHEAD = 64  # status line, separators and the inbox subject, rounded up
NOT_CONNECTED = (
    ConnectionClosedError,
    ConnectionDrainingError,
    ConnectionReconnectingError,
    OutboundBufferLimitError,
)
# JetStream API replies worth another attempt later (§6.2 row-transient): timeouts, rate
# limits, server errors, "JetStream not ready"; 10077 is a store failure, 10023 no resources.
RETRYABLE_CODES = frozenset({408, 429, 500, 503})
RETRYABLE_ERR_CODES = frozenset({10023, 10077, 10008})
TOO_LARGE_ERR_CODE = 10054  # message size exceeds the stream's max_msg_size
STREAM_NOT_FOUND_ERR_CODE = 10059

TRANSIENT, TOO_LARGE, PERMANENT = "transient", "too_large", "permanent"


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """One row of `noetl.outbox_claim`."""

    outbox_id: int
    execution_id: int
    kind: str
    subject: str | None
    msg_id: str
    headers: Any
    body: str | None
    slimmed: bool
    dead: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Failure:
    row: ClaimedRow
    error: str
    cls: str  # transient, too_large or permanent (outbox_complete's classes)


@dataclass
class BatchOutcome:
    """What happened to each row of a batch.

    `held` rows failed for a transport reason (NATS unreachable, no stream answering): they
    stay in the outbox exactly as they were, attempts untouched.
    """

    acked: list[tuple[ClaimedRow, str, bool]] = field(default_factory=list)  # row, stream, dup
    failed: list[Failure] = field(default_factory=list)
    held: list[ClaimedRow] = field(default_factory=list)
    held_reason: str | None = None  # nats_unavailable, ack_timeout or stream_missing
    rejected: int = 0  # error replies from JetStream
    acked_at: float = 0.0  # wall clock, for the latency histogram

    @property
    def transport(self) -> bool:
        """Every message failed for a transport reason: roll the whole batch back."""
        return bool(self.held) and not self.acked and not self.failed


class PublishRejected(Exception):
    """A JetStream error reply to one publish."""

    def __init__(self, code: int | None, err_code: int | None, description: str) -> None:
        super().__init__(f"jetstream rejected: code={code} err_code={err_code} {description}")
        self.code, self.err_code, self.description = code, err_code, description


class NoStream(Exception):
    """No responders: no stream binds the subject (or JetStream is not up yet)."""


class AckPipeline:
    """Publishes with one reply inbox and resolves a future per message from its ack.

    One instance per concurrent batch: it assumes a single batch in flight.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._seq = 0

    async def _ensure_inbox(self) -> None:
        if not self._prefix:
            prefix = self._nc.new_inbox() + "."
            await self._nc.subscribe(prefix + "*", cb=self._on_reply)
            self._prefix = prefix

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> asyncio.Future[dict[str, Any]]:
        await self._ensure_inbox()
        self._seq += 1
        token = format(self._seq, "x")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            del self._futures[token]
            raise
        return future

    def forget(self) -> None:
        """Drop every unresolved future (after the ack deadline); late acks are ignored."""
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._futures.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(NoStream("no responders"))
            return
        data = msg.data
        if data.startswith(b'{"stream":') and b'"error"' not in data and b"duplicate" not in data:
            future.set_result({})  # the common ack, {"stream":…,"seq":…}: no JSON parse needed
            return
        try:
            reply = json.loads(data)
        except ValueError:
            future.set_exception(PublishRejected(None, None, f"unreadable ack {msg.data[:200]!r}"))
            return
        error: Any = reply.get("error") if isinstance(reply, dict) else {"description": "bad ack"}
        if error:
            if not isinstance(error, dict):
                error = {"description": str(error)}
            future.set_exception(
                PublishRejected(
                    _int_or_none(error.get("code")),
                    _int_or_none(error.get("err_code")),
                    str(error.get("description", "")),
                )
            )
        else:
            future.set_result(reply)


class BatchPublisher:
    """Turns claimed rows into messages (§5.2), publishes them in order and classifies."""

    def __init__(self, nc: NATS, settings: Settings) -> None:
        self.nc = nc
        self.events_stream = settings.events_stream
        self.commands_stream = settings.commands_stream
        self.shard_count = settings.event_shard_count
        self.ack_timeout = settings.publisher_ack_timeout_seconds

    def message(self, row: ClaimedRow) -> tuple[str, str, bytes, dict[str, str]] | Failure:
        """(stream, subject, body, headers) of a row, or why it can never be sent."""
        if row.kind == "event":
            stream = self.events_stream
            shard = shard_for(row.execution_id, self.shard_count)
            subject = f"noetl.events.{shard}.{row.execution_id}"
            event_type = None
        elif row.kind == "command":
            stream = self.commands_stream
            subject = row.subject or ""
            if not COMMAND_SUBJECT.fullmatch(subject):
                return Failure(row, f"invalid command subject {subject[:200]!r}", PERMANENT)
            event_type = "command.issued"
        else:
            return Failure(row, f"unknown outbox kind {row.kind[:64]!r}", PERMANENT)
        if row.body is None:
            return Failure(row, "outbox row has no body", PERMANENT)
        if not MSG_ID.fullmatch(row.msg_id):
            return Failure(row, f"invalid msg_id {row.msg_id[:200]!r}", PERMANENT)
        extra = row.headers if row.headers is not None else {}
        if not isinstance(extra, dict):
            return Failure(row, "headers must be a JSON object", PERMANENT)
        headers: dict[str, str] = {}
        for name, value in extra.items():
            # Nats-* headers steer JetStream itself (expected stream, sequence, TTL): a row
            # must not carry them; the publisher sets Nats-Msg-Id alone.
            if (
                name not in TRIGGER_HEADERS
                and (not HEADER_NAME.fullmatch(name) or name.lower().startswith("nats-"))
                or not isinstance(value, str)
                or "\r" in value
                or "\n" in value
            ):
                return Failure(row, f"invalid header {name[:100]!r}", PERMANENT)
            headers[name] = value
        headers["Nats-Msg-Id"] = row.msg_id
        headers["Noetl-Execution-Id"] = str(row.execution_id)
        if event_type is not None:
            headers["Noetl-Event-Type"] = event_type
        elif "Noetl-Event-Type" not in headers:
            return Failure(row, "event row without a Noetl-Event-Type header", PERMANENT)
        body = row.body.encode()
        size = len(body) + HEADER_OVERHEAD + sum(len(k) + len(v) + 4 for k, v in headers.items())
        if size > self.nc.max_payload:
            return Failure(
                row, f"message of {size} bytes over max_payload {self.nc.max_payload}", TOO_LARGE
            )
        return stream, subject, body, headers

    async def publish(self, pipeline: AckPipeline, rows: list[ClaimedRow]) -> BatchOutcome:
        outcome = BatchOutcome()
        reconnects = self.nc.stats["reconnects"]
        sent: list[tuple[ClaimedRow, str, asyncio.Future[dict[str, Any]]]] = []
        for row in rows:
            if row.dead:
                continue
            if outcome.held_reason is not None:
                outcome.held.append(row)  # the connection broke: keep the rest in order
                continue
            prepared = self.message(row)
            if isinstance(prepared, Failure):
                outcome.failed.append(prepared)
                continue
            stream, subject, body, headers = prepared
            try:
                future = await pipeline.publish(subject, body, headers)
            except NOT_CONNECTED:
                outcome.held.append(row)
                outcome.held_reason = "nats_unavailable"
                continue
            except MaxPayloadError:
                outcome.failed.append(Failure(row, "over the server's max_payload", TOO_LARGE))
                continue
            except (BadSubjectError, BadHeaderError) as exc:
                outcome.failed.append(Failure(row, f"rejected by the client: {exc}", PERMANENT))
                continue
            sent.append((row, stream, future))

        if sent:
            await asyncio.wait([f for _, _, f in sent], timeout=self.ack_timeout)
        pipeline.forget()
        outcome.acked_at = time.time()
        disconnected = not self.nc.is_connected or self.nc.stats["reconnects"] != reconnects
        timed_out: list[ClaimedRow] = []
        for row, stream, future in sent:
            if future.cancelled():
                if disconnected:
                    self._hold(outcome, row, "nats_unavailable")
                else:
                    timed_out.append(row)
                continue
            error = future.exception()
            if error is None:
                outcome.acked.append((row, stream, bool(future.result().get("duplicate"))))
            elif isinstance(error, NoStream):
                self._hold(outcome, row, "stream_missing")
            elif isinstance(error, PublishRejected):
                outcome.rejected += 1
                cls = _rejection_class(error)
                if cls is None:
                    self._hold(outcome, row, "stream_missing")
                else:
                    outcome.failed.append(Failure(row, str(error), cls))
            else:
                outcome.failed.append(Failure(row, f"{type(error).__name__}: {error}", TRANSIENT))
        if timed_out:
            if outcome.acked or outcome.failed:
                outcome.failed.extend(Failure(r, "ack timeout", TRANSIENT) for r in timed_out)
            else:
                for row in timed_out:
                    self._hold(outcome, row, "ack_timeout")
        return outcome

    @staticmethod
    def _hold(outcome: BatchOutcome, row: ClaimedRow, reason: str) -> None:
        outcome.held.append(row)
        # stream_missing wins: it is the one that asks for a stream re-check
        if outcome.held_reason is None or reason == "stream_missing":
            outcome.held_reason = reason


def _rejection_class(exc: PublishRejected) -> str | None:
    """outbox_complete class of a JetStream error reply; None for "no such stream"."""
    if exc.err_code == STREAM_NOT_FOUND_ERR_CODE:
        return None
    if exc.err_code == TOO_LARGE_ERR_CODE:
        return TOO_LARGE
    if exc.code is None and exc.err_code is None:
        return TRANSIENT  # an ack we could not read: the message may well be stored
    if exc.code in RETRYABLE_CODES or exc.err_code in RETRYABLE_ERR_CODES:
        return TRANSIENT
    return PERMANENT


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
