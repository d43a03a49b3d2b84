"""OpenSSLStream: trio's generic stream conformance suite, mTLS, errors, real TCP."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from OpenSSL import SSL
from tls_helpers import NOW, make_connection, make_context

import certs
from gateway.tls import OpenSSLStream

StreamPair = tuple[OpenSSLStream, OpenSSLStream]


def _pair(
    pki: certs.DevPki,
    transport: tuple[trio.abc.Stream, trio.abc.Stream],
    *,
    max_version: int | None = None,
    client_leaf: certs.IssuedCertificate | None = None,
) -> StreamPair:
    server_ctx = make_context(pki, server=True, max_version=max_version)
    client_ctx = make_context(pki, server=False, max_version=max_version, leaf=client_leaf)
    client_t, server_t = transport
    client = OpenSSLStream(client_t, make_connection(client_ctx, server=False))
    server = OpenSSLStream(server_t, make_connection(server_ctx, server=True))
    return client, server


async def _handshake(a: OpenSSLStream, b: OpenSSLStream) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.do_handshake)
        nursery.start_soon(b.do_handshake)


async def test_generic_stream_conformance(pki: certs.DevPki) -> None:
    async def stream_maker() -> StreamPair:
        return _pair(pki, trio.testing.memory_stream_pair())

    async def clogged_stream_maker() -> StreamPair:
        # TLS 1.2: over an unbuffered lockstep transport a TLS 1.3 server would block
        # flushing its post-handshake session tickets (an artefact of the test transport).
        # The handshake must be complete before the suite starts clogging things.
        client, server = _pair(
            pki, trio.testing.lockstep_stream_pair(), max_version=SSL.TLS1_2_VERSION
        )
        await _handshake(client, server)
        return client, server

    await trio.testing.check_two_way_stream(stream_maker, clogged_stream_maker)


async def test_mutual_tls_exposes_peer_chain(pki: certs.DevPki) -> None:
    client, server = _pair(pki, trio.testing.memory_stream_pair())
    await _handshake(client, server)
    assert server.protocol_version == "TLSv1.3"
    assert server.server_name == "cp.test"
    assert server.peer_certificate() == pki.data_planes[0].certificate
    assert client.peer_certificate() == pki.control_plane.certificate
    assert server.verified_chain() == [
        pki.data_planes[0].certificate,
        pki.intermediates[0].certificate,
        pki.root.certificate,
    ]
    # OpenSSL semantics: the server-side "peer chain" lacks the client's leaf.
    assert server.peer_cert_chain() == [pki.intermediates[0].certificate]
    await client.send_all(b"x" * 200_000)
    received = b""
    while len(received) < 200_000:
        received += await server.receive_some()
    assert received == b"x" * 200_000
    await client.aclose()
    assert await server.receive_some() == b""
    await server.aclose()


async def test_unknown_client_certificate_fails_on_first_client_read(pki: certs.DevPki) -> None:
    other = certs.build_dev_pki(NOW, dp_count=1)
    client, server = _pair(pki, trio.testing.memory_stream_pair(), client_leaf=other.data_planes[0])

    async def server_side() -> None:
        with pytest.raises(trio.BrokenResourceError) as info:
            await server.do_handshake()
        assert isinstance(info.value.__cause__, SSL.Error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        # TLS 1.3: the client's handshake completes; the refusal arrives on its first read.
        await client.do_handshake()
        with pytest.raises(trio.BrokenResourceError) as info:
            await client.receive_some()
        assert "unknown ca" in str(info.value).lower()


async def test_transport_eof_without_close_notify_is_broken(pki: certs.DevPki) -> None:
    client, server = _pair(pki, trio.testing.memory_stream_pair())
    await _handshake(client, server)
    await client.transport_stream.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"late")
    await server.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some()


async def test_eof_during_handshake_is_broken(pki: certs.DevPki) -> None:
    client, server = _pair(pki, trio.testing.memory_stream_pair())
    await client.transport_stream.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await server.do_handshake()


async def test_callback_exception_propagates_and_alert_is_sent(pki: certs.DevPki) -> None:
    class Refused(Exception):
        pass

    def refuse(*_: object) -> bool:
        raise Refused

    server_ctx = make_context(pki, server=True, verify=False)
    server_ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, refuse)
    client_ctx = make_context(pki, server=False)
    client_t, server_t = trio.testing.memory_stream_pair()
    server = OpenSSLStream(server_t, make_connection(server_ctx, server=True))
    client = OpenSSLStream(client_t, make_connection(client_ctx, server=False))

    async def server_side() -> None:
        with pytest.raises(Refused):
            await server.do_handshake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        await client.do_handshake()
        with pytest.raises(trio.BrokenResourceError):
            await client.receive_some()


async def test_mutual_tls_over_tcp_loopback(pki: certs.DevPki) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    server_ctx = make_context(pki, server=True)
    seen: list[bytes] = []

    async def handler(nursery: trio.Nursery) -> None:
        transport = await listeners[0].accept()
        stream = OpenSSLStream(transport, make_connection(server_ctx, server=True))
        async with stream:
            seen.append(await stream.receive_some())
            await stream.send_all(b"pong")
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handler, nursery)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        client_ctx = make_context(pki, server=False)
        client = OpenSSLStream(tcp, make_connection(client_ctx, server=False))
        async with client:
            await client.send_all(b"ping")
            assert await client.receive_some() == b"pong"
            assert await client.receive_some() == b""
    await listeners[0].aclose()
    assert seen == [b"ping"]


async def test_receive_some_rejects_bad_size(pki: certs.DevPki) -> None:
    client, _server = _pair(pki, trio.testing.memory_stream_pair())
    with pytest.raises(ValueError, match="max_bytes"):
        await client.receive_some(0)
