"""The projector's Prometheus metrics (envelope.md §8), every label combination created at 0."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from core.metrics import LATENCY_BUCKETS, SIZE_BUCKETS

OUTCOMES = ("inserted", "duplicate", "rejected")
ERROR_REASONS = ("db_error", "nats_error", "unresolved_ref", "shard_mismatch")

EVENTS = Counter("noetl_projector_events", "Events handled by the projector", ["outcome"])
BATCH_SECONDS = Histogram(
    "noetl_projector_batch_seconds", "First fetch to commit of a batch", buckets=LATENCY_BUCKETS
)
BATCH_SIZE = Histogram("noetl_projector_batch_size", "Messages per batch", buckets=SIZE_BUCKETS)
LAG = Gauge(
    "noetl_projector_lag_seconds",
    "Commit time minus the newest created_at of the committed batch; 0 after an empty fetch",
)
CONSUMER_PENDING = Gauge("noetl_projector_consumer_pending", "num_pending of the consumer")
CONSUMER_ACK_PENDING = Gauge(
    "noetl_projector_consumer_ack_pending", "num_ack_pending of the consumer"
)
OWNED_SHARDS = Gauge("noetl_projector_owned_shards", "Event shards this pod owns")
ERRORS = Counter("noetl_projector_errors", "Projector failures", ["reason"])


def init_labels() -> None:
    """Create every enumerated label combination at 0, so zero differs from absent."""
    for outcome in OUTCOMES:
        EVENTS.labels(outcome=outcome)
    for reason in ERROR_REASONS:
        ERRORS.labels(reason=reason)
