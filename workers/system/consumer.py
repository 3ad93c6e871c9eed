"""One durable pull consumer per pool on NOETL_COMMANDS (envelope.md §5.4, worker-protocol.md §3).

The system pool creates the consumer when absent, updates filter, ack wait, max deliver and max
ack pending when they differ, and recreates it when it is gone (a NATS restart wipes an
in-memory one). The stream itself belongs to the publisher: a missing stream is only reported.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from core.settings import Settings

log = logging.getLogger(__name__)

FETCH_SECONDS = 5.0  # the long poll of one fetch


def durable_name(pool: str) -> str:
    return f"noetl_{pool}_pool"


def consumer_config(settings: Settings, pool: str) -> ConsumerConfig:
    name = durable_name(pool)
    return ConsumerConfig(
        name=name,
        durable_name=name,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=float(settings.system_ack_wait_seconds),
        max_deliver=settings.system_max_deliver,
        max_ack_pending=4 * settings.system_concurrency,
        filter_subject=f"noetl.commands.{pool}.>",
    )


async def stream_exists(js: JetStreamContext, stream: str) -> bool:
    try:
        await js.stream_info(stream)
    except NotFoundError:
        return False
    return True


def _differences(actual: ConsumerConfig, wanted: ConsumerConfig) -> list[str]:
    fields = []
    if (actual.filter_subject or None) != wanted.filter_subject or actual.filter_subjects:
        fields.append("filter_subject")
    if actual.ack_wait is None or abs(actual.ack_wait - (wanted.ack_wait or 0)) > 1e-3:
        fields.append("ack_wait")
    if actual.max_ack_pending != wanted.max_ack_pending:
        fields.append("max_ack_pending")
    if actual.max_deliver != wanted.max_deliver:
        fields.append("max_deliver")
    return fields


async def ensure_consumer(js: JetStreamContext, settings: Settings, pool: str) -> None:
    """Create the pool's consumer, or bring an existing one to the configuration."""
    stream = settings.commands_stream
    wanted = consumer_config(settings, pool)
    try:
        info = await js.consumer_info(stream, durable_name(pool))
    except NotFoundError:
        await js.add_consumer(stream, wanted)
        log.info("consumer created", extra={"pool": pool, "consumer": durable_name(pool)})
        return
    actual = info.config
    if actual.deliver_policy != wanted.deliver_policy:
        # fixed at creation: only a warning (envelope.md §5.4)
        log.warning(
            "consumer deliver_policy differs and cannot change",
            extra={"pool": pool, "actual": str(actual.deliver_policy)},
        )
    changed = _differences(actual, wanted)
    if changed:
        # a create request with the same name and a new configuration is an update
        await js.add_consumer(stream, wanted)
        log.info("consumer updated", extra={"pool": pool, "fields": changed})


async def consumer_pending(js: JetStreamContext, settings: Settings, pool: str) -> int | None:
    """The consumer's num_pending, or None when the consumer is gone."""
    try:
        info = await js.consumer_info(settings.commands_stream, durable_name(pool))
    except NotFoundError:
        return None
    return int(info.num_pending or 0)


async def bind(
    js: JetStreamContext, settings: Settings, pool: str
) -> JetStreamContext.PullSubscription:
    return await js.pull_subscribe_bind(durable=durable_name(pool), stream=settings.commands_stream)
