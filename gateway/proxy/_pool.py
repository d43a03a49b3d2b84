"""Keep-alive connections to upstreams, pooled per (host, port, TLS parameters).

Theory of operation: a request ``acquire``s a connection for its pool key: the most
recently used idle one (LIFO keeps few connections warm) whose idle time is within
``idle_timeout`` and that the peer has not closed (a non-blocking ``MSG_PEEK`` sees a FIN
without reading), else a new one. After the response it ``release``s it: kept only if the
response was read to its end on a persistent connection, the request count is below
``max_requests`` and the pool has room (``size`` idle connections per key); otherwise
closed. Idle times are on ``clock``, the system's monotonic clock by default (cheaper
than Trio's clock; tests pass ``trio.current_time`` to run the pool on a mock clock). A
pooled connection can still be closed by the upstream just as we reuse it; the proxy
retries such failures only for idempotent requests whose body it still has.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Hashable
from typing import Any

import trio

from gateway.http._io import raw_socket

__all__ = ["ConnectionPool", "UpstreamConnection", "connect_upstream"]

# A connection idle for less than this is reused without peeking (a syscall): upstreams
# close idle connections after seconds, and a failure on reuse is retried when safe.
PEEK_AFTER = 1.0


class UpstreamConnection:
    __slots__ = ("idle_since", "key", "requests", "reused", "sock", "stream")

    def __init__(self, stream: trio.abc.Stream, key: Hashable) -> None:
        self.stream = stream
        # the stdlib socket of a plain TCP stream, for gateway.http's I/O helpers (None: TLS)
        self.sock = raw_socket(stream)
        self.key = key
        self.requests = 0
        self.idle_since = 0.0
        self.reused = False

    def _socket(self) -> socket.socket | None:
        # the stdlib socket under trio's wrapper (under TLS too): a synchronous peek
        if self.sock is not None:
            return self.sock
        stream = self.stream
        return raw_socket(stream.transport_stream) if isinstance(stream, trio.SSLStream) else None

    def peer_closed(self) -> bool:
        """True when the upstream closed (or sent unexpected bytes on) an idle connection."""
        sock = self._socket()
        if sock is None:
            return False
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        # EOF, or bytes nobody asked for (for TLS this may be a session ticket: keep it)
        return not data or not isinstance(self.stream, trio.SSLStream)


async def connect_upstream(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    connect_timeout: float,
    verify_depth: int | None = None,
) -> trio.abc.Stream:
    """Open a TCP (and TLS) connection; raises ``trio.TooSlowError`` or ``OSError``.

    ``verify_depth`` (a service's ``tls_verify_depth``): at most that many certificates
    above the server's own in the verified chain, as nginx's ``proxy_ssl_verify_depth``.
    """
    with trio.fail_after(connect_timeout):
        tcp = await trio.open_tcp_stream(host, port)
        try:
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is None:
                return tcp
            tls = trio.SSLStream(tcp, ssl_context, server_hostname=server_hostname or host)
            await tls.do_handshake()
            if verify_depth is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED:
                depth = verified_chain_length(tls) - 1
                if depth > verify_depth:
                    raise ssl.SSLCertVerificationError(
                        f"upstream certificate chain depth {depth} exceeds "
                        f"tls_verify_depth {verify_depth}"
                    )
            return tls
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise


def verified_chain_length(tls: trio.SSLStream[Any]) -> int:
    """How many certificates the verified chain of ``tls`` holds (leaf to trust anchor).

    Python 3.13 has ``SSLObject.get_verified_chain``; 3.11 and 3.12 expose the same OpenSSL
    call on the private ``_sslobj`` (present since 3.10).
    """
    obj: Any = tls._ssl_object  # trio keeps the SSLObject private
    getter = getattr(obj, "get_verified_chain", None) or obj._sslobj.get_verified_chain
    return len(getter() or ())


class ConnectionPool:
    """Idle upstream connections by key. Lives across config versions."""

    def __init__(
        self,
        *,
        size: int = 512,
        max_requests: int = 10000,
        idle_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.size = size
        self.clock = clock
        self.max_requests = max_requests
        self.idle_timeout = idle_timeout
        self._idle: dict[Hashable, list[UpstreamConnection]] = {}
        self.created = 0
        self.reused = 0

    def idle_count(self, key: Hashable | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def acquire(self, key: Hashable) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = self.clock()
        while idle:
            conn = idle.pop()
            idle_for = now - conn.idle_since
            if (self.idle_timeout and idle_for > self.idle_timeout) or (
                idle_for > PEEK_AFTER and conn.peer_closed()
            ):
                _close_soon(conn)
                continue
            conn.reused = True
            self.reused += 1
            return conn
        return None

    def new(self, stream: trio.abc.Stream, key: Hashable) -> UpstreamConnection:
        self.created += 1
        return UpstreamConnection(stream, key)

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        conn.requests += 1
        if (
            not reusable
            or self.size <= 0
            or (self.max_requests and conn.requests >= self.max_requests)
        ):
            _close_soon(conn)
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.size:
            _close_soon(idle.pop(0))
        conn.idle_since = self.clock()
        idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        _close_soon(conn)

    def sweep(self) -> None:
        """Close idle connections past the idle timeout (called periodically)."""
        if not self.idle_timeout:
            return
        limit = self.clock() - self.idle_timeout
        for key in list(self._idle):
            keep = []
            for conn in self._idle[key]:
                if conn.idle_since < limit:
                    _close_soon(conn)
                else:
                    keep.append(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def close_all(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                _close_soon(conn)
        self._idle.clear()


def _close_soon(conn: UpstreamConnection) -> None:
    """Close without waiting (no TLS close_notify exchange with a possibly dead peer)."""
    stream: object = conn.stream
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
