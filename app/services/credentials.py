"""Credentials (api.md §9): sealed at rest, opened only for worker-class callers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from app.crypto import DecryptFailed, Sealer
from app.db import Database, Session
from app.errors import not_found
from app.services.keychain import cache_key, decrypt_failed
from core.timefmt import rfc3339

log = logging.getLogger(__name__)


def _not_found() -> Exception:
    return not_found("credential_not_found", "Credential not found")


def shape(row: dict[str, Any], data: Any = None) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "type": row["type"],
        "meta": row["meta"],
        "tags": row["tags"],
        "description": row["description"],
        "created_at": rfc3339(row["created_at"]),
        "updated_at": rfc3339(row["updated_at"]),
        "data": data,
    }


def _by_identifier(identifier: str) -> dict[str, Any]:
    """An all-digit identifier is tried as an id first, then as a name."""
    digits = identifier.isascii() and identifier.isdigit()
    as_id = int(identifier) if digits and 0 < int(identifier) < 2**63 else None
    return {"id": as_id, "name": identifier}


@dataclass(frozen=True)
class CredentialPut:
    name: str
    type: str
    data: dict[str, Any]
    meta: dict[str, Any] | None
    tags: list[str] | None
    description: str | None


class CredentialService:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self.db = db
        self.sealer = sealer

    async def put(self, item: CredentialPut) -> dict[str, Any]:
        async with self.db.session() as s:
            row = await s.one(
                "credential_put",
                name=item.name,
                type=item.type,
                data_encrypted=self.sealer.seal(item.data),
                meta=None if item.meta is None else Jsonb(item.meta),
                tags=item.tags,
                description=item.description,
            )
        assert row is not None
        return shape(row)

    async def list(self, type_: str | None, q: str | None) -> dict[str, Any]:
        async with self.db.session() as s:
            rows = await s.all("credential_list", type=type_, q=q)
        return {"items": [shape(r) for r in rows], "filter": {"type": type_, "q": q}}

    async def delete(self, identifier: str) -> dict[str, Any]:
        async with self.db.session() as s:
            row = await s.one("credential_delete", **_by_identifier(identifier))
        if row is None:
            raise _not_found()
        return {
            "message": "Credential deleted successfully",
            "id": str(row["id"]),
            "name": row["name"],
        }

    async def get(
        self,
        identifier: str,
        *,
        include_data: bool,
        execution_id: int | None = None,
        catalog_id: int | None = None,
        parent_execution_id: int | None = None,
    ) -> dict[str, Any]:
        async with self.db.transaction() as s:
            if include_data and execution_id is not None:
                found = await self._resolve_alias(
                    s, identifier, execution_id, catalog_id, parent_execution_id
                )
            else:
                found = await self._credential(s, identifier, include_data)
        if found is None:
            raise _not_found()
        return found

    async def _credential(
        self, s: Session, identifier: str, include_data: bool
    ) -> dict[str, Any] | None:
        row = await s.one("credential_get", **_by_identifier(identifier))
        if row is None:
            return None
        if not include_data:
            return shape(row)
        try:
            data, legacy = self.sealer.open(row["data_encrypted"])
        except DecryptFailed:
            raise decrypt_failed(f"credential:{row['id']}") from None
        if legacy:
            # a plaintext row of the NoETL Python server: seal it in this transaction
            log.warning(
                "re-sealing a plaintext credential", extra={"credential_id": str(row["id"])}
            )
            await s.run(
                "credential_reseal",
                id=row["id"],
                sealed=self.sealer.seal(data),
                plain=row["data_encrypted"],
            )
        return shape(row, data)

    async def _resolve_alias(
        self,
        s: Session,
        name: str,
        execution_id: int,
        catalog_id: int | None,
        parent_execution_id: int | None,
    ) -> dict[str, Any] | None:
        """The order of api.md §9: playbook keychain alias, credential, keychain table."""
        execution = await s.one("execution_keychain", execution_id=execution_id)
        if execution is not None:
            catalog_id = catalog_id or execution["catalog_id"]
            entries = execution["keychain"] if isinstance(execution["keychain"], list) else []
            for entry in entries:
                if (
                    isinstance(entry, dict)
                    and entry.get("name") == name
                    and entry.get("kind", "credential") == "credential"
                ):
                    target = entry.get("credential") or name
                    found = await self._credential(s, str(target), True)
                    if found is not None:
                        return found
                    break
        found = await self._credential(s, name, True)
        if found is not None or catalog_id is None:
            return found
        keys = [
            cache_key(name, catalog_id, "local", execution_id),
            cache_key(name, catalog_id, "shared", execution_id),
        ]
        if parent_execution_id is not None:
            keys.append(cache_key(name, catalog_id, "shared", parent_execution_id))
        keys.append(cache_key(name, catalog_id, "global", None))
        row = await s.one("keychain_first_live", keys=keys)
        if row is None:
            return None
        try:
            data, _ = self.sealer.open(row["data_encrypted"])
        except DecryptFailed:
            raise decrypt_failed(row["cache_key"]) from None
        return {
            "id": row["cache_key"],
            "name": row["keychain_name"],
            "type": row["credential_type"],
            "meta": None,
            "tags": None,
            "description": None,
            "created_at": rfc3339(row["created_at"]),
            "updated_at": rfc3339(row["accessed_at"]),
            "data": data,
        }
