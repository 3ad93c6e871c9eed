"""Keychain (api.md §10): TTL-bound secrets and tokens keyed by their cache key, sealed at rest."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.crypto import DecryptFailed, Sealer
from app.db import Database
from app.errors import ApiError, not_found
from core.timefmt import rfc3339

log = logging.getLogger(__name__)
DEFAULT_TTL = {"local": 3600, "shared": 86400, "global": 86400}
SCOPES = ("local", "global", "shared")
CACHE_TYPES = ("token", "secret")


def cache_key(name: str, catalog_id: int, scope: str, execution_id: int | None) -> str:
    if scope == "local":
        return f"{name}:{catalog_id}:{execution_id}"
    if scope == "shared":
        return f"{name}:{catalog_id}:shared:{execution_id}"
    return f"{name}:{catalog_id}:global"


def _ts(value: datetime | None) -> str | None:
    return rfc3339(value) if value is not None else None


def decrypt_failed(record: str) -> ApiError:
    log.error("record does not open with the configured key", extra={"record": record})
    return ApiError(500, "decrypt_failed", "stored secret could not be decrypted")


@dataclass(frozen=True)
class KeychainPut:
    keychain_name: str
    catalog_id: int
    token_data: dict[str, Any]
    credential_type: str
    cache_type: str
    scope_type: str
    execution_id: int | None
    parent_execution_id: int | None
    ttl_seconds: int | None
    expires_at: datetime | None
    auto_renew: bool
    renew_config: dict[str, Any] | None


class KeychainService:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self.db = db
        self.sealer = sealer

    def open(self, stored: str | None, record: str) -> tuple[Any, bool]:
        """(value, legacy); a legacy plaintext row must be re-sealed by the caller."""
        if stored is None:
            return None, False
        try:
            return self.sealer.open(stored)
        except DecryptFailed:
            raise decrypt_failed(record) from None

    async def put(self, item: KeychainPut) -> dict[str, Any]:
        key = cache_key(item.keychain_name, item.catalog_id, item.scope_type, item.execution_id)
        ttl = item.ttl_seconds if item.ttl_seconds is not None else DEFAULT_TTL[item.scope_type]
        async with self.db.transaction() as s:
            if not await s.value("catalog_exists", catalog_id=item.catalog_id):
                raise not_found("catalog_entry_not_found", "Catalog entry not found")
            row = await s.one(
                "keychain_put",
                cache_key=key,
                keychain_name=item.keychain_name,
                catalog_id=item.catalog_id,
                credential_type=item.credential_type,
                cache_type=item.cache_type,
                scope_type=item.scope_type,
                execution_id=item.execution_id,
                parent_execution_id=item.parent_execution_id,
                data_encrypted=self.sealer.seal(item.token_data),
                renew_config=None
                if item.renew_config is None
                else self.sealer.seal(item.renew_config),
                expires_at=item.expires_at,
                ttl_seconds=None if item.expires_at is not None else ttl,
                auto_renew=item.auto_renew,
            )
        assert row is not None
        effective = max(0, round(row["ttl_seconds"]))
        return {
            "status": "success",
            "message": f"Keychain entry cached successfully with {effective}s TTL",
            "keychain_name": item.keychain_name,
            "catalog_id": item.catalog_id,
            "cache_key": key,
            "expires_at": rfc3339(row["expires_at"]),
            "ttl_seconds": effective,
            "auto_renew": item.auto_renew,
        }

    async def get(self, name: str, catalog_id: int, scope: str, execution_id: int | None) -> dict:
        key = cache_key(name, catalog_id, scope, execution_id)
        base = {"keychain_name": name, "catalog_id": catalog_id, "cache_key": key}
        async with self.db.transaction() as s:
            row = await s.one("keychain_get", cache_key=key)
            if row is None:
                return {
                    "status": "not_found",
                    **base,
                    "token_data": None,
                    "credential_type": None,
                    "cache_type": None,
                    "scope_type": None,
                    "expires_at": None,
                    "ttl_seconds": None,
                    "accessed_at": None,
                    "access_count": None,
                    "auto_renew": False,
                    "renew_config": None,
                    "expired": False,
                }
            data, data_legacy = self.open(row["data_encrypted"], key)
            renew, renew_legacy = self.open(row["renew_config"], key)
            if data_legacy or renew_legacy:
                log.warning("re-sealing a plaintext keychain row", extra={"record": key})
                await s.run(
                    "keychain_reseal",
                    cache_key=key,
                    data_encrypted=self.sealer.seal(data) if data_legacy else row["data_encrypted"],
                    renew_config=self.sealer.seal(renew) if renew_legacy else row["renew_config"],
                    old_data_encrypted=row["data_encrypted"],
                    old_renew_config=row["renew_config"],
                )
        expired = bool(row["expired"])
        return {
            "status": "expired" if expired else "success",
            **base,
            "token_data": None if expired else data,
            "credential_type": row["credential_type"],
            "cache_type": row["cache_type"],
            "scope_type": row["scope_type"],
            "expires_at": _ts(row["expires_at"]),
            "ttl_seconds": float(row["ttl_left"]),
            "accessed_at": _ts(row["accessed_at"]),
            "access_count": row["access_count"],
            "auto_renew": row["auto_renew"],
            "renew_config": renew,
            "expired": expired,
        }

    async def delete(
        self, name: str, catalog_id: int, scope: str, execution_id: int | None
    ) -> dict:
        key = cache_key(name, catalog_id, scope, execution_id)
        async with self.db.session() as s:
            existed = await s.one("keychain_delete", cache_key=key) is not None
        message = "Keychain entry deleted successfully" if existed else "Keychain entry not found"
        return {
            "status": "success",
            "message": message,
            "keychain_name": name,
            "catalog_id": catalog_id,
        }

    async def list(self, catalog_id: int) -> dict[str, Any]:
        async with self.db.session() as s:
            rows = await s.all("keychain_list", catalog_id=catalog_id)
        entries = [
            {
                "keychain_name": r["keychain_name"],
                "cache_key": r["cache_key"],
                "credential_type": r["credential_type"],
                "cache_type": r["cache_type"],
                "scope_type": r["scope_type"],
                "execution_id": None if r["execution_id"] is None else str(r["execution_id"]),
                "expires_at": _ts(r["expires_at"]),
                "expired": r["expired"],
                "auto_renew": r["auto_renew"],
                "access_count": r["access_count"],
                "accessed_at": _ts(r["accessed_at"]),
                "created_at": _ts(r["created_at"]),
            }
            for r in rows
        ]
        return {
            "status": "success",
            "catalog_id": catalog_id,
            "entries": entries,
            "count": len(entries),
        }
