"""A small keep-alive HTTP/1.1 client for the pool's hot path to the server: claims and events.

Every command costs four requests to the server (claim, command.started, call.done,
command.completed). Measured on the 2-core test machine, one JSON POST costs about 1.4 ms of CPU
through httpx and 0.2 ms through h11 on asyncio streams, so this path uses h11 (the protocol
library under httpx and uvicorn) directly; the tools keep httpx. Requests here are idempotent
by the protocol (a retried claim by the same worker gets the same answer, a retried event the
same stored id), so a keep-alive connection the server closed while idle is simply retried once
on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import orjson

MAX_IDLE = 32
IDLE_SECONDS = 4.0  # below the server's keep-alive timeout (5 s), so a reused one is rarely stale
READ_BYTES = 65536


class WireError(Exception):
    """No answer: the connection failed, broke or timed out."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return orjson.loads(self.body)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.used_at = time.monotonic()
        self.answered = False  # any response bytes arrived on this request

    async def exchange(self, method: str, target: str, headers: list[tuple[str, str]], data: bytes):
        self.answered = False
        conn = self.h11
        self.writer.write(
            conn.send(h11.Request(method=method, target=target, headers=headers))
            + conn.send(h11.Data(data=data))
            + conn.send(h11.EndOfMessage())
        )
        await self.writer.drain()
        status, response_headers, chunks = 0, {}, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                raw = await self.reader.read(READ_BYTES)
                self.answered = self.answered or bool(raw)
                conn.receive_data(raw)
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Answer(status, response_headers, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the server closed the connection")

    @property
    def reusable(self) -> bool:
        conn = self.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.used_at = time.monotonic()
            return True
        return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class WireClient:
    """JSON requests to one base URL over pooled keep-alive connections."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        netloc = parts.netloc.rpartition("@")[2]
        self.headers = [("host", netloc), ("user-agent", "noetl-system-pool")]
        self.headers += [(k.lower(), v) for k, v in headers.items()]
        self.timeout = timeout
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl)
        return _Connection(reader, writer)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if time.monotonic() - conn.used_at < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    async def post(self, path: str, body: Any, timeout: float | None = None) -> Answer:
        data = orjson.dumps(body)
        headers = [
            *self.headers,
            ("content-type", "application/json"),
            ("content-length", str(len(data))),
        ]
        target = self.prefix + path
        for attempt in (1, 2):
            conn = self._take_idle()
            reused = conn is not None
            try:
                async with asyncio.timeout(timeout or self.timeout):
                    if conn is None:
                        conn = await self._connect()
                    answer = await conn.exchange("POST", target, headers, data)
            except TimeoutError as exc:  # before OSError, its base class
                if conn is not None:
                    conn.close()
                raise WireError("timed out") from exc
            except (OSError, EOFError, h11.ProtocolError) as exc:
                if conn is not None:
                    conn.close()
                if reused and attempt == 1 and conn is not None and not conn.answered:
                    continue  # a kept-alive connection the server had closed meanwhile
                raise WireError(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                if conn is not None:
                    conn.close()  # cancelled mid-request: the connection's state is unknown
                raise
            if conn.reusable and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
            else:
                conn.close()
            return answer
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()
