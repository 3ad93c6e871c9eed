"""Small helpers on Postgres URLs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))
