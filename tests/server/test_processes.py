"""The real server under gunicorn: two processes share no stale catalog, metrics add up over
the workers, and a bad configuration stops the start."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.server.conftest import INTERNAL, PLAYBOOK, server_env


def _register(url: str, path: str, marker: str) -> dict:
    content = PLAYBOOK.format(path=path).replace("greeting: hello", f"greeting: {marker}")
    response = httpx.post(f"{url}/api/catalog/register", json={"content": content}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _latest(url: str, path: str) -> dict:
    response = httpx.post(f"{url}/api/catalog/resource", json={"path": path}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_no_stale_catalog_across_two_processes(server_factory) -> None:
    a = server_factory(NOETL_SERVER_WORKERS="1")
    b = server_factory(NOETL_SERVER_WORKERS="1")
    path = "tests/shared"
    _register(a.url, path, "v1")
    for version in range(1, 21):
        seen = _latest(b.url, path)  # b caches this version
        assert seen["version"] == version
        assert _latest(b.url, path)["version"] == version  # served from b's cache
        done = _register(a.url, path, f"v{version + 1}")
        assert done["version"] == version + 1
        fresh = _latest(b.url, path)  # at once, not after the TTL
        assert fresh["version"] == version + 1, f"b returned a stale entry at {version}"
        assert fresh["payload"]["workload"]["greeting"] == f"v{version + 1}"
    # archive on b, read on a
    _latest(a.url, path)
    deleted = httpx.post(
        f"{b.url}/api/catalog/delete", json={"path": path, "version": 21}, headers=INTERNAL
    )
    assert deleted.json()["count"] == 1
    assert _latest(a.url, path)["version"] == 20


def test_metrics_add_up_over_gunicorn_workers(server_factory) -> None:
    server = server_factory(NOETL_SERVER_WORKERS="2")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(40):
            # a fresh connection each time so both workers get requests
            response = httpx.get(f"{server.url}/api/worker/pools", timeout=10)
            assert response.status_code == 200
        text = client.get("/metrics").text
    pattern = re.compile(
        r'noetl_server_request_duration_seconds_count\{method="GET",route="/api/worker/pools",'
        r'status="200"\} ([0-9.e+]+)'
    )
    counts = [float(m) for m in pattern.findall(text)]
    assert sum(counts) == 40, text[:2000]
    assert "noetl_build_info" in text
    assert "process_resident_memory_bytes" in text
    assert 'noetl_server_db_pool_connections{state="idle"}' in text


def test_server_refuses_to_start_without_a_key(db_url: str, tmp_path: Path) -> None:
    env = {
        **server_env(db_url, tmp_path),
        "NOETL_ENCRYPTION_KEY": "",
        "NOETL_ALLOW_INSECURE_DEFAULT_KEY": "false",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "--mode=server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "NOETL_ENCRYPTION_KEY" in result.stderr
    short = {**env, "NOETL_ENCRYPTION_KEY": "c2hvcnQ="}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "--mode=server"],
        env=short,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "32 bytes" in result.stderr
    token = {**env, "NOETL_ALLOW_INSECURE_DEFAULT_KEY": "true", "NOETL_API_TOKENS": "short"}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "--mode=server"],
        env=token,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "shorter than 16" in result.stderr
