"""Credential routes (api.md §9). Bodies of these routes are never logged."""

from __future__ import annotations

import falcon.asgi

from app import auth
from app.fields import Fields, read_object
from app.openapi import (
    ID_PATH,
    TIMESTAMP,
    any_object,
    array,
    body,
    boolean,
    nullable,
    obj,
    query,
    string,
)
from app.routing import Op, Route
from app.services.credentials import CredentialPut
from app.state import State

DATA_MAX_BYTES = 64 * 1024
CREDENTIAL = obj(
    {
        "id": string(),
        "name": string(),
        "type": string(),
        "meta": nullable(any_object()),
        "tags": nullable(array(string())),
        "description": nullable(string()),
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "data": nullable(any_object()),
    }
)


class Credentials:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(await read_object(req, self.state.settings.http_max_body_bytes))
        name = f.string("name", required=True, max_len=255, strip=True)
        type_field = f.first("type", "credential_type") or "type"
        type_ = f.string(type_field, default="generic", max_len=64)
        data = f.mapping("data", required=True, max_bytes=DATA_MAX_BYTES)
        meta = f.mapping("meta")
        tags = f.string_list("tags", max_items=50, comma=True)
        description = f.string("description", min_len=0, max_len=2000)
        f.check()
        assert name is not None and type_ is not None and data is not None
        resp.media = await self.state.credentials.put(
            CredentialPut(name, type_, data, meta, tags, description)
        )

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        f = Fields(req.params, "query")
        type_ = f.string("type", max_len=64)
        q = f.string("q", max_len=255)
        f.check()
        resp.media = await self.state.credentials.list(type_, q)


class Credential:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, identifier: str
    ) -> None:
        f = Fields(req.params, "query")
        include_data = f.boolean("include_data")
        execution_id = f.ident("execution_id")
        catalog_id = f.ident("catalog_id")
        parent_execution_id = f.ident("parent_execution_id")
        f.check()
        if include_data:
            # Fix of api.md §3: credential data only for worker and internal tokens
            self.state.auth.require(
                req.context.caller, auth.WORKER, forbidden_code="credential_data_forbidden"
            )
        resp.media = await self.state.credentials.get(
            identifier,
            include_data=include_data,
            execution_id=execution_id,
            catalog_id=catalog_id,
            parent_execution_id=parent_execution_id,
        )

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, identifier: str
    ) -> None:
        resp.media = await self.state.credentials.delete(identifier)


def routes(state: State) -> list[Route]:
    put_body = body(
        {
            "name": string(minLength=1, maxLength=255),
            "type": string(minLength=1, maxLength=64),
            "credential_type": string(minLength=1, maxLength=64),
            "data": any_object(),
            "meta": any_object(),
            "tags": {"anyOf": [array(string(), maxItems=50), string()]},
            "description": string(maxLength=2000),
        },
        ["name", "data"],
    )
    listing = obj(
        {
            "items": array(CREDENTIAL),
            "filter": obj({"type": nullable(string()), "q": nullable(string())}),
        }
    )
    deleted = obj({"message": string(), "id": string(), "name": string()})
    identifier = {"identifier": string(minLength=1)}
    return [
        Route(
            "/api/credentials",
            Credentials(state),
            {
                "POST": Op(
                    "Create or replace a credential by name (data sealed at rest)",
                    "api",
                    "credentials",
                    CREDENTIAL,
                    request=put_body,
                ),
                "GET": Op(
                    "List credentials without data",
                    "api",
                    "credentials",
                    listing,
                    query=(
                        query("type", string(), "exact credential type"),
                        query("q", string(), "substring of name or description"),
                    ),
                    errors=(422,),
                ),
            },
        ),
        Route(
            "/api/credentials/{identifier}",
            Credential(state),
            {
                "GET": Op(
                    "One credential by id or name; data only with include_data and a worker token",
                    "api",
                    "credentials",
                    CREDENTIAL,
                    query=(
                        query("include_data", boolean()),
                        query("execution_id", ID_PATH),
                        query("catalog_id", ID_PATH),
                        query("parent_execution_id", ID_PATH),
                    ),
                    errors=(404, 422),
                ),
                "DELETE": Op(
                    "Delete a credential by id or name",
                    "api",
                    "credentials",
                    deleted,
                    errors=(404,),
                ),
            },
            path_params=identifier,
        ),
    ]
