"""Opening listening sockets from ``ListenAddress`` entries."""

from __future__ import annotations

import socket as stdlib_socket

import trio

from gateway.settings import ListenAddress


async def open_listener(address: ListenAddress) -> trio.SocketListener:
    """Bind one TCP listener (``reuseport`` and ``backlog`` honoured; port 0 = ephemeral)."""
    family = trio.socket.AF_INET6 if ":" in address.host else trio.socket.AF_INET
    host = address.host
    if host in ("*", ""):
        host = "0.0.0.0"
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        if address.reuseport and hasattr(stdlib_socket, "SO_REUSEPORT"):
            sock.setsockopt(trio.socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
        if family == trio.socket.AF_INET6 and address.ipv6only is not None:
            sock.setsockopt(
                trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, int(address.ipv6only)
            )
        await sock.bind((host, address.port))
        sock.listen(address.backlog or 511)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def bound_address(listener: trio.SocketListener) -> tuple[str, int]:
    host, port = listener.socket.getsockname()[:2]
    return str(host), int(port)
