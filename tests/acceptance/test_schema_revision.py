"""Every mode refuses a database at another revision: one line naming both, exit status 3."""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest

from core.schema import package_revision
from tests.acceptance.helpers import noetl_server


@pytest.mark.parametrize("mode", ["server", "publisher", "projector", "system"])
def test_mode_refuses_other_revision(mode: str, db_url: str, nats_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE noetl.alembic_version SET version_num = 'ffff_other'")
    proc = noetl_server(
        f"--mode={mode}",
        env={"NOETL_DATABASE_URL": db_url, "NOETL_NATS_URL": nats_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    lines = [json.loads(line) for line in err.splitlines() if "schema_revision_mismatch" in line]
    assert len(lines) == 1, err
    assert "ffff_other" in lines[0]["msg"] and package_revision() in lines[0]["msg"]


def test_check_schema_command(db_url: str) -> None:
    ok = noetl_server("check-schema", "--database-url", db_url, stdout=subprocess.PIPE, text=True)
    out, _ = ok.communicate(timeout=60)
    assert ok.returncode == 0 and package_revision() in out
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE noetl.alembic_version SET version_num = 'ffff_other'")
    bad = noetl_server("check-schema", "--database-url", db_url, stdout=subprocess.PIPE, text=True)
    out, _ = bad.communicate(timeout=60)
    assert bad.returncode != 0 and "ffff_other" in out and package_revision() in out
