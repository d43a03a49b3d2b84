"""Cluster connections through a forward proxy (``cluster_use_proxy``, HTTP CONNECT)."""

from __future__ import annotations

import base64
from functools import partial

import pytest
import trio

from gateway.cluster._transport import ProxyTunnelError, open_cluster_transport


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data)


async def _connect_proxy(
    seen: list[bytes], answer: bytes | None, stream: trio.SocketStream
) -> None:
    """A minimal CONNECT proxy: records the request head, then tunnels (or answers)."""
    async with stream:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            head += chunk
        seen.append(head)
        if answer is not None:
            await stream.send_all(answer)
            return
        target = head.split(b" ")[1].decode()
        host, _, port = target.rpartition(":")
        upstream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        async with upstream, trio.open_nursery() as nursery:

            async def pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
                async for data in src:
                    await dst.send_all(data)
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, stream, upstream)
            nursery.start_soon(pump, upstream, stream)


async def _listen(nursery: trio.Nursery, handler: object) -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def test_direct_without_proxy(nursery: trio.Nursery) -> None:
    port = await _listen(nursery, _echo)
    stream = await open_cluster_transport("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"ping")
        assert await stream.receive_some(10) == b"ping"


async def test_tunnel_through_connect_proxy_with_credentials(nursery: trio.Nursery) -> None:
    target = await _listen(nursery, _echo)
    seen: list[bytes] = []
    proxy = await _listen(nursery, partial(_connect_proxy, seen, None))
    stream = await open_cluster_transport(
        "127.0.0.1", target, proxy_server=f"http://user:p%40ss@127.0.0.1:{proxy}"
    )
    async with stream:
        await stream.send_all(b"through the tunnel")
        assert await stream.receive_some(100) == b"through the tunnel"
    head = seen[0].decode()
    assert head.startswith(f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\n")
    token = base64.b64encode(b"user:p@ss").decode()
    assert f"Proxy-Authorization: Basic {token}" in head


async def test_refused_tunnel_is_an_error(nursery: trio.Nursery) -> None:
    proxy = await _listen(
        nursery,
        partial(_connect_proxy, [], b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
    )
    with pytest.raises(ProxyTunnelError, match="407"):
        await open_cluster_transport("127.0.0.1", 9, proxy_server=f"http://127.0.0.1:{proxy}")


async def test_proxy_closing_early_is_an_error(nursery: trio.Nursery) -> None:
    proxy = await _listen(nursery, partial(_connect_proxy, [], b""))
    with pytest.raises(ProxyTunnelError, match="closed"):
        await open_cluster_transport("127.0.0.1", 9, proxy_server=f"http://127.0.0.1:{proxy}")
