"""The two JetStream streams (envelope.md §5.1) and the checks every role runs on them (§5.5).

The publisher creates missing streams; the projector and the system pool only verify them.
A mismatch of subjects, retention or the shard-count metadata is fatal (StreamMismatch); the
mutable fields only warn, or are updated when NOETL_NATS_STREAM_UPDATE is true.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from prometheus_client import Gauge

from core.settings import Settings

log = logging.getLogger(__name__)
EXIT_STREAM_MISMATCH = 2
EVENTS_SUBJECTS = ["noetl.events.>"]
COMMANDS_SUBJECTS = ["noetl.commands.>"]
MUTABLE_FIELDS = ("duplicate_window", "max_age", "max_msg_size", "num_replicas", "storage")

STREAM_CONFIG_MISMATCH = Gauge(
    "noetl_stream_config_mismatch",
    "1 when an existing stream's mutable field differs from the configuration",
    ["stream", "field"],
    multiprocess_mode="max",
)


class StreamMismatch(RuntimeError):
    """A fatal difference between an existing stream and the configuration."""

    def __init__(self, stream: str, field: str, expected: object, actual: object) -> None:
        super().__init__(
            f"stream_config_mismatch: stream {stream} field {field} "
            f"expected {expected!r} actual {actual!r}"
        )
        self.stream, self.field, self.expected, self.actual = stream, field, expected, actual


class StreamMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class StreamSpec:
    config: StreamConfig

    @property
    def name(self) -> str:
        assert self.config.name is not None
        return self.config.name


def stream_specs(settings: Settings) -> list[StreamSpec]:
    def config(name: str, subjects: list[str], max_age: int, metadata: dict[str, str]):
        return StreamConfig(
            name=name,
            subjects=subjects,
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            duplicate_window=float(settings.nats_duplicate_window_seconds),
            max_age=float(max_age),
            max_msg_size=settings.nats_max_msg_bytes,
            num_replicas=settings.nats_stream_replicas,
            metadata=metadata,
        )

    return [
        StreamSpec(
            config(
                settings.events_stream,
                EVENTS_SUBJECTS,
                settings.events_max_age_seconds,
                {"noetl.layout": "1", "noetl.event_shard_count": str(settings.event_shard_count)},
            )
        ),
        StreamSpec(
            config(
                settings.commands_stream,
                COMMANDS_SUBJECTS,
                settings.commands_max_age_seconds,
                {"noetl.layout": "1"},
            )
        ),
    ]


async def ensure_stream(
    js: JetStreamContext, spec: StreamSpec, *, create: bool, update: bool = False
) -> None:
    """Create (publisher) or verify one stream; raise StreamMismatch or StreamMissing."""
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        if not create:
            raise StreamMissing(f"stream_missing: {spec.name}") from None
        await js.add_stream(spec.config)
        log.info("stream created", extra={"stream": spec.name})
        for field in MUTABLE_FIELDS:
            STREAM_CONFIG_MISMATCH.labels(stream=spec.name, field=field).set(0)
        return
    actual = info.config
    wanted = spec.config
    if sorted(actual.subjects or []) != sorted(wanted.subjects or []):
        raise StreamMismatch(spec.name, "subjects", wanted.subjects, actual.subjects)
    if actual.retention != wanted.retention:
        raise StreamMismatch(spec.name, "retention", wanted.retention, actual.retention)
    shard_key = "noetl.event_shard_count"
    wanted_meta = (wanted.metadata or {}).get(shard_key)
    actual_meta = (actual.metadata or {}).get(shard_key)
    needs_update = False
    if wanted_meta is not None and wanted_meta != actual_meta:
        if not (create and update):
            raise StreamMismatch(spec.name, "metadata." + shard_key, wanted_meta, actual_meta)
        needs_update = True
    for field in MUTABLE_FIELDS:
        differs = getattr(actual, field) != getattr(wanted, field)
        if differs and field != "storage" and create and update:
            needs_update = True
            differs = False
        if differs:
            log.warning(
                "stream_config_mismatch",
                extra={
                    "stream": spec.name,
                    "field": field,
                    "expected": str(getattr(wanted, field)),
                    "actual": str(getattr(actual, field)),
                },
            )
        STREAM_CONFIG_MISMATCH.labels(stream=spec.name, field=field).set(int(differs))
    if needs_update:
        merged = StreamConfig.from_response(actual.as_dict())
        for field in ("duplicate_window", "max_age", "max_msg_size", "num_replicas"):
            setattr(merged, field, getattr(wanted, field))
        merged.metadata = {**(actual.metadata or {}), **(wanted.metadata or {})}
        await js.update_stream(merged)
        log.info("stream updated", extra={"stream": spec.name})
