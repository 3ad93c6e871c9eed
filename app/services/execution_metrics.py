"""Engine and claim metrics of the server (envelope.md §8). No id is ever a label value."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from core.metrics import LATENCY_BUCKETS

ENGINE_EVALUATIONS = Counter(
    "noetl_server_engine_evaluations_total",
    "Engine runs by outcome",
    ["outcome"],
)
ENGINE_DURATION = Histogram(
    "noetl_server_engine_duration_seconds",
    "One engine evaluation",
    buckets=LATENCY_BUCKETS,
)
COMMANDS_ISSUED = Counter(
    "noetl_server_commands_issued_total",
    "Commands inserted, by pool",
    ["pool"],
)
EVENTS_APPENDED = Counter(
    "noetl_server_events_appended_total",
    "Events inserted (duplicates excluded), by source",
    ["source"],
)
CLAIMS = Counter(
    "noetl_server_claims_total",
    "claim_command results, by outcome",
    ["outcome"],
)

EVALUATION_OUTCOMES = ("commands", "no_op", "terminal", "error")
EVENT_SOURCES = ("http", "engine", "claim")
CLAIM_OUTCOMES = ("claimed", "not_found", "already_terminal", "active_claim")

# every enumerated combination exists at 0 from the start, so zero differs from absent
for _outcome in EVALUATION_OUTCOMES:
    ENGINE_EVALUATIONS.labels(outcome=_outcome)
for _source in EVENT_SOURCES:
    EVENTS_APPENDED.labels(source=_source)
for _outcome in CLAIM_OUTCOMES:
    CLAIMS.labels(outcome=_outcome)
