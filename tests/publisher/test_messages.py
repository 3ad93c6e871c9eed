"""Rows to messages (envelope.md §5.2) and the failure classes of §6.2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from core.settings import Settings
from core.shard import shard_for
from workers.publisher_nats import (
    PERMANENT,
    TOO_LARGE,
    TRANSIENT,
    BatchPublisher,
    ClaimedRow,
    Failure,
    PublishRejected,
    _rejection_class,
)

EXECUTION = 291549803970564103


@pytest.fixture
async def publisher(nats_url: str) -> AsyncIterator[BatchPublisher]:
    nc: NATS = await nats.connect(nats_url)
    try:
        yield BatchPublisher(nc, Settings())
    finally:
        await nc.close()


def row(**changes: Any) -> ClaimedRow:
    base: dict[str, Any] = {
        "outbox_id": 1,
        "execution_id": EXECUTION,
        "kind": "event",
        "subject": None,
        "msg_id": "event:42",
        "headers": {"Noetl-Event-Type": "call.done", "Noetl-Execution-Id": str(EXECUTION)},
        "body": '{"event_id": "42"}',
        "slimmed": False,
        "dead": False,
        "created_at": datetime.now(UTC),
    }
    base.update(changes)
    return ClaimedRow(**base)


async def test_an_event_goes_to_its_shard_subject_with_the_headers(publisher) -> None:
    stream, subject, body, headers = publisher.message(row())
    assert stream == "NOETL_EVENTS"
    assert (
        subject
        == f"noetl.events.{shard_for(EXECUTION, 16)}.{EXECUTION}"
        == (f"noetl.events.1.{EXECUTION}")
    )
    assert body == b'{"event_id": "42"}'
    assert headers == {
        "Nats-Msg-Id": "event:42",
        "Noetl-Event-Type": "call.done",
        "Noetl-Execution-Id": str(EXECUTION),
    }


async def test_a_command_keeps_its_subject(publisher) -> None:
    stream, subject, _, headers = publisher.message(
        row(kind="command", subject=f"noetl.commands.gpu-1.{EXECUTION}", msg_id="command:42:2")
    )
    assert stream == "NOETL_COMMANDS"
    assert subject == f"noetl.commands.gpu-1.{EXECUTION}"
    assert headers["Noetl-Event-Type"] == "command.issued"
    assert headers["Nats-Msg-Id"] == "command:42:2"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"kind": "command", "subject": "noetl.commands.Bad Pool.1"}, "invalid command subject"),
        ({"kind": "command", "subject": "noetl.commands.*.1"}, "invalid command subject"),
        ({"kind": "command", "subject": "noetl.events.1.1"}, "invalid command subject"),
        ({"kind": "command", "subject": None}, "invalid command subject"),
        ({"kind": "other"}, "unknown outbox kind"),
        ({"body": None}, "no body"),
        ({"msg_id": "event 42"}, "invalid msg_id"),
        ({"msg_id": ""}, "invalid msg_id"),
        ({"headers": ["x"]}, "headers must be a JSON object"),
        ({"headers": {"Bad Name": "x", "Noetl-Event-Type": "x"}}, "invalid header"),
        ({"headers": {"X-Line": "a\r\nPUB x", "Noetl-Event-Type": "x"}}, "invalid header"),
        ({"headers": {"X-Number": 5, "Noetl-Event-Type": "x"}}, "invalid header"),
        ({"headers": {"Nats-Expected-Stream": "OTHER"}}, "invalid header"),
        ({"headers": {}}, "without a Noetl-Event-Type"),
    ],
)
async def test_rows_that_can_never_be_sent_are_permanent(publisher, changes, reason) -> None:
    failure = publisher.message(row(**changes))
    assert isinstance(failure, Failure)
    assert failure.cls == PERMANENT and reason in failure.error


async def test_a_body_over_max_payload_is_too_large(publisher) -> None:
    failure = publisher.message(row(body="x" * publisher.nc.max_payload))
    assert isinstance(failure, Failure) and failure.cls == TOO_LARGE


@pytest.mark.parametrize(
    ("code", "err_code", "expected"),
    [
        (400, 10054, TOO_LARGE),  # message size exceeds the stream's maximum
        (503, 10077, TRANSIENT),  # store failed, e.g. a per-subject limit
        (500, None, TRANSIENT),
        (429, None, TRANSIENT),
        (400, 10109, PERMANENT),  # sealed stream
        (400, 10060, PERMANENT),  # expected stream does not match
        (404, 10059, None),  # stream not found: a transport failure, never a dead letter
        (None, None, TRANSIENT),  # an ack that could not be read
    ],
)
def test_jetstream_rejections_are_classified(code, err_code, expected) -> None:
    assert _rejection_class(PublishRejected(code, err_code, "x")) == expected
