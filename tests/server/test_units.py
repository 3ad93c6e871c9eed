"""Pure parts of the server: named queries, envelope encryption, ui directives, register
rules, the catalog cache, the redactor. No database."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.crypto import DecryptFailed, KeyConfigError, Sealer, load_kek
from app.redact import REDACTED, redact
from app.services.catalog import decode_content, path_problem, to_json_value
from app.services.catalog_cache import CatalogCache, CatalogEntry
from app.services.ui_schema import directives, parse_value
from core.queries import QueryFileError, load_queries, parse_queries
from core.settings import Settings

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def test_parse_queries() -> None:
    text = """
-- header, ignored
-- name: first
SELECT 1
  -- an inner comment stays
  AS one

-- the next query's comment is dropped from this block
-- name: second
SELECT %(x)s
"""
    queries = parse_queries(text)
    assert queries == {
        "first": "SELECT 1\n  -- an inner comment stays\n  AS one",
        "second": "SELECT %(x)s",
    }
    with pytest.raises(QueryFileError):
        parse_queries("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")
    with pytest.raises(QueryFileError):
        parse_queries("-- name: a\n-- only a comment\n-- name: b\nSELECT 1\n")


def test_server_queries_load() -> None:
    queries = load_queries("server")
    assert {"catalog_list", "credential_get", "keychain_put", "runtime_list", "vars_set"} <= set(
        queries
    )
    for name, sql in queries.items():
        # a placeholder in a comment breaks psycopg: comments must not carry a percent sign
        for line in sql.splitlines():
            if line.strip().startswith("--"):
                assert "%" not in line, name


@given(JSON)
def test_seal_open_round_trip(value) -> None:
    sealer = Sealer(os.urandom(32))
    sealed = sealer.seal(value)
    assert sealer.open(sealed) == (value, False)


def test_sealed_record_needs_its_key() -> None:
    sealed = Sealer(os.urandom(32)).seal({"password": "p"})
    with pytest.raises(DecryptFailed):
        Sealer(os.urandom(32)).open(sealed)
    envelope = json.loads(sealed)
    envelope["ct"] = base64.b64encode(b"x" * 40).decode()
    with pytest.raises(DecryptFailed):
        Sealer(os.urandom(32)).open(json.dumps(envelope))
    with pytest.raises(DecryptFailed):
        Sealer(os.urandom(32)).open("not json at all")
    # plaintext JSON of the NoETL Python server is legacy, to be re-sealed
    assert Sealer(os.urandom(32)).open('{"password": "p"}') == ({"password": "p"}, True)


def test_load_kek(tmp_path) -> None:
    key = base64.b64encode(b"a" * 32).decode()
    assert load_kek(Settings.from_env({"NOETL_ENCRYPTION_KEY": key})) == b"a" * 32
    with pytest.raises(KeyConfigError):
        load_kek(Settings.from_env({"NOETL_ENCRYPTION_KEY": base64.b64encode(b"a" * 16).decode()}))
    with pytest.raises(KeyConfigError):
        load_kek(Settings.from_env({}))
    dev = Settings.from_env(
        {"NOETL_ALLOW_INSECURE_DEFAULT_KEY": "true", "NOETL_DATA_DIR": str(tmp_path)}
    )
    first = load_kek(dev)
    assert (tmp_path / "encryption.key").stat().st_mode & 0o777 == 0o600
    assert load_kek(dev) == first and len(first) == 32


def test_ui_directives() -> None:
    content = """\
name: x
workload:
  # a comment line
  a: 1  # ui:secret # ui:description=First one
  "b": "x # not a comment"  # ui:enum=['x', "y", z]
  c:  # ui:credential=pg_*
    deep: 1  # ui:secret
  d: [1, 2] # ui:description=[one, two]
other:
  e: 1  # ui:secret
"""
    assert directives(content) == {
        "a": {"secret": True, "description": "First one"},
        "b": {"enum": ["x", "y", "z"]},
        "c": {"credential": "pg_*"},
        "d": {"description": ["one", "two"]},
    }
    assert parse_value(None) is True
    assert parse_value(' "quoted" ') == "quoted"
    assert parse_value("[]") == []
    assert directives("workload: {}\n") == {}
    assert directives("no: workload\n") == {}


def test_register_helpers() -> None:
    assert path_problem("a/b_c/d.e-f") is None
    for bad in ("", "a//b", "/a", "a/", "a/./b", "a/../b", "a/ui_schema", "a b", "x" * 513):
        assert path_problem(bad) is not None, bad
    text = "metadata:\n  path: a\n"
    assert decode_content(base64.b64encode(text.encode()).decode()) == text
    assert decode_content("abcd") == "abcd"  # valid base64, but not a YAML mapping
    assert decode_content(text) == text
    nan = to_json_value({1: float("nan"), "d": date(2026, 1, 2)})
    assert nan == {"1": "nan", "d": "2026-01-02"}
    bomb: list = ["x"]
    for _ in range(30):
        bomb = [bomb, bomb]
    with pytest.raises(ValueError):
        to_json_value(bomb)


def entry(path: str) -> CatalogEntry:
    now = datetime.now(UTC)
    return CatalogEntry.from_row(
        {
            "catalog_id": 1,
            "path": path,
            "version": 1,
            "kind": "playbook",
            "content": "x: 1",
            "layout": None,
            "payload": {"x": 1},
            "meta": {},
            "created_at": now,
            "archived_at": None,
        }
    )


def test_catalog_cache_generation_and_lru() -> None:
    cache = CatalogCache(size=2)
    generation = cache.generation
    cache.invalidate("p")  # an invalidation between read and store
    cache.put(("latest", "p"), entry("p"), generation)
    assert cache.get(("latest", "p")) is None
    cache.put(("latest", "p"), entry("p"), cache.generation)
    cache.put(("id", 1), entry("p"), cache.generation)
    cache.put(("latest", "q"), entry("q"), cache.generation)
    assert cache.get(("latest", "p")) is None  # least recently used went first
    cache.on_notify("noetl_catalog", '{"path": "p"}')
    assert cache.get(("id", 1)) is None  # by-id entries of the path go too
    assert cache.get(("latest", "q")) is not None
    cache.on_notify("noetl_catalog", "garbage")
    assert cache.get(("latest", "q")) is None


def test_redact() -> None:
    value = {
        "password": "p",
        "nested": {"DB_Password": "x", "list": [{"api_key": "k"}, "Bearer abcdefghijkl"]},
        "note": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "pem": "-----BEGIN RSA PRIVATE KEY-----\nabc",
        "count": 3,
        "empty_token": None,
    }
    assert redact(value) == {
        "password": REDACTED,
        "nested": {"DB_Password": REDACTED, "list": [{"api_key": REDACTED}, REDACTED]},
        "note": REDACTED,
        "pem": REDACTED,
        "count": 3,
        "empty_token": None,
    }
    assert value["password"] == "p"  # the input is untouched
