"""Server metrics (envelope.md §8). Route labels are route templates, never ids."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

from core.metrics import LATENCY_BUCKETS

REQUEST_DURATION = Histogram(
    "noetl_server_request_duration_seconds",
    "HTTP requests by method, route template and status",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
DB_POOL_CONNECTIONS = Gauge(
    "noetl_server_db_pool_connections",
    "Pooled Postgres connections of this process by state",
    ["state"],
    multiprocess_mode="livesum",
)
POOL_STATES = ("in_use", "idle", "waiting")


def record_pool(stats: dict[str, int]) -> None:
    size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
    DB_POOL_CONNECTIONS.labels(state="in_use").set(max(0, size - idle))
    DB_POOL_CONNECTIONS.labels(state="idle").set(idle)
    DB_POOL_CONNECTIONS.labels(state="waiting").set(stats.get("requests_waiting", 0))
