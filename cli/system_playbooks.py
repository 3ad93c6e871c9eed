"""Registering the repository's playbooks: system/ by `noetl-server migrate` (after alembic) and
`dev`, examples/ by `dev` once the server answers.

System playbooks go straight into the database with the server's own register rules and named
queries (the server need not run during a migration); a file whose text equals the latest
version is not registered again, so repeated migrations add no versions. With them comes the
credential `noetl_system_db` (envelope.md §4.6) that their postgres steps use: the migrated
database's URL, sealed with the server's key; an existing credential is left as it is, so an
operator may point it at a role with fewer rights. Without a usable key the credential is
skipped with a warning; the server's maintenance loop registers it then (app/maintenance.py).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from app.crypto import KeyConfigError, Sealer, load_kek
from app.services.catalog import prepare
from core.paths import EXAMPLES_DIR, SYSTEM_PLAYBOOKS_DIR
from core.queries import load_queries
from core.settings import Settings

log = logging.getLogger("noetl.playbooks")
QUERIES = load_queries("server")
SYSTEM_CREDENTIAL = "noetl_system_db"


@dataclass(frozen=True)
class Registration:
    path: str
    version: int
    changed: bool


def playbook_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.y*ml") if p.is_file())


def register_document(
    conn: psycopg.Connection[dict[str, Any]], text: str, max_bytes: int
) -> Registration:
    """Validate as the register route does; register unless the latest version has this text."""
    content, path, kind, payload, meta = prepare(text, "playbook", max_bytes)
    latest = conn.execute(QUERIES["catalog_latest"], {"path": path}).fetchone()
    if latest is not None and latest["content"] == content:
        return Registration(path, int(latest["version"]), changed=False)
    row = conn.execute(
        QUERIES["catalog_register"],
        {
            "path": path,
            "kind": kind,
            "content": content,
            "payload": Jsonb(payload),
            "meta": Jsonb(meta),
        },
    ).fetchone()
    assert row is not None
    return Registration(path, int(row["version"]), changed=True)


def system_credential(database_url: str) -> dict[str, str]:
    return {"dsn": database_url}


def ensure_system_credential(
    conn: psycopg.Connection[dict[str, Any]], database_url: str, settings: Settings
) -> bool:
    """Register `noetl_system_db` when absent; True when it exists afterwards."""
    found = conn.execute(QUERIES["credential_get"], {"id": None, "name": SYSTEM_CREDENTIAL})
    if found.fetchone() is not None:
        return True
    try:
        sealer = Sealer(load_kek(settings), settings.encryption_key_version)
    except (KeyConfigError, OSError) as exc:
        log.warning(
            "system credential not registered: no encryption key here; the server registers it",
            extra={"credential": SYSTEM_CREDENTIAL, "reason": str(exc)},
        )
        return False
    conn.execute(
        QUERIES["credential_put"],
        {
            "name": SYSTEM_CREDENTIAL,
            "type": "postgres",
            "data_encrypted": sealer.seal(system_credential(database_url)),
            "meta": Jsonb({"registered_by": "noetl-server migrate"}),
            "tags": ["system"],
            "description": "The NoETL database, for the system/ maintenance playbooks",
        },
    )
    return True


def register_system_playbooks(database_url: str, settings: Settings) -> list[Registration]:
    """Every system/ playbook and the system credential, in one connection."""
    done: list[Registration] = []
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        for path in playbook_files(SYSTEM_PLAYBOOKS_DIR):
            done.append(
                register_document(conn, path.read_text(), settings.catalog_max_content_bytes)
            )
        ensure_system_credential(conn, database_url, settings)
    for item in done:
        log.info(
            "system playbook registered" if item.changed else "system playbook unchanged",
            extra={"path": item.path, "version": item.version},
        )
    return done


def _catalog_path(text: str) -> str | None:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    metadata = document.get("metadata") if isinstance(document, dict) else None
    if not isinstance(metadata, dict):
        return None
    path = metadata.get("path") or metadata.get("name")
    return path if isinstance(path, str) else None


def register_examples(server_url: str, token: str | None, folder: Path = EXAMPLES_DIR) -> list[str]:
    """Register examples/ through the API (`dev`, once the server is healthy); a file equal to
    the latest version of its path is left as it is."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    registered = []
    with httpx.Client(base_url=server_url, headers=headers, timeout=30) as client:
        for path in playbook_files(folder):
            text = path.read_text()
            catalog_path = _catalog_path(text)
            if catalog_path is not None:
                latest = client.post("/api/catalog/resource", json={"path": catalog_path})
                if latest.status_code == 200 and latest.json().get("content") == text:
                    registered.append(catalog_path)
                    continue
            content = base64.b64encode(text.encode()).decode()
            response = client.post("/api/catalog/register", json={"content": content})
            if response.status_code != 200:
                log.warning(
                    "example not registered",
                    extra={"file": path.name, "status": response.status_code},
                )
                continue
            registered.append(str(response.json().get("path")))
    return registered
