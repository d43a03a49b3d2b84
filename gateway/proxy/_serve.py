"""``serve_proxy``: the proxy listeners of one process.

Task tree (all inside the caller's nursery, which ``serve_proxy`` borrows by running in it):

    serve_proxy
    ├── accept loop per proxy_listen address    (cancelled first on shutdown)
    ├── request counter publisher               (worker processes: to the load board)
    ├── pool sweeper                            (closes idle upstream connections)
    ├── active health checks of the balancers   (reads state.current each round)
    ├── connections nursery (shielded)          (one task per client connection)
    └── access log flusher                      (proxy_access_log; outlives the drain)

On cancellation the accept loops stop and the listening sockets close, idle keep-alive
connections are closed, busy ones finish their current response; after ``drain_timeout``
seconds whatever is left is cancelled. Only then does ``serve_proxy`` return the
cancellation to its caller.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import trio

from gateway._access_log import open_access_log
from gateway.http import ConnectionInfo, ConnectionTracker, Watchdog, serve_connection
from gateway.proxy._balance import ACCEPT_DEFER, REQUESTS_PUBLISH_INTERVAL, LoadBoard
from gateway.proxy._errors import error_body
from gateway.proxy._handler import ProxyHandler, ProxyOptions
from gateway.proxy._health import run_health_checks
from gateway.proxy._pool import ConnectionPool
from gateway.proxy._state import ProxyState
from gateway.proxy._tls import listening_context

__all__ = ["ListenSocket", "bind_listen_sockets", "serve_proxy"]

log = logging.getLogger("gateway.proxy")

SWEEP_INTERVAL = 5.0
# how long a failed handshake may take to send its alert before the connection is closed
ALERT_SEND_TIMEOUT = 1.0
# accept() failures that concern one connection only (trio.SocketListener skips the same)
_SKIP_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
)


class ListenSocket:
    """A bound, listening socket and whether it terminates TLS."""

    __slots__ = ("sock", "ssl")

    def __init__(self, sock: socket.socket, ssl: bool) -> None:
        self.sock = sock
        self.ssl = ssl


def bind_listen_sockets(settings: object) -> list[ListenSocket]:
    """Bind every ``proxy_listen`` address (used by the supervisor to share them)."""
    out: list[ListenSocket] = []
    for addr in getattr(settings, "proxy_listen", ()):
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if addr.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and addr.ipv6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(addr.ipv6only))
        sock.bind((addr.host, addr.port))
        sock.listen(addr.backlog or 511)
        sock.setblocking(False)
        out.append(ListenSocket(sock, bool(addr.ssl)))
    return out


def _default_pairs(settings: object) -> list[tuple[str, str]]:
    certs = getattr(settings, "ssl_cert", ()) or ()
    keys = getattr(settings, "ssl_cert_key", ()) or ()
    return list(zip(certs, keys, strict=False))


async def serve_proxy(
    settings: Any,
    state: ProxyState,
    *,
    sockets: Sequence[ListenSocket] | None = None,
    options: ProxyOptions | None = None,
    drain_timeout: float = 10.0,
    board: LoadBoard | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve every ``proxy_listen`` address until cancelled (then drain and return).

    ``task_status.started`` receives the bound ``(host, port)`` of each listener (useful
    with port 0). ``sockets`` replaces binding (worker processes get inherited ones);
    ``options`` replaces ``ProxyOptions.from_settings(settings)``. ``board``: the shared
    ``LoadBoard`` of a worker process (connections are then spread evenly over the workers,
    and the request count is published for the status API).
    """
    opts = options if options is not None else ProxyOptions.from_settings(settings)
    listen = list(sockets) if sockets is not None else bind_listen_sockets(settings)
    pool = ConnectionPool(
        size=opts.pool_size,
        max_requests=opts.pool_max_requests,
        idle_timeout=opts.pool_idle_timeout,
    )
    async with open_access_log(opts.access_log) as access_log:
        await _serve(
            settings,
            state,
            opts,
            listen,
            pool,
            ProxyHandler(state, opts, pool, access_log),
            drain_timeout,
            board,
            task_status,
        )


async def _serve(
    settings: Any,
    state: ProxyState,
    opts: ProxyOptions,
    listen: list[ListenSocket],
    pool: ConnectionPool,
    handler: ProxyHandler,
    drain_timeout: float,
    board: LoadBoard | None,
    task_status: trio.TaskStatus[list[tuple[str, int]]],
) -> None:
    """The listeners, connections and drain of ``serve_proxy`` (inside its access log)."""
    tls_context: ssl.SSLContext | None = None
    if any(ls.ssl for ls in listen):
        tls_context = listening_context(
            _default_pairs(settings),
            lambda: state.current.certificates,
            lambda: state.current.plugins.certificate,
        )
    tracker = ConnectionTracker()
    # requests the parser refused reach no handler: the access log hears of them here
    refused = handler.log_refused if handler.access_log is not None else None
    state.connections = tracker.__len__
    watchdog = Watchdog()
    # the config and everything imported so far live for long: keep them out of the
    # collector's generations (shorter pauses with large configs)
    gc.freeze()
    listeners = [
        (trio.SocketListener(trio.socket.from_stdlib_socket(ls.sock)), ls) for ls in listen
    ]
    bound = [ls.sock.getsockname()[:2] for ls in listen]

    async def connection(stream: trio.SocketStream, secure: bool) -> None:
        # one coroutine (not a wrapper around another): every resume of a connection's task
        # passes through each interpreted level, twice per proxied request
        try:
            try:
                peer = stream.socket.getpeername()
                local = stream.socket.getsockname()
            except OSError:
                # gone before we got to it (a reset right after connecting: ENOTCONN)
                await trio.aclose_forcefully(stream)
                return
            sni: str | None = None
            conn_stream: trio.abc.Stream = stream
            if secure:
                assert tls_context is not None
                tls = trio.SSLStream(stream, tls_context, server_side=True)
                if state.current.plugins.certificate:
                    _tag_peer(tls, peer)
                try:
                    with trio.fail_after(opts.client_header_timeout):
                        await tls.do_handshake()
                except (
                    trio.BrokenResourceError,
                    trio.TooSlowError,
                    ssl.SSLError,
                    OSError,
                ) as exc:
                    if isinstance(exc.__cause__, ssl.SSLError):
                        # TLS refused the handshake (no shared version, a certificate
                        # plugin's rejection...): tell the client with the alert
                        with trio.move_on_after(ALERT_SEND_TIMEOUT):
                            await _send_pending_alert(tls, stream)
                    await trio.aclose_forcefully(stream)
                    return
                sni = _server_name(tls)
                conn_stream = tls
            info = ConnectionInfo(
                client_ip=str(peer[0]),
                client_port=int(peer[1]),
                server_port=int(local[1]),
                scheme="https" if secure else "http",
                sni=sni,
            )
            await serve_connection(
                conn_stream,
                handler,
                info,
                backend=opts.backend,
                limits=opts.limits,
                render_error=_kong_error,
                header_timeout=opts.client_header_timeout,
                keepalive_timeout=opts.keepalive_timeout,
                body_timeout=opts.client_body_timeout,
                send_timeout=opts.client_send_timeout,
                tracker=tracker,
                watchdog=watchdog,
                refused=refused,
            )
        except Exception:
            # serve_connection lets nothing a client does escape; this is the last line: a
            # bug in one connection must not take the listener and every other connection
            # down with it (the connections share one nursery)
            log.exception("connection task failed")
            await trio.aclose_forcefully(stream)
        finally:
            if board is not None:
                board.connection_closed()

    async def accept_loop(
        listener: trio.SocketListener, ls: ListenSocket, conns: trio.Nursery
    ) -> None:
        async with listener:
            while True:
                try:
                    if board is None:
                        stream: trio.SocketStream | None = await listener.accept()
                    else:
                        stream = await _accept_balanced(ls.sock, board)
                except OSError as exc:  # EMFILE and friends: back off, don't die
                    log.warning("accept failed: %r", exc)
                    await trio.sleep(0.05)
                    continue
                if stream is None:
                    continue
                try:
                    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
                if board is not None:
                    board.connection_opened()
                conns.start_soon(connection, stream, ls.ssl)

    async def publish_requests(board: LoadBoard) -> None:
        while True:
            board.served(state.requests_total)
            await trio.sleep(REQUESTS_PUBLISH_INTERVAL)

    async def sweeper() -> None:
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            pool.sweep()

    async with trio.open_nursery() as outer:
        conns_scope = trio.CancelScope(shield=True)

        async def run_connections(task_status: trio.TaskStatus[trio.Nursery]) -> None:
            with conns_scope:
                async with trio.open_nursery() as conns:
                    # the watchdog lives as long as connections do (through the drain)
                    conns.start_soon(watchdog.run)
                    task_status.started(conns)
                    await trio.sleep_forever()

        conns: trio.Nursery = await outer.start(run_connections)
        try:
            async with trio.open_nursery() as accepting:
                if board is not None:
                    board.join()
                    accepting.start_soon(publish_requests, board)
                for listener, ls in listeners:
                    accepting.start_soon(accept_loop, listener, ls, conns)
                accepting.start_soon(sweeper)
                accepting.start_soon(_health_checks, lambda: state.current.balancers)
                task_status.started([(str(h), int(p)) for h, p in bound])
                await trio.sleep_forever()
        finally:
            # graceful drain: shielded, bounded by drain_timeout
            with trio.CancelScope(shield=True):
                tracker.drain()
                with trio.move_on_after(drain_timeout):
                    while len(tracker):
                        await tracker.wait_empty()
                tracker.cancel_all()
                conns_scope.cancel()
                pool.close_all()


async def _accept_balanced(sock: socket.socket, board: LoadBoard) -> trio.SocketStream | None:
    """Accept the next connection unless a less loaded worker should take it (None: it
    went elsewhere, or the failure concerned that connection only)."""
    await trio.lowlevel.wait_readable(sock)
    if not board.may_accept():
        # leave it to the others for a moment; take it ourselves if it is still there
        await trio.sleep(ACCEPT_DEFER)
    try:
        raw, _ = sock.accept()
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in _SKIP_ACCEPT_ERRNOS:
            return None
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(raw))


async def _health_checks(ref: Callable[[], Any]) -> None:
    try:
        await run_health_checks(ref)
    except Exception:
        log.exception("active health checks stopped")


async def _send_pending_alert(tls: trio.SSLStream[Any], stream: trio.SocketStream) -> None:
    # trio's SSLStream drops what the TLS library wrote before the error (the alert): send it
    outgoing = getattr(tls, "_outgoing", None)
    data = outgoing.read() if isinstance(outgoing, ssl.MemoryBIO) else b""
    if data:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, OSError):
            pass


def _tag_peer(tls: trio.SSLStream[Any], peer: Any) -> None:
    # for the certificate phase: the SNI callback sees the SSLObject, not the socket
    obj = getattr(tls, "_ssl_object", None)
    if obj is not None:
        obj.gateway_peer = (str(peer[0]), int(peer[1]))


def _server_name(tls: trio.SSLStream[Any]) -> str | None:
    obj = getattr(tls, "_ssl_object", None)
    name = getattr(obj, "gateway_sni", None) if obj is not None else None
    return name if isinstance(name, str) else None


def _kong_error(status: int, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    return [(b"content-type", b"application/json; charset=utf-8")], error_body(message)


def inherited_sockets(env: str = "GATEWAY_PROXY_FDS") -> list[ListenSocket] | None:
    """Sockets a supervisor passed down: ``GATEWAY_PROXY_FDS=fd:ssl,fd:plain``."""
    value = os.environ.get(env)
    if not value:
        return None
    out = []
    for item in value.split(","):
        fd, _, kind = item.partition(":")
        sock = socket.socket(fileno=int(fd))
        sock.setblocking(False)
        out.append(ListenSocket(sock, kind == "ssl"))
    return out
