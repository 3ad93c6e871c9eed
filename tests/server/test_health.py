"""Health, liveness, metrics and pool status (api.md §5)."""

from __future__ import annotations

import psycopg

from tests.server.conftest import INTERNAL, Client

PENDING = "/api/internal/outbox/pending-count"


async def test_livez(client: Client) -> None:
    response = await client.get("/livez")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}
    assert response.headers["x-request-id"]


async def test_health_ok_on_both_paths(client: Client) -> None:
    await client.state.hub.connected.wait()
    for path in ("/health", "/api/health", "/health/"):
        response = await client.get(path)
        assert response.status_code == 200, response.text
        body = response.json
        assert body["status"] == "ok"
        assert body["role"] == "server"
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["schema"] == "ok"
        assert body["checks"]["listen"] == "ok"
        assert body["checks"]["event_default"] == "empty"


async def test_pool_status_shape(client: Client) -> None:
    await client.get("/api/credentials")
    body = (await client.get("/api/pool/status")).json
    assert set(body) == {
        "pool_min",
        "pool_max",
        "pool_size",
        "pool_available",
        "requests_waiting",
        "utilization",
        "slots_available",
        "status",
    }
    assert body["pool_max"] == 4 and body["pool_min"] == 1
    assert body["status"] == "ok" and body["requests_waiting"] == 0
    assert 0.0 <= body["utilization"] <= 1.0 and body["slots_available"] <= 4


async def test_outbox_pending_count(client: Client, conn: psycopg.Connection) -> None:
    assert (await client.get(PENDING, headers=INTERNAL)).json == {"pending": 0}
    conn.execute(
        """INSERT INTO noetl.event (event_id, execution_id, catalog_id, event_type, status)
           SELECT id, id, 1, 'playbook.started', 'RUNNING'
             FROM (SELECT noetl.snowflake_id() AS id FROM generate_series(1, 3)) s"""
    )
    assert (await client.get(PENDING, headers=INTERNAL)).json == {"pending": 3}
