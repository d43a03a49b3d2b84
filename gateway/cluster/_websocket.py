"""Our small websocket interface for the cluster link, over trio-websocket.

Theory of operation
-------------------
trio-websocket runs one *reader task* per connection in a nursery we pass in; that task
parses frames, answers pings and queues messages for ``get_message``. Its sends have no
timeouts and its handshake waits have none either, so every await here is bounded by the
caller's durations. Everything else in ``gateway.cluster`` uses :class:`ClusterWebSocket`
(``receive`` / ``send`` / ``close``) and the two openers below, so that the library could be
swapped for raw wsproto without touching the sessions.

Errors: every way a link can end (close frame, broken TLS stream, send timeout) surfaces as
:class:`LinkClosed` from ``receive`` / ``send``. trio-websocket bug #184 (a pong sent while
closing raises wsproto's ``LocalProtocolError`` out of the reader task) is absorbed by
:func:`absorb_reader_errors` around the connection nursery.

The server opener runs *after* :func:`gateway.cluster.accept_cluster_peer`: a peer without
a valid certificate never gets here. It refuses any other path (404) and any upgrade that
does not offer our subprotocol (400) before a websocket frame is exchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import cast

import trio
import trio_websocket
from wsproto.utilities import LocalProtocolError

__all__ = [
    "ClusterWebSocket",
    "LinkClosed",
    "LinkRefused",
    "RecordingStream",
    "absorb_reader_errors",
    "accept_websocket",
    "connect_websocket",
]

log = logging.getLogger("gateway.cluster")

#: trio-websocket's receive buffer; 64 KiB instead of 4 KiB (snapshots are large).
RECEIVE_BUFFER = 65536
#: How long a close frame may take to go out when the closing side is being cancelled.
CANCELLED_CLOSE_WAIT = 0.1


class LinkClosed(Exception):
    """The websocket is gone; ``code``/``reason`` as the close frame said (1006: abnormal)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"link closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class LinkRefused(Exception):
    """The websocket upgrade failed (rejected, wrong subprotocol, broken stream, timeout)."""


class RecordingStream(trio.abc.Stream):
    """Pass-through stream that remembers the first transport error and can report it.

    trio-websocket swallows transport errors inside its reader task; the data plane wants
    to know *why* the link broke (a refused certificate shows up here under TLS 1.3).
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.error: BaseException | None = None
        self.on_error: trio.CancelScope | None = None

    def _record(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self.on_error is not None:
            self.on_error.cancel()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.inner.send_all(data)
        except trio.BrokenResourceError as exc:
            self._record(exc)
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self.inner.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            self._record(exc)
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


class ClusterWebSocket:
    """One open cluster websocket with bounded sends and closes."""

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, stream: RecordingStream, *, timeout: float
    ) -> None:
        self._ws = ws
        self.stream = stream
        self.timeout = timeout

    def _closed(self) -> LinkClosed:
        reason = self._ws.closed
        if self.stream.error is not None:
            return LinkClosed(1006, str(self.stream.error))
        if reason is None:
            return LinkClosed(1006, "connection lost")
        return LinkClosed(reason.code, reason.reason or reason.name)

    async def receive(self) -> bytes | str:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed:
            raise self._closed() from None

    async def send(self, payload: bytes | str) -> None:
        """Send one message; a send slower than ``timeout`` breaks the link."""
        try:
            with trio.fail_after(self.timeout):
                await self._ws.send_message(payload)
        except trio.TooSlowError:
            await self.abort()
            raise LinkClosed(1006, f"send timed out after {self.timeout:g} s") from None
        except trio_websocket.ConnectionClosed:
            raise self._closed() from None

    async def close(self, code: int = 1000, reason: str = "", *, wait: float = 2.0) -> None:
        """Close frame and closing handshake (at most *wait* s); safe when cancelled.

        When the caller is being cancelled (its node is stopping), the reader task that
        would take the peer's answer is being cancelled with it, so the handshake cannot
        complete: the close frame gets ``CANCELLED_CLOSE_WAIT`` to go out and the link is
        dropped, rather than every link holding the shutdown for *wait* seconds.
        """
        if trio.current_effective_deadline() == -math.inf:
            wait = min(wait, CANCELLED_CLOSE_WAIT)
        with trio.CancelScope(shield=True), trio.move_on_after(min(self.timeout, wait)):
            try:
                await self._ws.aclose(code, reason or None)
            except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
                pass
        await self.abort()

    async def abort(self) -> None:
        await trio.aclose_forcefully(self.stream)


@contextlib.contextmanager
def absorb_reader_errors() -> Iterator[None]:
    """Wrap the nursery hosting a reader task: trio-websocket #184 and stream breakage.

    The reader task may raise wsproto's ``LocalProtocolError`` (a pong during a close) or
    a transport error that the library did not translate; either means the link is over,
    which the session already handles.
    """
    try:
        yield
    except* (LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def accept_websocket(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    *,
    path: str,
    subprotocol: str,
    max_message_size: int,
    timeout: float,
    peer: str,
) -> ClusterWebSocket | None:
    """Server side of the upgrade; None when the request was refused (logged)."""
    recording = RecordingStream(stream)
    try:
        with trio.fail_after(timeout):
            request = await trio_websocket.wrap_server_stream(
                nursery,
                recording,
                max_message_size=max_message_size,
                receive_buffer_size=RECEIVE_BUFFER,
            )
            requested = request.path.split("?", 1)[0]
            if requested != path:
                log.warning("data plane %s asked for %s, not %s: refused", peer, requested, path)
                await request.reject(404, body=b"not found\n")
                return None
            if subprotocol not in request.proposed_subprotocols:
                log.warning(
                    "data plane %s did not offer subprotocol %s (offered %s): refused",
                    peer,
                    subprotocol,
                    ", ".join(request.proposed_subprotocols) or "none",
                )
                await request.reject(400, body=b"unsupported websocket subprotocol\n")
                return None
            ws = await request.accept(subprotocol=subprotocol)
    except trio.TooSlowError:
        log.warning("data plane %s: no websocket upgrade within %g s", peer, timeout)
        await trio.aclose_forcefully(recording)
        return None
    except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, LocalProtocolError) as exc:
        log.warning("data plane %s: websocket upgrade failed: %s", peer, exc)
        await trio.aclose_forcefully(recording)
        return None
    return ClusterWebSocket(ws, recording, timeout=timeout)


async def connect_websocket(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    *,
    host: str,
    path: str,
    subprotocol: str,
    max_message_size: int,
    timeout: float,
) -> ClusterWebSocket:
    """Client side of the upgrade. Raises :class:`LinkRefused`.

    The caller must catch ``trio_websocket.ConnectionRejected`` (``except*``) around
    *nursery*: trio-websocket raises a refused upgrade from the reader task.
    """
    recording = RecordingStream(stream)
    with trio.move_on_after(timeout) as scope:
        recording.on_error = scope
        ws = await trio_websocket.wrap_client_stream(
            nursery,
            cast("trio.SocketStream", recording),
            host,
            path,
            subprotocols=[subprotocol],
            max_message_size=max_message_size,
            receive_buffer_size=RECEIVE_BUFFER,
        )
    recording.on_error = None
    if scope.cancelled_caught:
        await trio.aclose_forcefully(recording)
        if recording.error is not None:
            raise LinkRefused(str(recording.error)) from recording.error
        raise LinkRefused(f"no websocket upgrade within {timeout:g} s")
    if ws.subprotocol != subprotocol:
        await trio.aclose_forcefully(recording)
        raise LinkRefused(f"the control plane chose subprotocol {ws.subprotocol!r}")
    return ClusterWebSocket(ws, recording, timeout=timeout)
