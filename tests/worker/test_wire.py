"""The pool's keep-alive HTTP client (workers/system/wire.py) against a raw asyncio server that
answers as scripted: reuse, chunked bodies, a connection the server closed while idle, a
server that stops answering, and one that is not there."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from workers.system.wire import WireClient, WireError


@dataclass
class RawServer:
    url: str = ""
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    close_after_each: bool = False
    chunked: bool = False
    silent: bool = False


async def _serve(state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    state.connections += 1
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            state.requests.append(head + body)
            if state.silent:
                await reader.read()  # no answer, until the client gives up and closes
                break
            answer = json.dumps({"seen": json.loads(body)}).encode()
            if state.chunked:
                half = len(answer) // 2
                payload = b"".join(
                    b"%x\r\n%s\r\n" % (len(part), part) for part in (answer[:half], answer[half:])
                )
                writer.write(
                    b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n"
                    b"retry-after: 2\r\ncontent-type: application/json\r\n\r\n"
                    + payload
                    + b"0\r\n\r\n"
                )
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(answer), answer)
                )
            await writer.drain()
            if state.close_after_each:
                break  # without saying so: the client finds out on its next request
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    state = RawServer()
    server = await asyncio.start_server(lambda r, w: _serve(state, r, w), "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/base/"
    async with server:
        yield state
        server.close()


async def test_requests_reuse_one_connection(raw: RawServer) -> None:
    client = WireClient(raw.url, {"Authorization": "Bearer t0ken"}, timeout=5)
    for n in range(5):
        answer = await client.post("/api/events", {"n": n})
        assert answer.status_code == 200 and answer.json() == {"seen": {"n": n}}
    assert raw.connections == 1
    first = raw.requests[0].decode()
    assert first.startswith("POST /base/api/events HTTP/1.1\r\n")
    assert "authorization: Bearer t0ken" in first and "content-type: application/json" in first
    await client.aclose()


async def test_a_connection_closed_while_idle_is_retried_once(raw: RawServer) -> None:
    raw.close_after_each = True
    client = WireClient(raw.url, {}, timeout=5)
    for n in range(3):
        assert (await client.post("/x", {"n": n})).json() == {"seen": {"n": n}}
    assert raw.connections == 3 and len(raw.requests) == 3
    await client.aclose()


async def test_chunked_answers_and_headers(raw: RawServer) -> None:
    raw.chunked = True
    client = WireClient(raw.url, {}, timeout=5)
    answer = await client.post("/claim", {"worker_id": "w"})
    assert answer.status_code == 409
    assert answer.headers["retry-after"] == "2"
    assert answer.json() == {"seen": {"worker_id": "w"}}
    await client.aclose()


async def test_no_answer_is_a_wire_error(raw: RawServer) -> None:
    raw.silent = True
    client = WireClient(raw.url, {}, timeout=0.3)
    with pytest.raises(WireError, match="timed out"):
        await client.post("/x", {})
    nobody = WireClient("http://127.0.0.1:9/", {}, timeout=2)
    with pytest.raises(WireError):
        await nobody.post("/x", {})
    await client.aclose()
