"""Settings: environment variables only (envelope.md §9 is the registry).

Each field of `Settings` maps to one `NOETL_*` variable; `from_env()` reads them once at
start. Secrets are masked by `masked()` when a role logs its effective settings.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
SECRET_FIELDS = {
    "internal_api_token",
    "api_tokens",
    "worker_api_tokens",
    "encryption_key",
    "database_url",
    "projector_database_url",
    "nats_url",
}


class SettingsError(ValueError):
    """A variable holds a value its setting cannot take."""


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}: expected one of 1 true yes on / 0 false no off, got {raw!r}")


def _env(name: str, default: Any = None, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": name, "secret": secret})


@dataclass(frozen=True)
class Settings:
    database_url: str = _env("NOETL_DATABASE_URL", "postgresql://noetl:noetl@localhost:5432/noetl")
    db_pool_min: int = _env("NOETL_DB_POOL_MIN", 1)
    db_pool_max: int | None = _env("NOETL_DB_POOL_MAX", None)
    db_statement_timeout_ms: int = _env("NOETL_DB_STATEMENT_TIMEOUT_MS", 30000)
    db_pool_acquire_timeout_seconds: float = _env("NOETL_DB_POOL_ACQUIRE_TIMEOUT_SECONDS", 2.0)
    db_unavailable_short_circuit: bool = _env("NOETL_DB_UNAVAILABLE_SHORT_CIRCUIT", True)
    api_statement_timeout_ms: int = _env("NOETL_API_STATEMENT_TIMEOUT_MS", 15000)
    nats_url: str = _env("NOETL_NATS_URL", "nats://localhost:4222")
    nats_creds_file: str | None = _env("NOETL_NATS_CREDS_FILE", None)
    events_stream: str = _env("NOETL_EVENTS_STREAM", "NOETL_EVENTS")
    commands_stream: str = _env("NOETL_COMMANDS_STREAM", "NOETL_COMMANDS")
    event_shard_count: int = _env("NOETL_EVENT_SHARD_COUNT", 16)
    nats_max_msg_bytes: int = _env("NOETL_NATS_MAX_MSG_BYTES", 1048576)
    server_url: str = _env("NOETL_SERVER_URL", "http://localhost:8082")
    internal_api_token: str | None = _env("NOETL_INTERNAL_API_TOKEN", None)
    api_tokens: str | None = _env("NOETL_API_TOKENS", None)
    worker_api_tokens: str | None = _env("NOETL_WORKER_API_TOKENS", None)
    snowflake_node_id: int | None = _env("NOETL_SNOWFLAKE_NODE_ID", None)
    log_level: str = _env("NOETL_LOG_LEVEL", "INFO")
    log_format: str = _env("NOETL_LOG_FORMAT", "json")
    metrics_host: str = _env("NOETL_METRICS_HOST", "0.0.0.0")
    metrics_port: int | None = _env("NOETL_METRICS_PORT", None)
    prometheus_multiproc_dir: str | None = _env("PROMETHEUS_MULTIPROC_DIR", None)
    shutdown_grace_seconds: float = _env("NOETL_SHUTDOWN_GRACE_SECONDS", 20.0)
    data_dir: str = _env("NOETL_DATA_DIR", "./.noetl")
    dev_ports: str = _env("NOETL_DEV_PORTS", "8082,9091,9092,9093,0")
    host: str = _env("NOETL_HOST", "0.0.0.0")
    port: int = _env("NOETL_PORT", 8082)
    server_workers: int = _env("NOETL_SERVER_WORKERS", 2)
    http_max_body_bytes: int = _env("NOETL_HTTP_MAX_BODY_BYTES", 16777216)
    cors_origins: str = _env("NOETL_CORS_ORIGINS", "*")
    encryption_key: str | None = _env("NOETL_ENCRYPTION_KEY", None)
    encryption_key_version: str = _env("NOETL_ENCRYPTION_KEY_VERSION", "v1")
    allow_insecure_default_key: bool = _env("NOETL_ALLOW_INSECURE_DEFAULT_KEY", False)
    catalog_max_content_bytes: int = _env("NOETL_CATALOG_MAX_CONTENT_BYTES", 1048576)
    catalog_cache_size: int = _env("NOETL_CATALOG_CACHE_SIZE", 100)
    event_max_bytes: int = _env("NOETL_EVENT_MAX_BYTES", 16777216)
    status_value_max_bytes: int = _env("NOETL_STATUS_VALUE_MAX_BYTES", 10485760)
    batch_max_events_per_request: int = _env("NOETL_BATCH_MAX_EVENTS_PER_REQUEST", 256)
    batch_max_payload_bytes: int = _env("NOETL_BATCH_MAX_PAYLOAD_BYTES", 2097152)
    batch_accept_queue_maxsize: int = _env("NOETL_BATCH_ACCEPT_QUEUE_MAXSIZE", 1024)
    sse_heartbeat_seconds: float = _env("NOETL_SSE_HEARTBEAT_SECONDS", 15.0)
    sse_safety_poll_seconds: float = _env("NOETL_SSE_SAFETY_POLL_SECONDS", 30.0)
    sse_max_stream_seconds: float = _env("NOETL_SSE_MAX_STREAM_SECONDS", 3600.0)
    sse_max_streams: int = _env("NOETL_SSE_MAX_STREAMS", 500)
    sse_resume_lookback_seconds: float = _env("NOETL_SSE_RESUME_LOOKBACK_SECONDS", 5.0)
    heartbeat_retry_after: int = _env("NOETL_HEARTBEAT_RETRY_AFTER", 3)
    command_claim_lease_seconds: int = _env("NOETL_COMMAND_CLAIM_LEASE_SECONDS", 120)
    command_worker_heartbeat_stale_seconds: int = _env(
        "NOETL_COMMAND_WORKER_HEARTBEAT_STALE_SECONDS", 30
    )
    command_claim_hard_timeout_seconds: int = _env(
        "NOETL_COMMAND_CLAIM_HEALTHY_WORKER_HARD_TIMEOUT_SECONDS", 1800
    )
    command_claim_retry_after_seconds: int = _env("NOETL_COMMAND_CLAIM_RETRY_AFTER_SECONDS", 2)
    command_renotify_after_seconds: int = _env("NOETL_COMMAND_RENOTIFY_AFTER_SECONDS", 60)
    default_pool: str = _env("NOETL_DEFAULT_POOL", "default")
    runtime_offline_seconds: int = _env("NOETL_RUNTIME_OFFLINE_SECONDS", 60)
    loop_max_in_flight: int = _env("NOETL_LOOP_MAX_IN_FLIGHT", 100)
    loop_max_items: int = _env("NOETL_LOOP_MAX_ITEMS", 100000)
    command_context_max_bytes: int = _env("NOETL_COMMAND_CONTEXT_MAX_BYTES", 4194304)
    result_inline_max_bytes: int = _env("NOETL_RESULT_INLINE_MAX_BYTES", 1048576)
    system_playbook_interval_seconds: int = _env("NOETL_SYSTEM_PLAYBOOK_INTERVAL_SECONDS", 3600)
    system_playbook_abandoned_seconds: int = _env("NOETL_SYSTEM_PLAYBOOK_ABANDONED_SECONDS", 86400)
    system_playbook_dead_letter_days: int = _env("NOETL_SYSTEM_PLAYBOOK_DEAD_LETTER_DAYS", 30)
    event_partition_months_ahead: int = _env("NOETL_EVENT_PARTITION_MONTHS_AHEAD", 3)
    event_retention_days: int = _env("NOETL_EVENT_RETENTION_DAYS", 0)
    publisher_batch_size: int = _env("NOETL_PUBLISHER_BATCH_SIZE", 500)
    publisher_batch_max_bytes: int = _env("NOETL_PUBLISHER_BATCH_MAX_BYTES", 8388608)
    publisher_poll_seconds: float = _env("NOETL_PUBLISHER_POLL_SECONDS", 1.0)
    publisher_ack_timeout_seconds: float = _env("NOETL_PUBLISHER_ACK_TIMEOUT_SECONDS", 5.0)
    publisher_max_attempts: int = _env("NOETL_PUBLISHER_MAX_ATTEMPTS", 10)
    publisher_retry_base_seconds: float = _env("NOETL_PUBLISHER_RETRY_BASE_SECONDS", 1.0)
    publisher_retry_max_seconds: float = _env("NOETL_PUBLISHER_RETRY_MAX_SECONDS", 60.0)
    publisher_backoff_max_seconds: float = _env("NOETL_PUBLISHER_BACKOFF_MAX_SECONDS", 30.0)
    publisher_stats_seconds: float = _env("NOETL_PUBLISHER_STATS_SECONDS", 15.0)
    nats_duplicate_window_seconds: int = _env("NOETL_NATS_DUPLICATE_WINDOW_SECONDS", 120)
    events_max_age_seconds: int = _env("NOETL_EVENTS_MAX_AGE_SECONDS", 604800)
    commands_max_age_seconds: int = _env("NOETL_COMMANDS_MAX_AGE_SECONDS", 3600)
    nats_stream_replicas: int = _env("NOETL_NATS_STREAM_REPLICAS", 1)
    nats_stream_update: bool = _env("NOETL_NATS_STREAM_UPDATE", False)
    projector_database_url: str | None = _env("NOETL_PROJECTOR_DATABASE_URL", None)
    projector_consumer: str = _env("NOETL_PROJECTOR_CONSUMER", "")
    projector_replicas: int = _env("NOETL_PROJECTOR_REPLICAS", 1)
    projector_batch_size: int = _env("NOETL_PROJECTOR_BATCH_SIZE", 500)
    projector_flush_ms: int = _env("NOETL_PROJECTOR_FLUSH_MS", 200)
    projector_max_ack_pending: int = _env("NOETL_PROJECTOR_MAX_ACK_PENDING", 2000)
    projector_ack_wait_seconds: float = _env("NOETL_PROJECTOR_ACK_WAIT_SECONDS", 60.0)
    projector_stats_seconds: float = _env("NOETL_PROJECTOR_STATS_SECONDS", 15.0)
    system_pool: str = _env("NOETL_SYSTEM_POOL", "system")
    system_concurrency: int = _env("NOETL_SYSTEM_CONCURRENCY", 4)
    system_ack_wait_seconds: float = _env("NOETL_SYSTEM_ACK_WAIT_SECONDS", 300.0)
    system_max_deliver: int = _env("NOETL_SYSTEM_MAX_DELIVER", 1000)
    worker_name: str = _env("NOETL_WORKER_NAME", "")
    worker_heartbeat_seconds: float = _env("NOETL_WORKER_HEARTBEAT_SECONDS", 15.0)
    command_heartbeat_seconds: float = _env("NOETL_COMMAND_HEARTBEAT_SECONDS", 15.0)
    worker_event_retry_seconds: float = _env("NOETL_WORKER_EVENT_RETRY_SECONDS", 300.0)
    python_timeout_seconds: float = _env("NOETL_PYTHON_TIMEOUT_SECONDS", 300.0)
    python_memory_limit_mb: int = _env("NOETL_PYTHON_MEMORY_LIMIT_MB", 1024)
    http_timeout_seconds: float = _env("NOETL_HTTP_TIMEOUT_SECONDS", 30.0)
    playbook_tool_timeout_seconds: float = _env("NOETL_PLAYBOOK_TOOL_TIMEOUT_SECONDS", 1500.0)
    task_retry_max_delay_seconds: float = _env("NOETL_TASK_RETRY_MAX_DELAY_SECONDS", 300.0)
    task_sequence_max_iterations: int = _env("NOETL_TASK_SEQUENCE_MAX_ITERATIONS", 10000)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.metadata["env"], f.type, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 1 <= self.publisher_batch_size <= 5000:
            raise SettingsError("NOETL_PUBLISHER_BATCH_SIZE: must be within 1..5000")
        if self.event_shard_count < 1:
            raise SettingsError("NOETL_EVENT_SHARD_COUNT: must be at least 1")
        if self.log_format not in ("json", "text"):
            raise SettingsError("NOETL_LOG_FORMAT: expected json or text")
        if self.snowflake_node_id is not None and not 64 <= self.snowflake_node_id <= 1023:
            raise SettingsError("NOETL_SNOWFLAKE_NODE_ID: must be within 64..1023")

    def pool_max(self, role: str) -> int:
        if self.db_pool_max is not None:
            return self.db_pool_max
        return {"server": 8}.get(role, 2)

    @property
    def target_database_url(self) -> str:
        return self.projector_database_url or self.database_url

    @property
    def consumer_name(self) -> str:
        return self.projector_consumer or socket.gethostname()

    @property
    def system_pools(self) -> list[str]:
        return [p.strip() for p in self.system_pool.split(",") if p.strip()]

    def masked(self) -> dict[str, Any]:
        """Every effective setting by variable name, secrets masked (for the start-up log)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = mask_url(value) if "url" in f.name else "***"
            out[f.metadata["env"]] = value
        return out


def mask_url(url: str) -> str:
    """Hide the password of a URL: scheme://user:***@host/..."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def _convert(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    try:
        if kind.startswith("bool"):
            return parse_bool(name, raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from exc
    return raw


ENV_NAMES = frozenset(f.metadata["env"] for f in fields(Settings))
