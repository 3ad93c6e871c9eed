"""Fixtures of the system pool's tool tests: a local HTTP server with flaky, slow and paginated
endpoints (started on 127.0.0.1, a free port), tool services with an in-memory credential
store, and a builder of claim bodies."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from core.settings import Settings
from workers.system.run import CredentialError, ToolServices

PAGES = {1: ["a", "b"], 2: ["c", "d"], 3: ["e"]}


@dataclass
class TestServer:
    __test__ = False  # a fixture value, not a test class

    url: str
    hits: dict[str, int] = field(default_factory=dict)
    peers: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, key: str) -> int:
        with self.lock:
            self.hits[key] = self.hits.get(key, 0) + 1
            return self.hits[key]


def _handler(server: TestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            if content_type != "application/json" and isinstance(body, str):
                raw = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("X-Test", "yes")
            self.end_headers()
            self.wfile.write(raw)

        def _route(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            with server.lock:
                server.peers.append(self.client_address)
            path = parts.path
            if path == "/json":
                self._send(200, {"hello": "world", "n": 1})
            elif path == "/text":
                self._send(200, "plain words", "text/plain")
            elif path.startswith("/status/"):
                self._send(int(path.rsplit("/", 1)[1]), {"error": "as asked"})
            elif path == "/echo":
                self._send(
                    200,
                    {
                        "method": self.command,
                        "query": query,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    },
                )
            elif path.startswith("/flaky/"):
                # The first `fail` requests for a key answer 503, the next ones 200.
                n = server.count(path)
                if n <= int(query.get("fail", "2")):
                    self._send(503, {"error": "try again", "attempt": n})
                else:
                    self._send(200, {"ok": True, "attempt": n})
            elif path == "/slow":
                time.sleep(float(query.get("seconds", "2")))
                self._send(200, {"slow": True})
            elif path == "/items":
                page = int(query.get("page", "1"))
                nxt = page + 1 if page + 1 in PAGES else None
                self._send(200, {"items": PAGES.get(page, []), "page": page, "next": nxt})
            elif path == "/big":
                self._send(200, "x" * int(query.get("bytes", "100000")), "text/plain")
            elif path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/json")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path.startswith("/api/credentials/"):
                self._credential(path.rsplit("/", 1)[1], query)
            else:
                self._send(404, {"detail": "no such route"})

        def _credential(self, alias: str, query: dict[str, str]) -> None:
            if alias == "flaky-cred" and server.count("cred") <= 1 or alias == "down":
                self._send(503, {"detail": "db_unavailable"})
            elif alias in ("good", "flaky-cred"):
                self._send(
                    200,
                    {
                        "id": "1",
                        "name": alias,
                        "type": "bearer",
                        "data": {"token": "tok-" + query.get("execution_id", "")},
                    },
                )
            else:
                self._send(404, {"detail": "Credential not found", "code": "credential_not_found"})

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _route

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) leaves a broken pipe: expected, not news.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def http_server() -> Iterator[TestServer]:
    info = TestServer(url="")
    httpd = _QuietServer(("127.0.0.1", 0), _handler(info))
    info.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield info
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def credentials() -> dict[str, dict[str, Any]]:
    """Alias → credential body, as the server's credential API would answer it."""
    return {
        "api-bearer": {"name": "api-bearer", "type": "bearer", "data": {"token": "s3cret-token"}},
        "api-basic": {
            "name": "api-basic",
            "type": "basic",
            "data": {"username": "ann", "password": "pa55word"},
        },
        "api-key": {
            "name": "api-key",
            "type": "api_key",
            "data": {"header": "X-Key", "key": "k3y-value"},
        },
        "weird": {"name": "weird", "type": "oauth2", "data": {"client_id": "x"}},
    }


@pytest.fixture
def settings() -> Settings:
    return Settings(python_timeout_seconds=30.0, http_timeout_seconds=5.0)


@pytest.fixture
async def services(
    settings: Settings, credentials: dict[str, dict[str, Any]]
) -> AsyncIterator[ToolServices]:
    async def resolve(alias: str) -> dict[str, Any]:
        if alias not in credentials:
            raise CredentialError(f"credential {alias!r} not found")
        return credentials[alias]

    async with httpx.AsyncClient() as client:
        yield ToolServices(http=client, resolve=resolve, settings=settings)


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
