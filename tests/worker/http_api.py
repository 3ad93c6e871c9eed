"""A local HTTP API for the end-to-end playbooks' http steps (tests/playbooks use `api` and
`pay_url` workload keys): paginated items, pages of rows, an echo, a payment that answers 402,
and a flaky endpoint. Started by the test on 127.0.0.1 and a free port."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ITEM_PAGES = {1: ["a", "b"], 2: ["c", "d"], 3: ["e"]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: dict[str, int] = {}
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _route(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        path = parts.path
        if path == "/items":
            page = int(query.get("page", "1"))
            self._send(200, {"items": ITEM_PAGES.get(page, []), "has_more": page + 1 in ITEM_PAGES})
        elif path.startswith("/page/"):
            page = int(path.rsplit("/", 1)[1])
            rows = [{"id": page * 10 + i, "active": i % 2 == 0} for i in range(4)]
            self._send(200, {"items": rows, "page": page})
        elif path == "/pay":
            self._send(402, {"error": "payment required"})
        elif path in ("/echo", "/search", "/me"):
            self._send(
                200,
                {
                    "method": self.command,
                    "query": query,
                    "body": json.loads(body) if body.startswith(("{", "[")) else body,
                    "authorization": self.headers.get("Authorization"),
                },
            )
        elif path.startswith("/flaky/"):
            with self.lock:
                n = self.hits[path] = self.hits.get(path, 0) + 1
            if n <= int(query.get("fail", "2")):
                self._send(503, {"attempt": n})
            else:
                self._send(200, {"attempt": n})
        else:
            self._send(404, {"detail": "no such route"})

    do_GET = do_POST = do_PUT = do_DELETE = _route


@contextmanager
def serve_api() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="e2e-http-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
