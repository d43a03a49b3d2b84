"""A small HTTP/1.1 server (h11) for the Admin and Status APIs.

These APIs are low-traffic and answer from memory or the store, so the server buffers each
request body (bounded by ``max_body``) and hands a complete ``AdminRequest`` to the app.
Malformed HTTP gets a 4xx and the connection is closed; nothing a client sends can take the
server down.
"""

from __future__ import annotations

import http
import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

from gateway._access_log import AccessLog, basic_user, combined_line, open_access_log
from gateway._version import __version__
from gateway.admin._app import AdminRequest, AdminResponse

log = logging.getLogger("gateway.admin")

App = Callable[[AdminRequest], Awaitable[AdminResponse]]

_RECV = 16 * 1024
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_IDLE_TIMEOUT = 60.0
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 4 * 1024 * 1024


async def serve_http(
    app: App,
    listeners: list[trio.SocketListener],
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_body: int = 16 * 1024 * 1024,
    name: str = "admin",
    access_log: str | Path = "off",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``listeners`` until cancelled; one line per request in
    ``access_log`` (``off``, ``stdout``, ``stderr`` or a path)."""
    wrapped: list[trio.abc.Listener[trio.abc.Stream]] = []
    for listener in listeners:
        if ssl_context is not None:
            wrapped.append(trio.SSLListener(listener, ssl_context, https_compatible=True))
        else:
            wrapped.append(listener)
    async with open_access_log(access_log) as log_to:
        handler = partial(_serve_connection, app, max_body=max_body, name=name, log_to=log_to)
        await _serve(handler, wrapped, task_status)


async def _serve(
    handler: Callable[[trio.abc.Stream], Awaitable[None]],
    wrapped: list[trio.abc.Listener[trio.abc.Stream]],
    task_status: trio.TaskStatus[None],
) -> None:
    async with trio.open_nursery() as nursery:
        # One task per connection, supervised by serve_listeners' nursery.
        await nursery.start(partial(trio.serve_listeners, handler, wrapped))
        task_status.started()


async def _serve_connection(
    app: App, stream: trio.abc.Stream, *, max_body: int, name: str, log_to: AccessLog | None
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    client = _peer_ip(stream) if log_to is not None else ""
    try:
        while True:
            request, body, error = await _read_request(conn, stream, max_body)
            if error is not None:
                await _send(conn, stream, error, close=True)
                if log_to is not None:
                    _log(log_to, client, None, error)
                await _linger(stream)
                return
            if request is None:
                return
            try:
                response = await app(_to_admin_request(request, body))
            except Exception:
                log.exception("%s API handler failed for %s", name, request.target)
                response = AdminResponse.message(500, "An unexpected error occurred")
            if request.method == b"HEAD":
                response = AdminResponse(status=response.status, headers=response.headers)
            await _send(conn, stream, response, close=False)
            if log_to is not None:
                _log(log_to, client, request, response)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        return
    except trio.TooSlowError:
        return
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await stream.aclose()


def _peer_ip(stream: trio.abc.Stream) -> str:
    transport: object = stream
    while isinstance(transport, trio.SSLStream):
        transport = transport.transport_stream
    if isinstance(transport, trio.SocketStream):
        try:
            return str(transport.socket.getpeername()[0])
        except OSError:
            pass
    return "-"


def _log(
    log_to: AccessLog, client: str, request: h11.Request | None, response: AdminResponse
) -> None:
    """One line in nginx's ``combined`` format (Kong's admin and status ``access_log``)."""
    request_line = b""
    referer = user_agent = authorization = None
    if request is not None:
        request_line = b"%s %s HTTP/%s" % (request.method, request.target, request.http_version)
        for k, v in request.headers:
            if k == b"user-agent":
                user_agent = v
            elif k == b"referer":
                referer = v
            elif k == b"authorization":
                authorization = v
    sent = len(response.body) if response.status != 204 else 0
    log_to.write(
        combined_line(
            log_to.stamp(),
            client,
            request_line,
            response.status,
            sent,
            remote_user=basic_user(authorization),
            referer=referer,
            user_agent=user_agent,
        )
    )


async def _linger(stream: trio.abc.Stream) -> None:
    """After an error answer: stop sending, then read and drop what the client still sends
    for a moment. Closing with unread data makes the kernel send a reset, and the client
    may then never see the 413 or 400 it was sent (nginx's lingering close)."""
    if isinstance(stream, trio.SocketStream):
        await stream.send_eof()
    dropped = 0
    with trio.move_on_after(_LINGER_SECONDS):
        while dropped < _LINGER_BYTES:
            data = await stream.receive_some(_RECV)
            if not data:
                break
            dropped += len(data)


async def _receive(conn: h11.Connection, stream: trio.abc.Stream) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            with trio.fail_after(_IDLE_TIMEOUT):
                data = await stream.receive_some(_RECV)
            conn.receive_data(bytes(data))
            continue
        return event  # type: ignore[return-value]


async def _read_request(
    conn: h11.Connection, stream: trio.abc.Stream, max_body: int
) -> tuple[h11.Request | None, bytes, AdminResponse | None]:
    try:
        event = await _receive(conn, stream)
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None, b"", None
        if not isinstance(event, h11.Request):
            return None, b"", None
        if event.http_version not in (b"1.0", b"1.1"):
            return None, b"", AdminResponse.message(505, "HTTP Version Not Supported")
        length = None
        for k, v in event.headers:
            if k == b"content-length":
                length = int(v)
        if length is not None and length > max_body:
            return None, b"", AdminResponse.message(413, "Request Entity Too Large")
        if conn.they_are_waiting_for_100_continue:
            await stream.send_all(
                conn.send(
                    h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            ev = await _receive(conn, stream)
            if isinstance(ev, h11.Data):
                size += len(ev.data)
                if size > max_body:
                    return None, b"", AdminResponse.message(413, "Request Entity Too Large")
                chunks.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                return event, b"".join(chunks), None
            else:
                return None, b"", None
    except h11.RemoteProtocolError as exc:
        status = exc.error_status_hint
        return None, b"", AdminResponse.message(status, "Bad request")
    except ValueError:
        return None, b"", AdminResponse.message(400, "Bad request")


def _to_admin_request(request: h11.Request, body: bytes) -> AdminRequest:
    target = request.target.decode("latin-1")
    parts = urlsplit(target)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
    return AdminRequest(
        method=request.method.decode("ascii", "replace"),
        path=unquote(parts.path or "/"),
        query=tuple(parse_qsl(parts.query, keep_blank_values=True)),
        headers=headers,
        body=body,
        raw_path=parts.path or "/",
    )


async def _send(
    conn: h11.Connection, stream: trio.abc.Stream, response: AdminResponse, *, close: bool
) -> None:
    headers = [(k.encode(), v.encode()) for k, v in response.headers]
    headers.append((b"server", f"gateway/{__version__}".encode()))
    if response.status != 204 and response.status >= 200:
        headers.append((b"content-length", str(len(response.body)).encode()))
    if close:
        headers.append((b"connection", b"close"))
    try:
        reason = _REASONS.get(response.status, b"")
        data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if response.body and response.status != 204:
            data += conn.send(h11.Data(data=response.body))
        data += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return
    await stream.send_all(data)
