"""postgres tool (dsl.md §8.3) against the test database, through a registered credential."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.system.helpers import command
from workers.system.run import ToolOutcome, ToolServices, run_tool
from workers.system.tools.postgres import split_statements


@pytest.fixture
def pg_credential(db_url: str, credentials: dict[str, dict[str, Any]]) -> str:
    """The test database registered as credential `pg_test` (host/port/user/... keys)."""
    parts = conninfo_to_dict(db_url)
    data = {
        "host": parts.get("host"),
        "port": parts.get("port"),
        "user": parts.get("user"),
        "password": parts.get("password") or "",
        "database": parts.get("dbname"),
    }
    credentials["pg_test"] = {"name": "pg_test", "type": "postgres", "data": data}
    credentials["pg_legacy_keys"] = {
        "name": "pg_legacy_keys",
        "type": "postgres",
        "data": {f"db_{k if k != 'database' else 'name'}": v for k, v in data.items()},
    }
    credentials["pg_dsn"] = {"name": "pg_dsn", "type": "postgres", "data": {"dsn": db_url}}
    return "pg_test"


async def pg(services: ToolServices, **config: Any) -> ToolOutcome:
    config.setdefault("auth", "pg_test")
    return await run_tool(command({"kind": "postgres", **config}), services)


async def test_query_rows_and_value_types(services: ToolServices, pg_credential: str) -> None:
    out = await pg(
        services,
        query="SELECT 1 AS i, 2.50::numeric AS n, 'txt' AS t, true AS b, NULL AS z,"
        " '2026-03-15 12:34:56.789+00'::timestamptz AS ts, '2026-03-15'::date AS d,"
        " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, '{\"k\": [1, 2]}'::jsonb AS j,"
        " '\\x0102'::bytea AS raw, ARRAY[1, 2, 3] AS arr",
    )
    assert out.status == "ok", out.error
    assert out.data["columns"] == ["i", "n", "t", "b", "z", "ts", "d", "u", "j", "raw", "arr"]
    assert out.data["row_count"] == 1
    row = out.data["rows"][0]
    assert row["i"] == 1 and row["n"] == 2.5 and row["t"] == "txt" and row["b"] is True
    assert row["z"] is None
    assert row["ts"].startswith("2026-03-15T12:34:56.789")
    assert row["d"] == "2026-03-15"
    assert row["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert row["j"] == {"k": [1, 2]}
    assert row["raw"] == "AQI="
    assert row["arr"] == [1, 2, 3]


async def test_several_statements_in_one_transaction(
    services: ToolServices, pg_credential: str, conn: psycopg.Connection
) -> None:
    out = await pg(
        services,
        command="CREATE TABLE public.t_tool (id int PRIMARY KEY, note text);\n"
        "INSERT INTO public.t_tool VALUES (1, 'a;b'), (2, $$x;y$$); -- a comment; with ;\n"
        "/* block; /* nested; */ still comment; */\n"
        "SELECT id, note FROM public.t_tool ORDER BY id;",
    )
    assert out.status == "ok", out.error
    assert out.data == {
        "columns": ["id", "note"],
        "rows": [{"id": 1, "note": "a;b"}, {"id": 2, "note": "x;y"}],
        "row_count": 2,
    }
    out = await pg(services, command="UPDATE public.t_tool SET note = 'z'")
    assert out.data == {"affected_rows": 2}
    out = await pg(services, command="DELETE FROM public.t_tool WHERE id = 1 RETURNING id")
    assert out.data == {"columns": ["id"], "rows": [{"id": 1}], "row_count": 1}


async def test_a_failing_statement_rolls_back_the_whole_script(
    services: ToolServices, pg_credential: str, conn: psycopg.Connection
) -> None:
    out = await pg(
        services,
        command="CREATE TABLE public.t_rolled (id int); INSERT INTO public.t_rolled VALUES (1);"
        " SELECT 1 / 0",
    )
    assert out.status == "error" and out.error is not None
    assert out.error["kind"] == "database" and out.error["sqlstate"] == "22012"
    assert out.error["retryable"] is False and "division by zero" in out.error["message"]
    assert out.pg == {"sqlstate": "22012"}
    gone = conn.execute("SELECT to_regclass('public.t_rolled') AS t").fetchone()
    assert gone == {"t": None}


async def test_autocommit_runs_each_statement_on_its_own(
    services: ToolServices, pg_credential: str, conn: psycopg.Connection
) -> None:
    out = await pg(
        services,
        autocommit=True,
        command="CREATE TABLE public.t_auto (id int); INSERT INTO public.t_auto VALUES (1);"
        " SELECT missing_column FROM public.t_auto",
    )
    assert out.error is not None and out.error["sqlstate"] == "42703"
    kept = conn.execute("SELECT count(*) AS n FROM public.t_auto").fetchone()
    assert kept == {"n": 1}


async def test_params_bind_dollar_placeholders(services: ToolServices, pg_credential: str) -> None:
    out = await pg(
        services,
        query="SELECT $1::int + 1 AS next, $2::text AS name, $3::jsonb ->> 'k' AS k, '100%' AS pct",
        params=[41, "ann", {"k": "v"}],
    )
    assert out.data["rows"] == [{"next": 42, "name": "ann", "k": "v", "pct": "100%"}]


async def test_params_with_several_statements_are_refused(
    services: ToolServices, pg_credential: str
) -> None:
    out = await pg(services, command="SELECT $1; SELECT 2", params=[1])
    assert out.error is not None and out.error["kind"] == "config"


async def test_other_credential_key_families(services: ToolServices, pg_credential: str) -> None:
    for alias in ("pg_legacy_keys", "pg_dsn"):
        out = await pg(
            services, auth=alias, query="SELECT current_database() = current_database() AS ok"
        )
        assert out.data["rows"] == [{"ok": True}], alias


async def test_statement_timeout(services: ToolServices, pg_credential: str) -> None:
    out = await pg(services, query="SELECT pg_sleep(5)", timeout_seconds=0.2)
    assert out.error is not None
    assert (out.error["kind"], out.error["sqlstate"], out.error["retryable"]) == (
        "timeout",
        "57014",
        True,
    )


async def test_connection_failure(
    services: ToolServices, credentials: dict[str, dict[str, Any]], unused_port: int
) -> None:
    credentials["pg_nowhere"] = {
        "type": "postgres",
        "data": {
            "host": "127.0.0.1",
            "port": unused_port,
            "user": "u",
            "password": "pw-nowhere",
            "database": "d",
        },
    }
    out = await pg(services, auth="pg_nowhere", query="SELECT 1")
    assert out.error is not None
    assert (out.error["kind"], out.error["retryable"]) == ("connection", True)
    assert "pw-nowhere" not in str(out.result())


async def test_missing_auth_or_sql(services: ToolServices, pg_credential: str) -> None:
    out = await run_tool(command({"kind": "postgres", "query": "SELECT 1"}), services)
    assert out.error is not None and out.error["kind"] == "config"
    out = await pg(services)
    assert out.error is not None and out.error["kind"] == "config"
    out = await pg(services, auth="no_such_alias", query="SELECT 1")
    assert out.error is not None and out.error["kind"] == "credential"


def test_split_statements() -> None:
    sql = """
        SELECT 'it''s; fine';  -- trailing; comment
        SELECT E'back\\'slash;';
        SELECT "odd;name" FROM t;
        DO $body$ BEGIN PERFORM 1; END $body$;
        SELECT $$a;b$$, $1;
        /* only a comment; */ ;
        SELECT 6
    """
    assert split_statements(sql) == [
        "SELECT 'it''s; fine'",
        "-- trailing; comment\n        SELECT E'back\\'slash;'",
        'SELECT "odd;name" FROM t',
        "DO $body$ BEGIN PERFORM 1; END $body$",
        "SELECT $$a;b$$, $1",
        "SELECT 6",
    ]
    assert split_statements("  ;; -- nothing\n") == []
