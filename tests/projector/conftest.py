"""Fixtures of the projector tests: a second migrated database (a non-primary target) and
JetStream with the two streams created as the publisher creates them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from core.dburl import with_dbname
from core.settings import Settings
from tests.projector.helpers import create_streams


@pytest.fixture
def second_db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """Another fresh database migrated to head (`noetl-server migrate --database-url`)."""
    name = f"t2_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield with_dbname(pg_admin_url, name)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def streams(clean_nats: str) -> str:
    """The session NATS with fresh NOETL_EVENTS and NOETL_COMMANDS streams."""
    await create_streams(clean_nats, Settings())
    return clean_nats
