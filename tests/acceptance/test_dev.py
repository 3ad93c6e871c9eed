"""`noetl-server dev` comes up on free ports, migrates, serves /livez on every role, stops on
SIGTERM within 15 s with status 0, and a second run reuses the data folder."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from core.embedded import EmbeddedPostgres, free_port
from core.schema import database_revision, package_revision
from tests.acceptance.helpers import noetl_server, wait_http_ok

ROLES = ("server", "publisher", "projector", "system")


def _run_dev_once(data_dir: Path) -> None:
    ports = {role: free_port() for role in ROLES}
    port_spec = ",".join(str(ports[r]) for r in ROLES) + ",0"
    log_path = data_dir.parent / "dev.log"
    with log_path.open("w") as log:  # a file, not a pipe: the roles' logs must never block
        proc = noetl_server(
            "dev",
            "--data-dir",
            str(data_dir),
            env={"NOETL_DEV_PORTS": port_spec},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for role in ROLES:
            wait_http_ok(f"http://127.0.0.1:{ports[role]}/livez", 90, proc)
        wait_http_ok(f"http://127.0.0.1:{ports['server']}/health", 30, proc)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log_path.read_text()
    assert proc.returncode == 0, out
    assert elapsed < 15, f"dev took {elapsed:.1f}s to stop"
    assert f"http://127.0.0.1:{ports['server']}" in out
    assert "NOETL_INTERNAL_API_TOKEN=" in out


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    # not pytest's tmp_path: a pytest session starting elsewhere resets /tmp/pytest-of-<user>
    # to 0700, which would lock the unprivileged Postgres user out of its data mid-run
    path = Path(tempfile.mkdtemp(prefix="noetl-dev-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_dev_starts_serves_and_stops(dev_dir: Path) -> None:
    data_dir = dev_dir / "data"
    _run_dev_once(data_dir)
    token = (data_dir / "internal_token").read_text()
    assert (data_dir / "internal_token").stat().st_mode & 0o777 == 0o600
    assert (data_dir / "encryption.key").stat().st_mode & 0o777 == 0o600

    _run_dev_once(data_dir)  # the second run reuses the folder: same token, same database
    assert (data_dir / "internal_token").read_text() == token

    postgres = EmbeddedPostgres(data_dir)
    postgres.start()
    try:
        with psycopg.connect(postgres.url("noetl")) as conn:
            assert database_revision(conn) == package_revision()
    finally:
        postgres.stop()
