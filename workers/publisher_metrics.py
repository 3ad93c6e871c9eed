"""The publisher's Prometheus metrics (envelope.md §8), every label combination created at 0."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from core.metrics import LATENCY_BUCKETS, SIZE_BUCKETS

DEAD_REASONS = ("too_large", "max_attempts", "permanent")
ERROR_REASONS = (
    "nats_unavailable",
    "ack_timeout",
    "publish_rejected",
    "db_error",
    "stream_missing",
)
KINDS = ("event", "command")

PUBLISHED = Counter(
    "noetl_publisher_published", "Messages acked by JetStream, duplicates included", ["stream"]
)
DUPLICATES = Counter(
    "noetl_publisher_duplicates", "Acks with duplicate = true (dropped by JetStream)", ["stream"]
)
SLIMMED = Counter("noetl_publisher_slimmed", "Bodies slimmed to fit the message limit", ["stream"])
BATCH_SIZE = Histogram("noetl_publisher_batch_size", "Rows per claimed batch", buckets=SIZE_BUCKETS)
PUBLISH_LATENCY = Histogram(
    "noetl_publisher_publish_latency_seconds",
    "Ack time minus the outbox row's created_at",
    ["stream"],
    buckets=LATENCY_BUCKETS,
)
OUTBOX_PENDING = Gauge("noetl_publisher_outbox_pending", "Rows in noetl.event_outbox", ["kind"])
OUTBOX_OLDEST = Gauge(
    "noetl_publisher_outbox_oldest_seconds", "Age of the oldest row in noetl.event_outbox"
)
DEAD = Counter("noetl_publisher_dead", "Rows moved to noetl.event_outbox_dead", ["reason"])
ERRORS = Counter("noetl_publisher_errors", "Publisher failures", ["reason"])
NOTIFY_WAKEUPS = Counter("noetl_publisher_notify_wakeups", "Wake-ups by NOTIFY")
POLL_WAKEUPS = Counter(
    "noetl_publisher_poll_wakeups", "Safety polls that found rows (a lost or late NOTIFY)"
)


def init_labels(stream_names: list[str]) -> None:
    """Create every enumerated label combination at 0, so zero differs from absent."""
    for stream in stream_names:
        for metric in (PUBLISHED, DUPLICATES, SLIMMED):
            metric.labels(stream=stream)
        PUBLISH_LATENCY.labels(stream=stream)
    for kind in KINDS:
        OUTBOX_PENDING.labels(kind=kind)
    for reason in DEAD_REASONS:
        DEAD.labels(reason=reason)
    for reason in ERROR_REASONS:
        ERRORS.labels(reason=reason)
