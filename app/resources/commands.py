"""Command routes: read and claim (api.md §8.3; worker-protocol.md §5)."""

from __future__ import annotations

import falcon.asgi

from app.fields import Fields, path_id, read_object
from app.openapi import ID_PATH, any_object, body, integer, obj, string
from app.routing import Op, Route
from app.state import State

COMMAND_FIELDS = {
    "execution_id": integer(),
    "node_id": string(),
    "node_name": string(),
    "action": string(),
    "context": any_object(),
    "meta": any_object(),
}


class Command:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, event_id: str
    ) -> None:
        found = await self.state.execution.commands.get(path_id("event_id", event_id))
        found.pop("event_id", None)
        resp.media = found


class Claim:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, event_id: str
    ) -> None:
        command_event_id = path_id("event_id", event_id)
        f = Fields(await read_object(req, self.state.settings.http_max_body_bytes))
        worker_id = f.string("worker_id", required=True, max_len=256)
        locality = f.mapping("locality", max_bytes=64 * 1024)
        f.check()
        assert worker_id is not None
        claimed = await self.state.execution.commands.claim(command_event_id, worker_id, locality)
        claimed.pop("claim_event_id", None)
        resp.media = claimed


def routes(state: State) -> list[Route]:
    ids = {"event_id": ID_PATH}
    claimed = obj({"status": string(enum=["ok"]), "event_id": integer(), **COMMAND_FIELDS})
    return [
        Route(
            "/api/commands/{event_id}",
            Command(state),
            {
                "GET": Op(
                    "A command as a claim returns it, without claiming (redacted)",
                    "api",
                    "worker",
                    obj(COMMAND_FIELDS),
                    errors=(404, 422),
                )
            },
            path_params=ids,
        ),
        Route(
            "/api/commands/{event_id}/claim",
            Claim(state),
            {
                "POST": Op(
                    "Claim a command for a worker (lease and reclaim policy)",
                    "api",
                    "worker",
                    claimed,
                    request=body(
                        {"worker_id": string(minLength=1, maxLength=256), "locality": any_object()},
                        ["worker_id"],
                    ),
                    errors=(404, 409),
                )
            },
            path_params=ids,
        ),
    ]
