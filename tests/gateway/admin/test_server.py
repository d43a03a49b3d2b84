"""The h11 server in front of the Admin API: limits, malformed HTTP, keep-alive, and a
handler that fails never takes the server down."""

from __future__ import annotations

import json

import h11
import pytest
import trio

from gateway.admin import AdminRequest, AdminResponse, serve_http

MAX_BODY = 1024


class RecordingApp:
    def __init__(self) -> None:
        self.seen: list[AdminRequest] = []

    async def __call__(self, request: AdminRequest) -> AdminResponse:
        self.seen.append(request)
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        return AdminResponse.json(
            200, {"path": request.path, "raw": request.raw_path, "size": len(request.body)}
        )


@pytest.fixture
async def server(nursery: trio.Nursery) -> tuple[RecordingApp, int]:
    app = RecordingApp()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await nursery.start(
        lambda task_status: serve_http(app, listeners, max_body=MAX_BODY, task_status=task_status)
    )
    return app, port


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``; everything the server answers until it closes (or 5 s pass)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        chunks: list[bytes] = []
        with trio.move_on_after(5):
            try:
                while chunk := await stream.receive_some(65536):
                    chunks.append(chunk)
            except trio.BrokenResourceError:
                pass  # a reset after the answer: what arrived is what we check
        return b"".join(chunks)


def responses(raw: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    conn = h11.Connection(h11.CLIENT)
    out: list[tuple[int, dict[bytes, bytes], bytes]] = []
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    status, headers, body = 0, {}, b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.InformationalResponse):
            out.append((event.status_code, dict(event.headers), b""))
        elif isinstance(event, h11.Response):
            status, headers, body = event.status_code, dict(event.headers), b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.append((status, headers, body))
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                break
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                break
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
        else:
            break
    return out


async def test_keep_alive_and_raw_path(server: tuple[RecordingApp, int]) -> None:
    app, port = server
    raw = await exchange(
        port,
        b"GET /consumers/a%2Fb?size=1 HTTP/1.1\r\nhost: x\r\n\r\n"
        b"POST /services HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
        b"connection: close\r\n\r\nabc",
    )
    (s1, _, b1), (s2, _, b2) = responses(raw)
    assert (s1, s2) == (200, 200)
    assert json.loads(b1) == {"path": "/consumers/a/b", "raw": "/consumers/a%2Fb", "size": 0}
    assert json.loads(b2)["size"] == 3
    assert app.seen[0].query == (("size", "1"),)


async def test_declared_body_too_large_is_413(server: tuple[RecordingApp, int]) -> None:
    app, port = server
    raw = await exchange(
        port,
        b"POST /services HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (MAX_BODY + 1)
        + b"x" * (MAX_BODY + 1),
    )
    [(status, headers, body)] = responses(raw)
    assert status == 413
    assert headers[b"connection"] == b"close"
    assert json.loads(body) == {"message": "Request Entity Too Large"}
    assert app.seen == []


async def test_chunked_body_too_large_is_413(server: tuple[RecordingApp, int]) -> None:
    app, port = server
    chunk = b"x" * 600
    raw = await exchange(
        port,
        b"POST /services HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2
        + b"0\r\n\r\n",
    )
    [(status, _, _)] = responses(raw)
    assert status == 413
    assert app.seen == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon header\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nx: " + b"a" * 100_000 + b"\r\n\r\n",
    ],
    ids=["request-line", "content-length", "header", "huge-header"],
)
async def test_malformed_http_is_4xx(
    server: tuple[RecordingApp, int], request_bytes: bytes
) -> None:
    app, port = server
    raw = await exchange(port, request_bytes)
    assert raw.startswith(b"HTTP/1.1 4"), raw[:80]
    assert app.seen == []
    # ... and the server still answers.
    [(status, _, _)] = responses(
        await exchange(port, b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    )
    assert status == 200


async def test_a_failing_handler_is_a_500_and_the_server_survives(
    server: tuple[RecordingApp, int],
) -> None:
    _, port = server
    raw = await exchange(
        port,
        b"GET /boom HTTP/1.1\r\nhost: x\r\n\r\n"
        b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    (s1, _, b1), (s2, _, _) = responses(raw)
    assert s1 == 500
    assert json.loads(b1) == {"message": "An unexpected error occurred"}
    assert s2 == 200


async def test_head_and_expect_continue(server: tuple[RecordingApp, int]) -> None:
    _, port = server
    raw = await exchange(
        port,
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\nab"
        b"HEAD /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 100 ")
    assert raw.count(b"HTTP/1.1 200 ") == 2
    assert raw.endswith(b"\r\n\r\n")  # the HEAD response has no body
