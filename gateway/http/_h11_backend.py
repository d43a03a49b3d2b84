"""The reference parser backend: h11 parses heads and frames bodies.

A fresh ``h11.Connection`` is used per message: we never send through it (our own encoder
writes our messages), so its state machine only has to track the peer's side. The raw head
checks of ``_events`` run first, because h11 accepts several smuggling vectors.
"""

from __future__ import annotations

import h11

from gateway.http._events import (
    CLOSED,
    END,
    NEED_DATA,
    PAUSED,
    HttpError,
    Limits,
    RequestHead,
    ResponseHead,
    Sentinel,
    build_request_head,
    build_response_head,
    check_head_block,
    find_head_end,
)

__all__ = ["H11RequestParser", "H11ResponseParser"]

_NO_LIMIT = 1 << 62


def _status(exc: h11.RemoteProtocolError, default: int = 400) -> int:
    hint = exc.error_status_hint
    return hint if isinstance(hint, int) and hint >= 400 else default


class _H11Side:
    """What both directions share: bytes go to our buffer until a head is complete (our own
    head checks run on it), then to a fresh ``h11.Connection`` for the rest of the message."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._eof = False
        self._conn: h11.Connection | None = None
        self._done = False

    def _error_status(self, exc: h11.RemoteProtocolError) -> int:
        raise NotImplementedError

    def receive_data(self, data: bytes) -> None:
        if self._conn is not None and not self._done:
            try:
                self._conn.receive_data(data)
            except h11.RemoteProtocolError as exc:
                raise HttpError(self._error_status(exc), str(exc)) from exc
            if not data:
                self._eof = True
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    def trailing_data(self) -> bytes:
        if self._conn is None:
            return bytes(self._buf)
        data, _closed = self._conn.trailing_data
        return bytes(data)


class H11RequestParser(_H11Side):
    def _error_status(self, exc: h11.RemoteProtocolError) -> int:
        return _status(exc)

    def next_event(self) -> RequestHead | bytes | Sentinel:
        if self._done:
            return PAUSED
        conn = self._conn
        if conn is None:
            while self._buf.startswith(b"\r\n"):
                del self._buf[:2]
            end = find_head_end(self._buf, self._limits, request=True)
            if end < 0:
                if self._eof:
                    if self._buf:
                        raise HttpError(400, "connection closed inside a request head")
                    return CLOSED
                return NEED_DATA
            check_head_block(bytes(self._buf[:end]), self._limits, request=True)
            conn = self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_NO_LIMIT)
            conn.receive_data(bytes(self._buf))
            if self._eof:
                conn.receive_data(b"")
            self._buf = bytearray()
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(self._error_status(exc), str(exc)) from exc
        if ev is h11.NEED_DATA:
            if self._eof:
                raise HttpError(400, "connection closed inside a request body")
            return NEED_DATA
        if isinstance(ev, h11.Data):
            return bytes(ev.data)
        if isinstance(ev, h11.Request):
            return build_request_head(
                ev.method.decode("latin-1"),
                ev.target.decode("latin-1"),
                ev.http_version.decode("latin-1"),
                [(k, v) for k, v in ev.headers],
            )
        if isinstance(ev, h11.EndOfMessage):
            self._done = True
            return END
        if isinstance(ev, h11.ConnectionClosed):
            return CLOSED
        return PAUSED

    def start_next_cycle(self) -> None:
        self._buf = bytearray(self.trailing_data())
        self._conn = None
        self._done = False


class H11ResponseParser(_H11Side):
    def __init__(self, limits: Limits, method: str, *, upgrade: bool = False) -> None:
        super().__init__(limits)
        self._method = method.encode("latin-1")
        self._upgrade = upgrade
        self._switched = False

    def _error_status(self, exc: h11.RemoteProtocolError) -> int:
        return 502

    def _new_conn(self) -> h11.Connection:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_NO_LIMIT)
        headers = [(b"host", b"upstream"), (b"content-length", b"0")]
        if self._upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
        conn.send(h11.Request(method=self._method, target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())
        return conn

    @property
    def reusable(self) -> bool:
        conn = self._conn
        return (
            self._done
            and not self._switched
            and conn is not None
            and conn.their_state is h11.DONE
            and not conn.trailing_data[0]
        )

    def next_event(self) -> ResponseHead | bytes | Sentinel:
        if self._done:
            return PAUSED
        conn = self._conn
        if conn is None:
            end = find_head_end(self._buf, self._limits, request=False)
            if end < 0:
                if self._eof:
                    raise HttpError(502, "upstream closed before a complete response head")
                return NEED_DATA
            check_head_block(bytes(self._buf[:end]), self._limits, request=False)
            conn = self._conn = self._new_conn()
            conn.receive_data(bytes(self._buf))
            if self._eof:
                conn.receive_data(b"")
            self._buf = bytearray()
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(self._error_status(exc), str(exc)) from exc
        if ev is h11.NEED_DATA:
            if self._eof:
                raise HttpError(502, "upstream closed inside a response")
            return NEED_DATA
        if isinstance(ev, h11.Data):
            return bytes(ev.data)
        if isinstance(ev, (h11.Response, h11.InformationalResponse)):
            head = build_response_head(
                ev.status_code,
                bytes(ev.reason),
                ev.http_version.decode("latin-1"),
                [(k, v) for k, v in ev.headers],
            )
            if isinstance(ev, h11.InformationalResponse):
                if ev.status_code == 101:
                    self._switched = self._done = True
                else:
                    # back to our own head checks for the next head
                    self._buf = bytearray(conn.trailing_data[0])
                    self._conn = None
            return head
        if isinstance(ev, h11.EndOfMessage):
            self._done = True
            return END
        if isinstance(ev, h11.ConnectionClosed):
            raise HttpError(502, "upstream closed")
        return PAUSED
