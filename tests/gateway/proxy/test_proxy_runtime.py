"""Runtime pieces: the upstream pool, graceful drain, settings, robustness to garbage."""

from __future__ import annotations

import socket
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from proxy_support import (
    Client,
    Upstream,
    raw_exchange,
    request,
    reset_connections,
    simple_config,
    start_proxy,
)

from gateway.http import BACKENDS, NEED_DATA, PAUSED, HttpError, Limits, make_request_parser
from gateway.proxy import ConnectionPool, ProxyOptions
from gateway.settings import load_settings


def fake_stream() -> trio.abc.Stream:
    send, _receive = trio.testing.memory_stream_pair()
    return send


def test_pool_limits_with_a_fake_clock() -> None:
    async def main() -> None:
        pool = ConnectionPool(size=2, max_requests=3, idle_timeout=10.0, clock=trio.current_time)
        conns = [pool.new(fake_stream(), "k") for _ in range(3)]
        for c in conns:
            pool.release(c, reusable=True)
        assert pool.idle_count("k") == 2  # size limit: the oldest was closed
        got = pool.acquire("k")
        assert got is conns[2]  # LIFO
        assert got is not None
        assert got.reused
        pool.release(got, reusable=False)
        assert pool.idle_count("k") == 1
        # max_requests: a connection is not kept after its third request
        c1 = pool.acquire("k")
        assert c1 is not None
        pool.release(c1, reusable=True)
        c2 = pool.acquire("k")
        assert c2 is not None
        assert c2.requests == 2
        pool.release(c2, reusable=True)
        assert pool.idle_count("k") == 0
        # idle timeout
        d = pool.new(fake_stream(), "k")
        pool.release(d, reusable=True)
        await trio.sleep(11)
        assert pool.acquire("k") is None
        e = pool.new(fake_stream(), "j")
        pool.release(e, reusable=True)
        await trio.sleep(11)
        pool.sweep()
        assert pool.idle_count() == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_pool_notices_a_peer_that_closed(nursery: trio.Nursery) -> None:
    a, b = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    pool = ConnectionPool()
    conn = pool.new(stream, "k")
    assert not conn.peer_closed()
    b.close()
    assert conn.peer_closed()
    await stream.aclose()


async def test_cancelling_serve_proxy_lets_in_flight_requests_finish(nursery: trio.Nursery) -> None:
    async def slow(req: h11.Request, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await trio.sleep(0.3)
        return 200, [], b"done"

    up = Upstream(slow)
    await nursery.start(up.serve)
    results: list[Any] = []
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            port, _ = await start_proxy(inner, simple_config(up.port))
            idle = await Client.open(port)
            assert (await idle.request()).status == 200  # now an idle keep-alive connection

            async def in_flight() -> None:
                results.append(await request(port))

            nursery.start_soon(in_flight)
            with trio.fail_after(5):
                while up.requests < 2:
                    await trio.sleep(0.01)
            inner.cancel_scope.cancel()
    assert not scope.cancelled_caught
    with trio.fail_after(5):
        while not results:
            await trio.sleep(0.01)
    assert results[0].status == 200
    assert results[0].body == b"done"
    # the idle keep-alive connection was closed by the drain
    with trio.fail_after(5):
        assert await idle.stream.receive_some(10) == b""
    await idle.aclose()


async def test_untrusted_garbage_never_kills_the_listener(nursery: trio.Nursery) -> None:
    up = Upstream()
    await nursery.start(up.serve)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    for junk in (b"\x00\xff" * 100, b"GET / HTTP/1.1\r\n" + b"A" * 40000, b"\r\n\r\n\r\n", b"G"):
        await raw_exchange(port, junk, timeout=0.5)
    assert (await request(port)).status == 200


async def test_clients_that_reset_at_once_never_kill_the_server(nursery: trio.Nursery) -> None:
    up = Upstream()
    await nursery.start(up.serve)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    reset_connections(port, 20)  # blocks this thread: the server has not accepted yet
    await trio.sleep(0.2)
    assert (await request(port)).status == 200


def test_options_from_real_settings() -> None:
    s = load_settings(
        env={},
        overrides={
            "trusted_ips": "10.0.0.0/8",
            "real_ip_header": "X-Forwarded-For",
            "headers": "server_tokens",
            "client_max_body_size": "1m",
        },
    )
    opts = ProxyOptions.from_settings(s)
    assert opts.is_trusted("10.1.2.3")
    assert not opts.is_trusted("11.1.2.3")
    assert opts.real_ip_header == b"x-forwarded-for"
    assert opts.via
    assert not opts.latency
    assert opts.client_max_body_size == 1024 * 1024
    assert opts.limits.max_request_line == 8192


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=300),
    prefix=st.sampled_from(
        [
            b"",
            b"GET / HTTP/1.1\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]
    ),
)
def test_parsers_only_ever_raise_http_errors(backend: str, data: bytes, prefix: bytes) -> None:
    parser = make_request_parser(backend, Limits(max_header_bytes=1024))  # type: ignore[arg-type]
    try:
        parser.receive_data(prefix + data)
        parser.receive_data(b"")
        for _ in range(100):
            ev = parser.next_event()
            if ev is NEED_DATA:
                break
            if ev is PAUSED:
                parser.start_next_cycle()
    except HttpError:
        pass


async def test_idle_and_header_timeouts_close_connections(nursery: trio.Nursery) -> None:
    up = Upstream()
    await nursery.start(up.serve)
    port, _ = await start_proxy(
        nursery, simple_config(up.port), keepalive_timeout=0.2, client_header_timeout=0.2
    )
    idle = await Client.open(port)
    assert (await idle.request()).status == 200
    with trio.fail_after(3):  # the watchdog closes the idle keep-alive connection
        assert await idle.stream.receive_some(10) == b""
    await idle.aclose()
    slow = await trio.open_tcp_stream("127.0.0.1", port)
    await slow.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n")  # never finishes its head
    with trio.fail_after(3):
        assert await slow.receive_some(10) == b""
    await slow.aclose()
    assert (await request(port)).status == 200


def test_watchdog_wakes_only_expired_waits() -> None:
    from gateway.http import Watchdog

    dog = Watchdog(tick=0.01)
    a, b = dog.slot(), dog.slot()
    a.deadline, b.deadline = 1.0, 5.0
    assert dog.check(2.0) == 1
    assert a.expired
    assert not b.expired
    dog.release(b)
    assert dog.check(10.0) == 0


@given(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [b"keep-alive", b"Keep-Alive", b"CLOSE", b"Upgrade", b"keep-alive, Upgrade", b" close "]
        ),
    )
)
def test_connection_tokens_are_split_stripped_and_lower_cased(value: bytes) -> None:
    """The common single values come from a table; every value gives what the general rule
    (split on commas, strip, lower-case) gives."""
    from gateway.http._events import header_tokens

    assert header_tokens(value) == [t.strip().lower() for t in value.split(b",")]


def test_watchdog_deadlines_follow_its_clock() -> None:
    """Slots take their watchdog's clock: on Trio's mock clock a silent peer times out in
    virtual time (the default, ``time.monotonic``, would never move there)."""
    from gateway.http import Watchdog
    from gateway.http._io import receive

    async def main() -> float:
        a, b = socket.socketpair()
        a.setblocking(False)
        dog = Watchdog(tick=0.05, clock=trio.current_time)
        slot = dog.slot()
        assert slot.clock is trio.current_time
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        started = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(dog.run)
                with pytest.raises(trio.TooSlowError):
                    await receive(stream, timeout=30.0, slot=slot)
                nursery.cancel_scope.cancel()
        finally:
            a.close()
            b.close()
        return trio.current_time() - started

    waited = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert 30.0 <= waited <= 30.1


def _watched_wait(client_side: Any) -> tuple[type[BaseException] | None, float, float]:
    """An upstream wait (30 s read timeout) of a watched slot on Trio's mock clock, while
    ``client_side(peer)`` acts on the client's end after 0.2 s: what the wait raised, when
    (virtual seconds), and the slot's last peek."""
    from gateway.http import Watchdog
    from gateway.http._io import receive

    async def main() -> tuple[type[BaseException] | None, float, float]:
        client, client_peer = socket.socketpair()
        upstream, upstream_peer = socket.socketpair()
        for sock in (client, upstream):
            sock.setblocking(False)
        dog = Watchdog(tick=0.05, clock=trio.current_time)
        slot = dog.slot()
        slot.client = client
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(upstream))
        started = trio.current_time()
        raised: type[BaseException] | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(dog.run)
                await trio.sleep(0.2)
                client_side(client_peer)
                try:
                    await receive(stream, timeout=30.0, wait_first=True, slot=slot)
                except (trio.TooSlowError, trio.BrokenResourceError) as exc:
                    raised = type(exc)
                nursery.cancel_scope.cancel()
        finally:
            for sock in (client, client_peer, upstream, upstream_peer):
                sock.close()
        return raised, trio.current_time() - started, slot.peeked - started

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_watchdog_wakes_an_upstream_wait_when_the_client_half_closes() -> None:
    from gateway.http import ClientGone

    raised, waited, _ = _watched_wait(lambda peer: peer.shutdown(socket.SHUT_WR))
    assert raised is ClientGone
    # the wait started at 0.2 s; the client is checked once it has lasted 1 s
    assert 1.2 <= waited <= 1.3


def test_watchdog_wakes_an_upstream_wait_when_the_client_resets() -> None:
    from gateway.http import ClientGone

    def reset(peer: socket.socket) -> None:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        peer.close()

    raised, waited, _ = _watched_wait(reset)
    assert raised is ClientGone
    assert 1.2 <= waited <= 1.3


def test_watchdog_leaves_a_client_with_pending_data_alone() -> None:
    """A pipelined request waiting in the client's socket: alive, peeked once a second."""
    raised, waited, peeked = _watched_wait(lambda peer: peer.send(b"GET /next HTTP/1.1\r\n"))
    assert raised is trio.TooSlowError
    assert 30.0 <= waited <= 30.3
    assert 29.0 <= peeked <= 30.3


def test_watchdog_leaves_a_silent_client_alone() -> None:
    raised, waited, _ = _watched_wait(lambda peer: None)
    assert raised is trio.TooSlowError
    assert 30.0 <= waited <= 30.3


def test_watchdog_peeks_only_long_waits_on_another_socket_than_the_client() -> None:
    """Waits on the client itself are never peeked (their own read sees the EOF), nor waits
    shorter than ``peek_after``; one slot is peeked at most once per ``peek_after``."""
    from gateway.http import Watchdog

    async def main() -> None:
        client, peer = socket.socketpair()
        upstream, upstream_peer = socket.socketpair()
        dog = Watchdog(clock=trio.current_time, peek_after=1.0)
        slot = dog.slot()
        slot.client = client
        peer.shutdown(socket.SHUT_WR)
        try:
            slot.sock, slot.since = client, 0.0
            assert dog.check(10.0) == 0
            assert not slot.client_gone
            slot.sock = upstream
            slot.since = 9.5
            assert dog.check(10.0) == 0  # 0.5 s into the wait: not yet
            slot.peeked, slot.since = 10.5, 9.0
            assert dog.check(11.0) == 0  # peeked 0.5 s ago
            assert dog.check(11.5) == 1
            assert slot.client_gone
            assert slot.peeked == 11.5
            slot.client_gone = False
            slot.client = None  # not watched (no socket known)
            assert dog.check(20.0) == 0
        finally:
            for sock in (client, peer, upstream, upstream_peer):
                sock.close()

    trio.run(main, clock=trio.testing.MockClock())
