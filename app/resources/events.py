"""Worker event routes: POST /api/events, event batches and their status (api.md §8.1, §8.2)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import falcon
import falcon.asgi

from app.errors import ApiError, problem, validation_error
from app.fields import Fields, json_size, path_id, read_object
from app.openapi import (
    ID_IN,
    ID_OUT,
    ID_PATH,
    TIMESTAMP,
    any_object,
    array,
    body,
    boolean,
    integer,
    nullable,
    obj,
    string,
)
from app.routing import Op, Route
from app.services.events import accept_batch, ingest_events, parse_event
from app.state import State

IDEMPOTENCY_KEY_MAX = 200
BATCH_STATUS = {
    "accepted": "PENDING",
    "processing": "RUNNING",
    "completed": "COMPLETED",
    "failed": "FAILED",
}
EVENT_BODY = body(
    {
        "execution_id": ID_IN,
        "event_type": string(pattern=r"^[A-Za-z0-9_.:-]{1,128}$"),
        "name": string(),
        "node_name": string(minLength=1, maxLength=512),
        "step": string(),
        "context": any_object(),
        "payload": any_object(),
        "meta": nullable(any_object()),
        "worker_id": string(maxLength=256),
        "actionable": boolean(),
        "informative": boolean(),
        "status": string(maxLength=32),
        "event_id": ID_IN,
        "created_at": string(),
    },
    ["execution_id"],
)
EVENT_ANSWER = obj(
    {"status": string(enum=["ok"]), "event_id": integer(), "commands_generated": integer()}
)


def _command_id(raw: dict[str, Any]) -> Any:
    payload = raw.get("payload") or raw.get("context") or {}
    meta = raw.get("meta") or {}
    for source in (payload, meta, raw):
        if isinstance(source, dict) and source.get("command_id") is not None:
            return source["command_id"]
    return None


class PostEvent:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        settings = self.state.settings
        raw = await read_object(req, settings.http_max_body_bytes)
        f = Fields(raw)
        execution_id = f.ident("execution_id", required=True)
        f.check()
        assert execution_id is not None
        if (raw.get("event_type") or raw.get("name")) == "command.claimed":
            resp.media = await self._claim(execution_id, raw)
            return
        envelope = parse_event(raw, result_max_bytes=settings.result_inline_max_bytes)
        if json_size(envelope) > settings.event_max_bytes:
            raise ApiError(413, "payload_too_large", "event larger than NOETL_EVENT_MAX_BYTES")
        done = await ingest_events(self.state.execution.runner, execution_id, [envelope])
        resp.media = {
            "status": "ok",
            "event_id": done.event_ids[0],
            "commands_generated": done.commands_generated,
        }

    async def _claim(self, execution_id: int, raw: dict[str, Any]) -> dict[str, Any]:
        """api.md §8.1 step 4: a posted command.claimed is a claim by its worker_id."""
        raw_meta = raw.get("meta")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        f = Fields(
            {
                "worker_id": raw.get("worker_id") or meta.get("worker_id"),
                "command_id": _command_id(raw),
            }
        )
        worker_id = f.string("worker_id", required=True, max_len=256)
        command_id = f.ident("command_id", required=True)
        f.check()
        assert worker_id is not None
        async with self.state.db.session() as session:
            event_id = await session.value(
                "command_event_id", execution_id=execution_id, command_id=command_id
            )
        if event_id is None:
            raise ApiError(404, "command_not_found", f"Command {command_id} not found")
        claimed = await self.state.execution.commands.claim(int(event_id), worker_id)
        return {
            "status": "ok",
            "event_id": int(claimed["claim_event_id"] or event_id),
            "commands_generated": 0,
        }


class PostBatch:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        settings = self.state.settings
        raw = await read_object(req, settings.http_max_body_bytes)
        f = Fields(raw)
        execution_id = f.ident("execution_id", required=True)
        catalog_id = f.ident("catalog_id")
        worker_id = f.string("worker_id", max_len=256)
        items = raw.get("events")
        if not isinstance(items, list):
            f.add("events", "must be a list", "type_error")
        key = req.get_header("Idempotency-Key") or req.get_header("X-Idempotency-Key")
        if key is not None and not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
            f.problems.append(
                problem(["header", "Idempotency-Key"], f"1..{IDEMPOTENCY_KEY_MAX} characters")
            )
        f.check()
        assert execution_id is not None and isinstance(items, list)
        too_many = not 1 <= len(items) <= settings.batch_max_events_per_request
        payload_bytes = sum(
            json_size(i.get("payload", i.get("context"))) for i in items if isinstance(i, dict)
        )
        if too_many or payload_bytes > settings.batch_max_payload_bytes:
            raise validation_error(
                [
                    problem(
                        ["body", "events"],
                        f"1..{settings.batch_max_events_per_request} events and at most "
                        f"{settings.batch_max_payload_bytes} bytes of payloads",
                        "batch_too_large",
                    )
                ],
                "batch_too_large",
            )
        extra: dict[str, Any] = {"execution_id": execution_id}
        if worker_id is not None:
            extra["worker_id"] = worker_id
        envelopes = [
            parse_event(
                item,
                loc=("body", "events", index),
                default_actionable=False,
                result_max_bytes=settings.result_inline_max_bytes,
                extra=extra,
            )
            for index, item in enumerate(items)
        ]
        digest = hashlib.sha256(
            json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
        api = self.state.execution
        accepted = await accept_batch(
            api.runner,
            execution_id,
            envelopes,
            idempotency_key=key,
            body_sha256=digest,
            catalog_id=catalog_id,
        )
        if accepted.outcome == "accepted":
            api.batches.spawn(execution_id, accepted.request_id)
        resp.status = falcon.HTTP_202
        resp.media = {
            "status": "accepted",
            "request_id": str(accepted.request_id),
            "event_ids": accepted.event_ids,
            "commands_generated": 0,
            "queue_depth": accepted.queue_depth,
            "duplicate": accepted.outcome == "duplicate",
            "idempotency_key": accepted.idempotency_key,
        }


async def batch_status(state: State, request_id: int) -> dict[str, Any] | None:
    """The status JSON of api.md §8.2, or None for an unknown request id (the batch stream
    uses it too)."""
    async with state.db.session() as session:
        row = await session.one("event_batch_status", request_id=request_id)
    if row is None:
        return None
    return {
        "request_id": str(row["request_id"]),
        "execution_id": str(row["execution_id"]),
        "state": row["state"],
        "status": BATCH_STATUS.get(row["state"], "RUNNING"),
        "error_code": row["error_code"],
        "message": row["message"],
        "commands_generated": row["commands_generated"],
        "idempotency_key": row["idempotency_key"],
        "updated_at": row["updated_at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if row["updated_at"]
        else None,
    }


class BatchStatus:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, request_id: str
    ) -> None:
        found = await batch_status(self.state, path_id("request_id", request_id))
        if found is None:
            raise ApiError(404, "batch_not_found", f"Batch {request_id} not found")
        resp.media = found


def routes(state: State) -> list[Route]:
    accepted = obj(
        {
            "status": string(enum=["accepted"]),
            "request_id": ID_OUT,
            "event_ids": array(integer()),
            "commands_generated": integer(),
            "queue_depth": integer(),
            "duplicate": boolean(),
            "idempotency_key": nullable(string()),
        }
    )
    status = obj(
        {
            "request_id": ID_OUT,
            "execution_id": ID_OUT,
            "state": string(enum=list(BATCH_STATUS)),
            "status": string(),
            "error_code": nullable(string()),
            "message": nullable(string()),
            "commands_generated": integer(),
            "idempotency_key": nullable(string()),
            "updated_at": nullable(TIMESTAMP),
        }
    )
    item = body(
        {
            "step": string(),
            "node_name": string(),
            "name": string(),
            "event_type": string(),
            "payload": any_object(),
            "context": any_object(),
            "actionable": boolean(),
            "informative": boolean(),
            "meta": nullable(any_object()),
        }
    )
    return [
        Route(
            "/api/events",
            PostEvent(state),
            {
                "POST": Op(
                    "Report one worker event; drives the engine",
                    "api",
                    "worker",
                    EVENT_ANSWER,
                    request=EVENT_BODY,
                    errors=(404, 409, 422),
                )
            },
        ),
        Route(
            "/api/events/batch",
            PostBatch(state),
            {
                "POST": Op(
                    "Accept a batch of worker events; processed asynchronously",
                    "api",
                    "worker",
                    accepted,
                    request=body(
                        {
                            "execution_id": ID_IN,
                            "worker_id": string(),
                            "catalog_id": ID_IN,
                            "events": array(item, minItems=1),
                        },
                        ["execution_id", "events"],
                    ),
                    status=202,
                    errors=(404, 409, 422),
                )
            },
        ),
        Route(
            "/api/events/batch/{request_id}/status",
            BatchStatus(state),
            {
                "GET": Op(
                    "State of an accepted event batch",
                    "api",
                    "worker",
                    status,
                    errors=(404, 422),
                )
            },
            path_params={"request_id": ID_PATH},
        ),
    ]
