"""Bodies stream through the proxy, both ways, with backpressure and no whole-body buffering.

Raw-socket upstreams and clients make each step wait for the other side: a proxy that
buffered a body would deadlock (``fail_after`` turns that into a failure). Backpressure is
measured on a peer's byte counter while the other peer does not read: the counter must stop
growing at what the sockets' buffers and the proxy's small buffers hold, far below the body.
The peers' sockets get small SO_SNDBUF / SO_RCVBUF so that the stall comes quickly; the
proxy's own sockets keep the system's (autotuned) sizes. Then a peer leaving in the middle
of a body: the connection on the other side is closed, never pooled or presented as a
complete message.
"""

from __future__ import annotations

import hashlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import h11
import pytest
import trio
from proxy_support import (
    Client,
    config,
    plugin,
    request,
    route,
    service,
    simple_config,
    start_proxy,
    uid,
)

import gateway.proxy._pipeline as pipeline
from gateway.http import BACKENDS as ALL_BACKENDS
from gateway.plugins import Context, Plugin, get_plugin
from gateway.schema import Record
from gateway.schema.entities import ENTITIES

BACKENDS = pytest.mark.parametrize("backend", ALL_BACKENDS)
FRAMINGS = pytest.mark.parametrize("framing", ["chunked", "content-length"])

BLOCK = 64 * 1024
PATTERN = random.Random(7).randbytes(BLOCK - 8)
# what the kernel buffers of the four sockets on the way plus the proxy's own buffers may
# hold (0.3 to 1 MB measured: the proxy's sockets autotune, to a few MB at most on
# loopback); a buffering proxy takes the whole body
STALL_BOUND = 16 * 1024 * 1024
BIG_BODY = 48 * 1024 * 1024
SMALL_BUFFER = 64 * 1024
TIMEOUT = 10.0

Script = Callable[[trio.SocketStream], Awaitable[None]]


def block(i: int) -> bytes:
    """Block ``i`` of a large body: numbered, so a lost or repeated block changes the hash."""
    return i.to_bytes(8, "big") + PATTERN


class Counter:
    """How many body bytes a peer has moved so far (sent or received), and their hash."""

    def __init__(self) -> None:
        self.count = 0
        self.digest = hashlib.sha256()


class ScriptedUpstream:
    """A listener running ``script`` on each connection (small socket buffers if asked)."""

    def __init__(self, script: Script, *, rcvbuf: int | None = None, sndbuf: int | None = None):
        self.script = script
        self.rcvbuf = rcvbuf
        self.sndbuf = sndbuf
        self.port = 0
        self.connections = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        for listener in listeners:
            # set on the listening socket: accepted sockets inherit them, and the receive
            # window is negotiated from them in the handshake
            _small_buffers(listener.socket, self.rcvbuf, self.sndbuf)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await self.script(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


def _small_buffers(sock: trio.socket.SocketType, rcvbuf: int | None, sndbuf: int | None) -> None:
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)


async def start_upstream(nursery: trio.Nursery, script: Script, **buffers: int) -> ScriptedUpstream:
    up = ScriptedUpstream(script, **buffers)
    await nursery.start(up.serve)
    return up


async def open_client(
    port: int, *, rcvbuf: int | None = None, sndbuf: int | None = None
) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    _small_buffers(sock, rcvbuf, sndbuf)  # before connect: the window scale is set there
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def read_head(stream: trio.SocketStream) -> tuple[bytes, bytearray]:
    """A message head (up to its blank line) and the bytes received after it."""
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        data = await stream.receive_some(BLOCK)
        assert data, f"closed inside a head: {bytes(buf)!r}"
        buf += data
    return bytes(buf[: end + 4]), buf[end + 4 :]


def header_of(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def read_exactly(
    stream: trio.SocketStream, rest: bytearray, size: int, into: Counter
) -> None:
    """``size`` body bytes (``rest`` first) into ``into.digest``; fails on an early EOF."""
    into.digest.update(rest)
    into.count += len(rest)
    while into.count < size:
        data = await stream.receive_some(min(BLOCK, size - into.count))
        assert data, f"closed after {into.count} of {size} body bytes"
        into.digest.update(data)
        into.count += len(data)
    assert into.count == size


async def send_blocks(stream: trio.SocketStream, count: int, counter: Counter) -> None:
    for i in range(count):
        data = block(i)
        counter.digest.update(data)
        await stream.send_all(data)
        counter.count += len(data)


async def wait_stalled(counter: Counter, *, quiet: float = 0.3) -> int:
    """Poll ``counter.count`` until it has moved and then not for ``quiet`` seconds; its
    value then."""
    with trio.fail_after(TIMEOUT):
        last = counter.count
        since = trio.current_time()
        while True:
            await trio.sleep(0.02)
            if counter.count != last or not last:
                last, since = counter.count, trio.current_time()
            elif trio.current_time() - since >= quiet:
                return last


class H11Peer:
    """One end of an HTTP/1.1 connection read with h11 event by event, as bytes arrive."""

    def __init__(self, stream: trio.SocketStream, role: type[h11.CLIENT] | type[h11.SERVER]):
        self.stream = stream
        self.conn = h11.Connection(role)

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(BLOCK)))
                continue
            assert ev is h11.PAUSED or isinstance(ev, h11.Event)
            return ev

    async def send(self, *events: h11.Event) -> None:
        await self.stream.send_all(b"".join(self.conn.send(ev) or b"" for ev in events))

    async def read_body(self, into: bytearray) -> None:
        """The body after a head, into ``into`` as it arrives (kept if reading fails)."""
        while not isinstance(ev := await self.next_event(), h11.EndOfMessage):
            assert isinstance(ev, h11.Data), ev
            into += ev.data


def framing_headers(framing: str, size: int) -> list[tuple[bytes, bytes]]:
    if framing == "chunked":
        return [(b"transfer-encoding", b"chunked")]
    return [(b"content-length", b"%d" % size)]


# -- 1. each direction streams: the other side sees the first piece before the rest is sent --


@BACKENDS
@FRAMINGS
async def test_request_body_reaches_upstream_before_the_client_sends_the_rest(
    nursery: trio.Nursery, backend: str, framing: str
) -> None:
    first, rest = b"first piece;", b"and the rest of the body"
    upstream_has_first = trio.Event()

    async def script(stream: trio.SocketStream) -> None:
        peer = H11Peer(stream, h11.SERVER)
        body = b""
        while not isinstance(ev := await peer.next_event(), h11.EndOfMessage):
            if isinstance(ev, h11.Data):
                body += ev.data
                upstream_has_first.set()
        await peer.send(
            h11.Response(status_code=200, headers=[(b"content-length", b"%d" % len(body))]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )

    up = await start_upstream(nursery, script)
    port, _ = await start_proxy(nursery, simple_config(up.port), backend=backend)
    client = Client(await open_client(port))
    headers = [(b"host", b"example.test"), *framing_headers(framing, len(first + rest))]
    with trio.fail_after(TIMEOUT):
        await client.stream.send_all(
            client.conn.send(h11.Request(method="POST", target="/", headers=headers))
            + client.conn.send(h11.Data(data=first))
        )
        # a proxy that waited for the whole body would never forward the first piece
        await upstream_has_first.wait()
        await client.stream.send_all(
            client.conn.send(h11.Data(data=rest)) + client.conn.send(h11.EndOfMessage())
        )
        reply = await client.read_response()
    assert reply.status == 200
    assert reply.body == first + rest
    await client.aclose()


@BACKENDS
@FRAMINGS
async def test_response_body_reaches_client_before_the_upstream_sends_the_rest(
    nursery: trio.Nursery, backend: str, framing: str
) -> None:
    first, rest = b"first piece;", b"and the rest of the body"
    client_has_first = trio.Event()

    async def script(stream: trio.SocketStream) -> None:
        peer = H11Peer(stream, h11.SERVER)
        while not isinstance(await peer.next_event(), h11.EndOfMessage):
            pass
        headers = framing_headers(framing, len(first + rest))
        await peer.send(h11.Response(status_code=200, headers=headers), h11.Data(data=first))
        # a proxy that waited for the whole body would never deliver the first piece
        await client_has_first.wait()
        await peer.send(h11.Data(data=rest), h11.EndOfMessage())

    up = await start_upstream(nursery, script)
    port, _ = await start_proxy(nursery, simple_config(up.port), backend=backend)
    client = H11Peer(await open_client(port), h11.CLIENT)
    body = b""
    with trio.fail_after(TIMEOUT):
        await client.send(
            h11.Request(method="GET", target="/", headers=[(b"host", b"example.test")]),
            h11.EndOfMessage(),
        )
        response = await client.next_event()
        assert isinstance(response, h11.Response)
        assert response.status_code == 200
        while not isinstance(ev := await client.next_event(), h11.EndOfMessage):
            assert isinstance(ev, h11.Data)
            body += ev.data
            if body.startswith(first):
                client_has_first.set()
    assert body == first + rest
    await client.stream.aclose()


# -- 2. and 3. backpressure: a peer that does not read stalls the one that writes ----------


async def test_response_backpressure_stalls_the_upstream_until_the_client_reads(
    nursery: trio.Nursery,
) -> None:
    count = BIG_BODY // BLOCK
    upstream = Counter()

    async def script(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BIG_BODY)
        await send_blocks(stream, count, upstream)

    up = await start_upstream(nursery, script, sndbuf=SMALL_BUFFER)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    client = await open_client(port, rcvbuf=SMALL_BUFFER)
    await client.send_all(b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n")
    # the client reads nothing: the upstream's writes stop once the buffers on the way are
    # full, and the proxy holds no more than what its small buffers take
    stalled_at = await wait_stalled(upstream)
    assert 0 < stalled_at < STALL_BOUND
    received = Counter()
    with trio.fail_after(TIMEOUT):
        head, rest = await read_head(client)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert header_of(head, b"content-length") == b"%d" % BIG_BODY
        await read_exactly(client, rest, BIG_BODY, received)
    assert upstream.count == BIG_BODY
    assert received.digest.digest() == upstream.digest.digest()
    await client.aclose()


@FRAMINGS
async def test_request_backpressure_stalls_the_client_until_the_upstream_reads(
    nursery: trio.Nursery, framing: str
) -> None:
    count = BIG_BODY // BLOCK
    upstream_reads = trio.Event()
    received = Counter()

    async def script(stream: trio.SocketStream) -> None:
        head, rest = await read_head(stream)
        await upstream_reads.wait()
        if framing == "chunked":
            peer = H11Peer(stream, h11.SERVER)
            peer.conn.receive_data(head + rest)
            while not isinstance(ev := await peer.next_event(), h11.EndOfMessage):
                if isinstance(ev, h11.Data):
                    received.count += len(ev.data)
                    received.digest.update(ev.data)
        else:
            assert header_of(head, b"content-length") == b"%d" % BIG_BODY
            await read_exactly(stream, rest, BIG_BODY, received)
        await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")

    up = await start_upstream(nursery, script, rcvbuf=SMALL_BUFFER)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    client = Client(await open_client(port, sndbuf=SMALL_BUFFER))
    sent = Counter()

    async def upload() -> None:
        headers = [(b"host", b"example.test"), *framing_headers(framing, BIG_BODY)]
        await client.stream.send_all(
            client.conn.send(h11.Request(method="POST", target="/", headers=headers))
        )
        for i in range(count):
            data = block(i)
            sent.digest.update(data)
            await client.stream.send_all(client.conn.send(h11.Data(data=data)))
            sent.count += len(data)
        await client.stream.send_all(client.conn.send(h11.EndOfMessage()))

    async with trio.open_nursery() as uploading:
        uploading.start_soon(upload)
        # the upstream reads nothing: the client's sends stop once the buffers are full
        stalled_at = await wait_stalled(sent)
        assert 0 < stalled_at < STALL_BOUND
        upstream_reads.set()
    with trio.fail_after(TIMEOUT):
        reply = await client.read_response()
    assert reply.status == 204
    assert received.count == BIG_BODY
    assert received.digest.digest() == sent.digest.digest()
    await client.aclose()


# -- 4. and 5. a peer that leaves in the middle of a body ----------------------------------


class BigBodyUpstream(ScriptedUpstream):
    """Answers ``/small`` with ``small``, anything else with ``BIG_BODY`` bytes; ``closed``
    is set when the proxy drops a connection in the middle of that body."""

    def __init__(self) -> None:
        super().__init__(self.answer, sndbuf=SMALL_BUFFER)
        self.counter = Counter()
        self.closed = trio.Event()

    async def answer(self, stream: trio.SocketStream) -> None:
        head, _ = await read_head(stream)
        if head.startswith(b"GET /small "):
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nsmall")
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BIG_BODY)
        try:
            await send_blocks(stream, BIG_BODY // BLOCK, self.counter)
        except trio.BrokenResourceError:
            self.closed.set()
            raise


async def assert_next_request_works(port: int, up: ScriptedUpstream) -> None:
    """The proxy still serves, on a new upstream connection (the broken one was not pooled)."""
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/small")
    assert (reply.status, reply.body) == (200, b"small")
    assert up.connections == 2


async def test_client_leaving_mid_response_closes_the_upstream_connection(
    nursery: trio.Nursery,
) -> None:
    up = BigBodyUpstream()
    await nursery.start(up.serve)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    client = await open_client(port, rcvbuf=SMALL_BUFFER)
    with trio.fail_after(TIMEOUT):
        await client.send_all(b"GET /big HTTP/1.1\r\nhost: example.test\r\n\r\n")
        _, rest = await read_head(client)
        got = len(rest)
        while got < 4 * BLOCK:
            got += len(await client.receive_some(BLOCK))
        await client.aclose()  # unread bytes left: a reset
        # the proxy drops the upstream connection in the middle of its body
        await up.closed.wait()
    assert up.counter.count < BIG_BODY
    await assert_next_request_works(port, up)


async def test_client_that_stops_reading_is_cut_after_the_send_timeout(
    nursery: trio.Nursery,
) -> None:
    """As nginx's ``send_timeout``: without it, a client that stops reading held its
    connection and the upstream connection behind it for ever (the upstream's read
    timeout does not run while the proxy waits to write to the client)."""
    up = BigBodyUpstream()
    await nursery.start(up.serve)
    port, _ = await start_proxy(nursery, simple_config(up.port), client_send_timeout=0.3)
    client = await open_client(port, rcvbuf=SMALL_BUFFER)
    await client.send_all(b"GET /big HTTP/1.1\r\nhost: example.test\r\n\r\n")
    with trio.fail_after(TIMEOUT):
        await up.closed.wait()
        # what the proxy had sent before it gave up arrives, then the end of the connection
        head, rest = await read_head(client)
        got = len(rest)
        while data := await client.receive_some(BLOCK):
            got += len(data)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert got < BIG_BODY
    await client.aclose()
    await assert_next_request_works(port, up)


# a client that leaves while the proxy waits on the upstream is seen by the watchdog once the
# wait has lasted 1 s (then every second): the upstream connection closes 1 to 2 s after
DETECTION = 2.5


async def test_client_leaving_while_the_upstream_is_silent_closes_the_upstream_connection(
    nursery: trio.Nursery,
) -> None:
    upstream_closed = trio.Event()

    async def script(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n" + b"x" * 1000)
        try:
            assert await stream.receive_some(BLOCK) == b""  # the rest is never sent
        finally:
            upstream_closed.set()

    up = await start_upstream(nursery, script)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    client = await open_client(port)
    with trio.fail_after(TIMEOUT):
        await client.send_all(b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n")
        await read_head(client)
    await client.aclose()
    # not at the service's read_timeout (60 s)
    with trio.move_on_after(DETECTION):
        await upstream_closed.wait()
    assert upstream_closed.is_set()


class StatusLog(Plugin):
    """Records the status the log phase sees."""

    name = "test-status-log"
    version = "1.0.0"
    priority = 1
    config_schema: ClassVar[Record] = Record([])
    seen: ClassVar[list[int | None]] = []

    def log(self, ctx: Context) -> None:
        StatusLog.seen.append(ctx.response.status if ctx.response is not None else None)


def passive_config(ports: list[int]) -> dict[str, Any]:
    """A service on an upstream with a target per port, 5 retries, and passive health checks
    that a single failure of any kind would trip."""
    checks = ENTITIES["upstreams"].defaults()["healthchecks"]
    checks["passive"]["unhealthy"].update(tcp_failures=1, timeouts=1, http_failures=1)
    upstream = {
        **ENTITIES["upstreams"].defaults(),
        "id": uid(),
        "name": "two.test",
        "healthchecks": checks,
    }
    targets = [
        {
            **ENTITIES["targets"].defaults(),
            "id": uid(),
            "upstream": {"id": upstream["id"]},
            "target": f"127.0.0.1:{port}",
        }
        for port in ports
    ]
    svc = service(80, host="two.test", retries=5)
    return config(
        services=[svc],
        routes=[route(svc)],
        upstreams=[upstream],
        targets=targets,
        plugins=[plugin("test-status-log")],
    )


async def test_client_half_closing_before_the_response_head_closes_the_upstream_connection(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As nginx: 499, the upstream connection closed, no retry elsewhere, and not the
    target's failure for the passive health checks; the client gets no response."""
    monkeypatch.setattr(
        pipeline,
        "get_plugin",
        lambda name: StatusLog if name == StatusLog.name else get_plugin(name),
    )
    StatusLog.seen = []
    caplog.set_level(logging.INFO, logger="gateway.proxy")
    requested = trio.Event()
    closed: list[float] = []

    async def script(stream: trio.SocketStream) -> None:
        await read_head(stream)
        requested.set()
        try:
            assert await stream.receive_some(BLOCK) == b""  # never answers
        finally:
            closed.append(trio.current_time())

    ups = [await start_upstream(nursery, script) for _ in range(2)]
    port, state = await start_proxy(nursery, passive_config([up.port for up in ups]))
    client = await open_client(port)
    with trio.fail_after(TIMEOUT):
        await client.send_all(b"GET /slow HTTP/1.1\r\nhost: example.test\r\n\r\n")
        await requested.wait()
    client.socket.shutdown(socket.SHUT_WR)
    left = trio.current_time()
    with trio.fail_after(DETECTION):
        assert await client.receive_some(BLOCK) == b""  # closed, no 502 to a gone client
    await trio.sleep(0.3)  # time for a retry to show
    assert len(closed) == 1
    assert closed[0] - left <= DETECTION
    assert sum(up.connections for up in ups) == 1
    await client.aclose()
    assert StatusLog.seen == [499]
    assert "client closed the connection while waiting for the upstream" in caplog.text
    balancer = state.current.balancers.get("two.test")
    assert balancer is not None
    assert {item["health"] for item in balancer.health_snapshot()} == {"HEALTHY"}


async def test_client_with_a_pipelined_request_waiting_is_not_gone(nursery: trio.Nursery) -> None:
    """Bytes in the client's socket (the next request, sent while the proxy waits on a slow
    upstream) mean the client is there: both requests are answered."""

    async def script(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while True:
            while (end := buf.find(b"\r\n\r\n")) < 0:
                data = await stream.receive_some(BLOCK)
                if not data:
                    return
                buf += data
            del buf[: end + 4]
            await trio.sleep(1.6)  # past the watchdog's first look at the client
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")

    up = await start_upstream(nursery, script)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    client = await open_client(port)
    with trio.fail_after(TIMEOUT):
        await client.send_all(b"GET /first HTTP/1.1\r\nhost: example.test\r\n\r\n")
        await trio.sleep(0.3)  # the proxy has read the first request and waits upstream
        # the next one stays in the socket until the first is answered
        await client.send_all(b"GET /next HTTP/1.1\r\nhost: example.test\r\n\r\n")
        for _ in range(2):
            head, rest = await read_head(client)
            assert head.startswith(b"HTTP/1.1 200 ")
            body = Counter()
            await read_exactly(client, rest, 4, body)
            assert body.digest.digest() == hashlib.sha256(b"slow").digest()
    await client.aclose()


@BACKENDS
@FRAMINGS
async def test_upstream_leaving_mid_body_closes_the_client_connection(
    nursery: trio.Nursery, backend: str, framing: str
) -> None:
    async def script(stream: trio.SocketStream) -> None:
        head, _ = await read_head(stream)
        if head.startswith(b"GET /small "):
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nsmall")
            return
        peer = h11.Connection(h11.SERVER)
        peer.receive_data(head)
        peer.next_event()
        out = peer.send(h11.Response(status_code=200, headers=framing_headers(framing, 10_000)))
        await stream.send_all(out + peer.send(h11.Data(data=b"x" * 4_000)))
        # and the connection closes (``ScriptedUpstream``), 6,000 bytes short

    up = await start_upstream(nursery, script)
    port, _ = await start_proxy(nursery, simple_config(up.port), backend=backend)
    client = H11Peer(await open_client(port), h11.CLIENT)
    body = bytearray()
    with trio.fail_after(TIMEOUT):
        await client.send(
            h11.Request(method="GET", target="/big", headers=[(b"host", b"example.test")]),
            h11.EndOfMessage(),
        )
        response = await client.next_event()
        assert isinstance(response, h11.Response)
        assert response.status_code == 200
        # the body never ends as complete: the proxy closes the connection short of it
        with pytest.raises(h11.RemoteProtocolError, match="without sending complete message"):
            await client.read_body(body)
    assert body == b"x" * 4_000
    await client.stream.aclose()
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/small")
    assert (reply.status, reply.body) == (200, b"small")
