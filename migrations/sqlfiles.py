"""Revisions apply whole files from sql/; each revision records the sha256 of the files it
applies, and a test fails when a file no longer matches the latest revision that applies it."""

from __future__ import annotations

import hashlib

from alembic import op

from core.paths import SQL_DIR


def sqlalchemy_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def file_sha256(name: str) -> str:
    return hashlib.sha256((SQL_DIR / name).read_bytes()).hexdigest()


def apply(*names: str) -> None:
    """Run each file as one script on the migration's connection, inside its transaction."""
    raw = op.get_bind().connection.driver_connection
    for name in names:
        raw.execute((SQL_DIR / name).read_text())
