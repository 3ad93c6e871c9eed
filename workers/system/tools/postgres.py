"""postgres (dsl.md §8.3): SQL through a credential alias, several statements in one
transaction unless `autocommit`, `$n` parameters, rows as JSON values."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from engine.render import to_json_value
from workers.system.tools.base import ToolContext, ToolFailure, ToolOutcome, timeout_setting

CONNECT_TIMEOUT_SECONDS = 10
# A client-side backstop over the server's statement_timeout, for a server that stops answering.
BACKSTOP_SECONDS = 5.0
QUERY_CANCELED = "57014"

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def split_statements(sql: str) -> list[str]:
    """Statements of a script, split on top-level `;`. Quotes ('', E'', ""), dollar quotes and
    comments (--, nested /* */) are respected; statements holding only comments are dropped."""
    statements: list[str] = []
    start, i, n = 0, 0, len(sql)
    has_code = False
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if c == "/" and sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        if c == ";":
            if has_code:
                statements.append(sql[start:i].strip())
            start, i, has_code = i + 1, i + 1, False
            continue
        has_code = has_code or not c.isspace()
        if c in ("'", '"'):
            backslashes = c == "'" and i > 0 and sql[i - 1] in "eE" and _word_start(sql, i - 1)
            i += 1
            while i < n:
                if backslashes and sql[i] == "\\":
                    i += 2
                    continue
                if sql[i] == c:
                    if sql.startswith(c * 2, i):  # doubled quote inside the literal
                        i += 2
                        continue
                    break
                i += 1
            i += 1
            continue
        if c == "$" and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            match = _DOLLAR_TAG.match(sql, i)
            if match:
                end = sql.find(match.group(0), match.end())
                i = n if end < 0 else end + len(match.group(0))
                continue
        i += 1
    if has_code:
        statements.append(sql[start:].strip())
    return statements


def _word_start(sql: str, i: int) -> bool:
    return i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")


def conninfo(data: dict[str, Any], alias: str) -> str:
    """Connection string from a credential's data (either key family, or a dsn)."""

    def pick(*names: str) -> Any:
        for name in names:
            if data.get(name) not in (None, ""):
                return data[name]
        return None

    params = {
        "host": pick("host", "db_host"),
        "port": pick("port", "db_port"),
        "user": pick("user", "db_user", "username"),
        "password": pick("password", "db_password"),
        "dbname": pick("database", "db_name", "dbname"),
        "sslmode": pick("sslmode"),
    }
    params = {k: str(v) for k, v in params.items() if v is not None}
    dsn = pick("dsn", "url", "connection_string")
    if dsn is None and not params.get("host"):
        raise ToolFailure(
            "credential", f"credential {alias!r} has no host or dsn for postgres", retryable=False
        )
    try:
        return make_conninfo(str(dsn or ""), connect_timeout=CONNECT_TIMEOUT_SECONDS, **params)
    except psycopg.ProgrammingError as exc:
        raise ToolFailure("credential", f"credential {alias!r}: bad dsn: {exc}") from None


def _alias_of(auth: Any) -> str:
    if isinstance(auth, dict):
        auth = auth.get("credential") or auth.get("alias") or auth.get("name")
    if not isinstance(auth, str) or not auth.strip():
        raise ToolFailure("config", "postgres tool needs `auth`: a credential alias")
    return auth


def _param(value: Any) -> Any:
    return Jsonb(value) if isinstance(value, dict) else value


async def run(ctx: ToolContext) -> ToolOutcome:
    config = ctx.config
    sql = config.get("command") if config.get("command") is not None else config.get("query")
    if not isinstance(sql, str) or not sql.strip():
        raise ToolFailure("config", "postgres tool needs `command` or `query`")
    statements = split_statements(sql)
    if not statements:
        raise ToolFailure("config", "postgres `command` holds no statement")
    params = config.get("params")
    if params is not None:
        if not isinstance(params, list):
            raise ToolFailure("config", "params must be a list (bound to $1..$n)")
        if len(statements) > 1:
            raise ToolFailure("config", "params are allowed with a single statement only")
        params = [_param(p) for p in params]
    timeout = timeout_setting(config, 300.0)
    autocommit = bool(config.get("autocommit", False))
    alias = _alias_of(config.get("auth"))
    cred = await ctx.credential(alias)
    info = conninfo(cred["data"], alias)
    password = conninfo_to_dict(info).get("password")
    if password:
        ctx.secrets.add(str(password))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS + BACKSTOP_SECONDS):
            conn = await psycopg.AsyncConnection.connect(info, autocommit=True)
    except (psycopg.OperationalError, TimeoutError) as exc:
        message = str(exc) or type(exc).__name__
        return ToolOutcome.failed(
            {
                "kind": "connection",
                "message": message,
                "retryable": True,
                "type": type(exc).__name__,
            }
        )
    try:
        async with conn:
            await conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", [f"{int(timeout * 1000)}ms"]
            )
            data = await _execute(conn, statements, params, autocommit, timeout)
    except psycopg.Error as exc:
        return _database_error(exc)
    except TimeoutError:
        return ToolOutcome.failed(
            {
                "kind": "timeout",
                "message": f"postgres did not answer in {timeout:g}s",
                "retryable": True,
            }
        )
    return ToolOutcome(status="ok", data=data)


async def _execute(
    conn: psycopg.AsyncConnection[Any],
    statements: list[str],
    params: list[Any] | None,
    autocommit: bool,
    timeout: float,
) -> dict[str, Any]:
    async def run_all() -> dict[str, Any]:
        data: dict[str, Any] = {}
        # A raw cursor binds $1..$n as written, and leaves a literal % alone.
        async with psycopg.AsyncRawCursor(conn) as cur:
            for sql in statements:
                async with asyncio.timeout(timeout + BACKSTOP_SECONDS):
                    await cur.execute(sql, params)
                data = await _data_of(cur)
        return data

    if autocommit:
        return await run_all()
    async with conn.transaction():
        return await run_all()


async def _data_of(cur: psycopg.AsyncRawCursor[Any]) -> dict[str, Any]:
    if cur.description is None:
        return {"affected_rows": cur.rowcount}
    columns = [col.name for col in cur.description]
    rows = [
        {name: to_json_value(value) for name, value in zip(columns, row, strict=True)}
        for row in await cur.fetchall()
    ]
    return {"columns": columns, "rows": rows, "row_count": len(rows)}


def _database_error(exc: psycopg.Error) -> ToolOutcome:
    sqlstate = exc.sqlstate
    message = (exc.diag.message_primary if exc.diag else None) or str(exc)
    if sqlstate is None and isinstance(exc, psycopg.OperationalError):
        return ToolOutcome.failed(
            {
                "kind": "connection",
                "message": str(exc),
                "retryable": True,
                "type": type(exc).__name__,
            }
        )
    kind = "timeout" if sqlstate == QUERY_CANCELED else "database"
    error = {
        "kind": kind,
        "message": message,
        "retryable": kind == "timeout",
        "sqlstate": sqlstate,
        "type": type(exc).__name__,
    }
    return ToolOutcome.failed(error, pg={"sqlstate": sqlstate})
