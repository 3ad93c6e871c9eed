"""Keychain routes (api.md §10). Bodies of these routes are never logged."""

from __future__ import annotations

import re

import falcon.asgi

from app.errors import problem, validation_error
from app.fields import Fields, path_id, read_object
from app.openapi import (
    ID_IN,
    ID_PATH,
    TIMESTAMP,
    any_object,
    array,
    body,
    boolean,
    integer,
    nullable,
    number,
    obj,
    query,
    string,
)
from app.routing import Op, Route
from app.services.keychain import CACHE_TYPES, SCOPES, KeychainPut
from app.state import State
from core.timefmt import parse_timestamp, utcnow

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
TOKEN_MAX_BYTES = 64 * 1024
TTL_MAX = 31_536_000


def _name(raw: str) -> str:
    if not NAME.match(raw):
        raise validation_error(
            [
                problem(
                    ["path", "keychain_name"], "must match ^[A-Za-z0-9_.-]{1,128}$", "pattern_error"
                )
            ]
        )
    return raw


def _scope(f: Fields) -> tuple[str, int | None]:
    scope = f.string("scope_type", default="global", choices=SCOPES) or "global"
    execution_id = f.ident("execution_id")
    if scope in ("local", "shared") and execution_id is None and not f.problems:
        f.add("execution_id", f"required for scope_type {scope}", "missing")
    return scope, execution_id


class Entry:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_get(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        catalog_id: str,
        keychain_name: str,
    ) -> None:
        cid, name = path_id("catalog_id", catalog_id), _name(keychain_name)
        f = Fields(req.params, "query")
        scope, execution_id = _scope(f)
        f.check()
        resp.media = await self.state.keychain.get(name, cid, scope, execution_id)

    async def on_delete(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        catalog_id: str,
        keychain_name: str,
    ) -> None:
        cid, name = path_id("catalog_id", catalog_id), _name(keychain_name)
        f = Fields(req.params, "query")
        scope, execution_id = _scope(f)
        f.check()
        resp.media = await self.state.keychain.delete(name, cid, scope, execution_id)

    async def on_post(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        catalog_id: str,
        keychain_name: str,
    ) -> None:
        cid, name = path_id("catalog_id", catalog_id), _name(keychain_name)
        f = Fields(await read_object(req, self.state.settings.http_max_body_bytes))
        token_data = f.mapping("token_data", required=True, max_bytes=TOKEN_MAX_BYTES)
        credential_type = f.string("credential_type", required=True, max_len=64)
        cache_type = f.string("cache_type", default="token", choices=CACHE_TYPES)
        scope, execution_id = _scope(f)
        parent_execution_id = f.ident("parent_execution_id")
        ttl_seconds = f.integer("ttl_seconds", minimum=1, maximum=TTL_MAX)
        auto_renew = f.boolean("auto_renew")
        renew_config = f.mapping("renew_config", max_bytes=TOKEN_MAX_BYTES)
        expires_at = None
        raw_expires = f.string("expires_at", max_len=64)
        if raw_expires is not None:
            try:
                expires_at = parse_timestamp(raw_expires, naive_is_utc=True)
            except (ValueError, OverflowError):
                f.add("expires_at", "must be an ISO 8601 timestamp", "datetime_parsing")
            else:
                if expires_at <= utcnow():
                    f.add("expires_at", "must be in the future", "value_error")
        f.check()
        assert token_data is not None and credential_type is not None and cache_type is not None
        resp.media = await self.state.keychain.put(
            KeychainPut(
                keychain_name=name,
                catalog_id=cid,
                token_data=token_data,
                credential_type=credential_type,
                cache_type=cache_type,
                scope_type=scope,
                execution_id=execution_id,
                parent_execution_id=parent_execution_id,
                ttl_seconds=ttl_seconds,
                expires_at=expires_at,
                auto_renew=auto_renew,
                renew_config=renew_config,
            )
        )


class CatalogEntries:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, catalog_id: str
    ) -> None:
        resp.media = await self.state.keychain.list(path_id("catalog_id", catalog_id))


def routes(state: State) -> list[Route]:
    scope_query = (
        query("execution_id", ID_PATH, "required for local and shared scope"),
        query("scope_type", string(enum=list(SCOPES))),
    )
    found = obj(
        {
            "status": string(enum=["success", "not_found", "expired"]),
            "keychain_name": string(),
            "catalog_id": integer(),
            "cache_key": string(),
            "token_data": nullable(any_object()),
            "credential_type": nullable(string()),
            "cache_type": nullable(string()),
            "scope_type": nullable(string()),
            "expires_at": nullable(TIMESTAMP),
            "ttl_seconds": nullable(number()),
            "accessed_at": nullable(TIMESTAMP),
            "access_count": nullable(integer()),
            "auto_renew": boolean(),
            "renew_config": nullable(any_object()),
            "expired": boolean(),
        }
    )
    put_body = body(
        {
            "token_data": any_object(),
            "credential_type": string(minLength=1, maxLength=64),
            "cache_type": string(enum=list(CACHE_TYPES)),
            "scope_type": string(enum=list(SCOPES)),
            "execution_id": ID_IN,
            "parent_execution_id": ID_IN,
            "ttl_seconds": integer(minimum=1, maximum=TTL_MAX),
            "expires_at": string(format="date-time"),
            "auto_renew": boolean(),
            "renew_config": any_object(),
        },
        ["token_data", "credential_type"],
    )
    cached = obj(
        {
            "status": string(enum=["success"]),
            "message": string(),
            "keychain_name": string(),
            "catalog_id": integer(),
            "cache_key": string(),
            "expires_at": TIMESTAMP,
            "ttl_seconds": integer(),
            "auto_renew": boolean(),
        }
    )
    deleted = obj(
        {
            "status": string(enum=["success"]),
            "message": string(),
            "keychain_name": string(),
            "catalog_id": integer(),
        }
    )
    listing = obj(
        {
            "status": string(enum=["success"]),
            "catalog_id": integer(),
            "entries": array(
                obj(
                    {
                        "keychain_name": string(),
                        "cache_key": string(),
                        "credential_type": string(),
                        "cache_type": string(),
                        "scope_type": string(),
                        "execution_id": nullable(string()),
                        "expires_at": TIMESTAMP,
                        "expired": boolean(),
                        "auto_renew": boolean(),
                        "access_count": integer(),
                        "accessed_at": TIMESTAMP,
                        "created_at": TIMESTAMP,
                    }
                )
            ),
            "count": integer(),
        }
    )
    entry_params = {"catalog_id": ID_PATH, "keychain_name": string(pattern=NAME.pattern)}
    return [
        Route(
            "/api/keychain/catalog/{catalog_id}",
            CatalogEntries(state),
            {
                "GET": Op(
                    "Keychain entries of a catalog entry, without data", "api", "keychain", listing
                )
            },
            path_params={"catalog_id": ID_PATH},
        ),
        Route(
            "/api/keychain/{catalog_id}/{keychain_name}",
            Entry(state),
            {
                "GET": Op(
                    "Read a keychain entry (counts the access)",
                    "worker",
                    "keychain",
                    found,
                    query=scope_query,
                    errors=(404, 422),
                ),
                "POST": Op(
                    "Cache a keychain entry",
                    "worker",
                    "keychain",
                    cached,
                    request=put_body,
                    errors=(404,),
                ),
                "DELETE": Op(
                    "Delete a keychain entry",
                    "worker",
                    "keychain",
                    deleted,
                    query=scope_query,
                    errors=(422,),
                ),
            },
            path_params=entry_params,
        ),
    ]
