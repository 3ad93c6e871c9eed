"""The process's Postgres pool (psycopg_pool) and the 503s of api.md §2.

* `pool_saturated`: no pooled connection within the acquire timeout; Retry-After grows with
  the number of waiters.
* `db_unavailable`: a connection-class failure (SQLSTATE 08, 57P, read-only); the process then
  answers without touching the database for a backoff of 1 s doubling to 30 s, and the first
  success closes the circuit.
* `query_timeout`: a statement passed NOETL_API_STATEMENT_TIMEOUT_MS (set on every pooled
  connection), so no request waits on Postgres for longer than that.
Bad values that Postgres rejects (SQLSTATE classes 22 and 23) become 422s, never 500s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.errors import ApiError, problem, unavailable
from core.settings import Settings

log = logging.getLogger(__name__)
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0


def _connection_class(exc: BaseException) -> bool:
    state = getattr(exc, "sqlstate", None)
    if state is None:
        # a broken socket or a refused connect carries no SQLSTATE
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state.startswith("08") or state.startswith("57P") or state == "25006"


class Session:
    """One connection, running named queries."""

    def __init__(self, conn: psycopg.AsyncConnection[dict[str, Any]], queries: Mapping[str, str]):
        self.conn = conn
        self._queries = queries

    async def all(self, query: str, /, **params: Any) -> list[dict[str, Any]]:
        cur = await self.conn.execute(self._queries[query], params)
        return await cur.fetchall()

    async def one(self, query: str, /, **params: Any) -> dict[str, Any] | None:
        cur = await self.conn.execute(self._queries[query], params)
        return await cur.fetchone()

    async def run(self, query: str, /, **params: Any) -> int:
        """A statement without result rows; returns the number of rows it changed."""
        cur = await self.conn.execute(self._queries[query], params)
        return cur.rowcount

    async def value(self, query: str, /, **params: Any) -> Any:
        row = await self.one(query, **params)
        return None if row is None else next(iter(row.values()))


class Database:
    def __init__(self, settings: Settings, queries: Mapping[str, str]) -> None:
        self.settings = settings
        self.queries = queries
        self.acquire_timeout = settings.db_pool_acquire_timeout_seconds
        self.pool = AsyncConnectionPool(
            settings.database_url,
            min_size=min(settings.db_pool_min, settings.pool_max("server")),
            max_size=settings.pool_max("server"),
            open=False,
            name="noetl-server",
            timeout=self.acquire_timeout,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": 5,
                "options": f"-c statement_timeout={settings.api_statement_timeout_ms}",
                "application_name": "noetl-server",
            },
        )
        self._circuit_until = 0.0
        self._backoff = 0.0
        self.in_use = 0  # connections handed out by session(), to tell saturation from outage

    async def open(self) -> None:
        # do not wait for connections: the server starts and /health reports the database
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close(timeout=5)

    @property
    def circuit_open(self) -> bool:
        return time.monotonic() < self._circuit_until

    def stats(self) -> dict[str, int]:
        return self.pool.get_stats()

    def _trip(self) -> None:
        if not self.settings.db_unavailable_short_circuit:
            return
        self._backoff = BACKOFF_START if self._backoff == 0 else min(self._backoff * 2, BACKOFF_MAX)
        self._circuit_until = time.monotonic() + self._backoff
        log.warning("database unavailable; failing fast", extra={"backoff_s": self._backoff})

    def _unavailable(self) -> ApiError:
        retry = max(1, min(30, int(self._circuit_until - time.monotonic() + 0.999)))
        return unavailable("db_unavailable", "database unavailable", retry)

    @asynccontextmanager
    async def session(self, timeout: float | None = None) -> AsyncIterator[Session]:
        """A pooled connection in autocommit mode; errors become the api.md §2 answers."""
        if self.circuit_open:
            raise self._unavailable()
        try:
            async with self.pool.connection(timeout=timeout or self.acquire_timeout) as conn:
                self.in_use += 1
                try:
                    yield Session(conn, self.queries)  # type: ignore[arg-type]  # dict_row
                finally:
                    self.in_use -= 1
        except PoolTimeout:
            # the pool's own count: a connection on its way back to the pool is no longer in
            # `in_use` but still taken, so `in_use` alone mistakes a busy pool for an outage
            opened = self.pool.get_stats().get("pool_size", 0)
            if self.in_use < self.pool.max_size and opened < self.pool.max_size:
                # nobody holds the connections: the pool could not open one
                self._trip()
                raise self._unavailable() from None
            waiting = self.pool.get_stats().get("requests_waiting", 0)
            retry = min(30, 1 + waiting // max(1, self.pool.max_size))
            raise unavailable("pool_saturated", "database pool saturated", retry) from None
        except psycopg.Error as exc:
            raise self._translate(exc) from exc
        if self._backoff:
            self._backoff = 0.0  # the first success closes the circuit

    @asynccontextmanager
    async def transaction(self, timeout: float | None = None) -> AsyncIterator[Session]:
        async with self.session(timeout) as session, session.conn.transaction():
            yield session

    def _translate(self, exc: psycopg.Error) -> Exception:
        state = exc.sqlstate or ""
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return unavailable("query_timeout", "query timed out", 2)
        if _connection_class(exc):
            self._trip()
            return self._unavailable()
        if state.startswith("22"):
            return ApiError(
                422,
                "validation_error",
                [problem(["body"], "a value is malformed or out of range", "value_error")],
            )
        if state.startswith("23"):
            return ApiError(
                422,
                "validation_error",
                [problem(["body"], "a value violates a constraint", "constraint_error")],
            )
        return exc
