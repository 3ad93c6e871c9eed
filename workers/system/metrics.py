"""The system pool's Prometheus metrics (envelope.md §8), every label combination created at 0."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from core.metrics import LATENCY_BUCKETS

COMMAND_OUTCOMES = ("completed", "failed", "claim_conflict", "already_terminal", "error")
EVENT_OUTCOMES = ("ok", "retried", "failed")
TOOL_KINDS = ("python", "http", "postgres", "playbook", "task_sequence", "noop")

COMMANDS = Counter(
    "noetl_worker_commands", "Notifications handled by the system pool", ["pool", "outcome"]
)
COMMAND_DURATION = Histogram(
    "noetl_worker_command_duration_seconds",
    "Claim to last event reported",
    ["pool", "tool_kind"],
    buckets=LATENCY_BUCKETS,
)
CLAIM_DURATION = Histogram(
    "noetl_worker_claim_duration_seconds", "Claim HTTP call", ["pool"], buckets=LATENCY_BUCKETS
)
EVENTS_REPORTED = Counter(
    "noetl_worker_events_reported", "Event POSTs by outcome", ["pool", "outcome"]
)
INFLIGHT = Gauge("noetl_worker_inflight", "Commands running", ["pool"])
CONSUMER_PENDING = Gauge(
    "noetl_worker_consumer_pending", "num_pending of the pool's consumer", ["pool"]
)


def init_labels(pools: list[str]) -> None:
    for pool in pools:
        for outcome in COMMAND_OUTCOMES:
            COMMANDS.labels(pool=pool, outcome=outcome)
        for outcome in EVENT_OUTCOMES:
            EVENTS_REPORTED.labels(pool=pool, outcome=outcome)
        for kind in TOOL_KINDS:
            COMMAND_DURATION.labels(pool=pool, tool_kind=kind)
        CLAIM_DURATION.labels(pool=pool)
        INFLIGHT.labels(pool=pool)
        CONSUMER_PENDING.labels(pool=pool)
