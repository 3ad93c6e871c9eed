"""Test harness: one Postgres and one NATS per session, one fresh database per test.

Postgres and NATS are the embedded ones (wheels) unless NOETL_TEST_DATABASE_URL /
NOETL_TEST_NATS_URL name servers to use. A template database is migrated once per session;
each test gets `CREATE DATABASE … TEMPLATE` of it, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from core.dburl import with_dbname
from core.embedded import EmbeddedNats, EmbeddedPostgres
from core.migrate import upgrade

TEST_PG_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}


def _server_dir(kind: str) -> Iterator[Path]:
    # not pytest's tmp_path: pytest prunes old basetemp folders, which would pull the socket
    # and data of a server from under a test session running in parallel
    path = Path(tempfile.mkdtemp(prefix=f"noetl-test-{kind}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a database on the test server from which databases are created and dropped."""
    given = os.environ.get("NOETL_TEST_DATABASE_URL")
    if given:
        yield given
        return
    for folder in _server_dir("pg"):
        server = EmbeddedPostgres(folder, TEST_PG_SETTINGS)
        server.start()
        try:
            yield server.url("postgres")
        finally:
            server.stop()


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    name = f"noetl_template_{os.getpid()}"
    with _admin(pg_admin_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    upgrade(with_dbname(pg_admin_url, name))
    try:
        yield name
    finally:
        with _admin(pg_admin_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_database(pg_admin_url: str, template: str | None) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    source = f' TEMPLATE "{template}"' if template else ""
    with _admin(pg_admin_url) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{source}')
    return name


def _drop(pg_admin_url: str, name: str) -> None:
    with _admin(pg_admin_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh database migrated to head, private to this test."""
    name = _fresh_database(pg_admin_url, template_db)
    try:
        yield with_dbname(pg_admin_url, name)
    finally:
        _drop(pg_admin_url, name)


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = _fresh_database(pg_admin_url, None)
    try:
        yield with_dbname(pg_admin_url, name)
    finally:
        _drop(pg_admin_url, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    given = os.environ.get("NOETL_TEST_NATS_URL")
    if given:
        yield given
        return
    for folder in _server_dir("nats"):
        server = EmbeddedNats(folder)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
async def clean_nats(nats_url: str) -> str:
    """The session's NATS with every stream deleted, so a test starts from an empty JetStream."""
    import nats

    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        for name in await js.streams_info():
            await js.delete_stream(name.config.name)
    finally:
        await client.close()
    return nats_url
