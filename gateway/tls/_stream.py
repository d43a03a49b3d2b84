"""A Trio stream speaking TLS through pyOpenSSL over memory BIOs.

Theory of operation
-------------------
``trio.SSLStream`` is tied to the stdlib ``ssl`` module, which cannot give us what the
cluster link needs (the verified chain as cryptography objects, pyOpenSSL's verify and OCSP
callbacks, the OpenSSL bundled with cryptography). This adapter has the same shape.

The ``OpenSSL.SSL.Connection`` is created with no socket, so OpenSSL reads ciphertext from
an incoming memory BIO (``bio_write``) and writes ciphertext to an outgoing one
(``bio_read``). Every TLS operation (handshake, ``recv``, ``send``, ``shutdown``) goes
through :meth:`OpenSSLStream._retry`, which loops:

1. call the OpenSSL operation; it finishes, or raises ``WantReadError`` when it needs
   ciphertext we have not received yet (memory BIOs never block on writing);
2. take the *send lock*, and only then drain the outgoing BIO and send what it held. Taking
   the lock before draining keeps TLS records on the wire in the order OpenSSL produced
   them when one task sends while another receives (a receive can produce records too:
   alerts, key updates, renegotiation);
3. if nothing was sent and the operation wants input, receive from the transport (unless
   another task did so while we waited for the receive lock: then just retry) and feed the
   incoming BIO; on transport EOF call ``bio_shutdown``.

Only step 2 and 3 await, and each await is followed by a fresh call into OpenSSL, so no
task acts on stale state. Errors are mapped like ``trio.SSLStream``: an OpenSSL error or a
truncated stream (EOF without close_notify) breaks the stream and raises
``trio.BrokenResourceError`` with the ``OpenSSL.SSL.Error`` as ``__cause__``; a clean
close_notify reads as EOF (``b""``). Before raising, the alert OpenSSL queued is flushed so
the peer learns why. Exceptions raised by our own callbacks inside OpenSSL (verify, SNI)
come back unchanged, after the same flush.

Differences from ``trio.SSLStream``: no ``unwrap``, no ``https_compatible`` mode, and
``send_eof`` is not supported (TLS has no half-close before 1.3, and the cluster link does
not need it). ``aclose`` sends close_notify and closes the transport without waiting for
the peer's close_notify, as ``trio.SSLStream`` does.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import operator
from collections.abc import Callable
from typing import TypeVar

import trio
from cryptography import x509
from OpenSSL import SSL

__all__ = ["OpenSSLStream"]

T = TypeVar("T")

_RECEIVE_SIZE = 65536
_BIO_CHUNK = 65536
# Plaintext handed to OpenSSL per call; bounds the ciphertext buffered in the BIO.
_SEND_CHUNK = 65536


class _State(enum.Enum):
    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


class _ConflictDetector:
    """Raise BusyResourceError when two tasks use the same direction at once."""

    __slots__ = ("_held", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(self, *exc: object) -> None:
        self._held = False


class OpenSSLStream(trio.abc.Stream):
    """TLS over any :class:`trio.abc.Stream`, driven by a pyOpenSSL ``Connection``.

    The ``connection`` must have been created with ``SSL.Connection(context, None)`` and put
    in accept or connect state (and given SNI) by the caller. The handshake runs on first
    use, or explicitly with :meth:`do_handshake`.
    """

    def __init__(self, transport_stream: trio.abc.Stream, connection: SSL.Connection) -> None:
        self.transport_stream = transport_stream
        self._conn = connection
        self._state = _State.OK
        self._handshake_started = False
        self._handshake_done = trio.Event()
        self._send_lock = trio.StrictFIFOLock()
        self._recv_lock = trio.Lock()
        self._recv_count = 0
        self._send_conflict = _ConflictDetector("another task is sending on this stream")
        self._recv_conflict = _ConflictDetector("another task is receiving on this stream")

    # -- state ---------------------------------------------------------------------------

    @property
    def connection(self) -> SSL.Connection:
        """The underlying pyOpenSSL connection (for inspection, not for I/O)."""
        return self._conn

    @property
    def handshake_done(self) -> bool:
        return self._handshake_done.is_set() and self._state is not _State.BROKEN

    def _check_status(self) -> None:
        if self._state is _State.BROKEN:
            raise trio.BrokenResourceError("the TLS stream is broken")
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("the TLS stream was closed")

    # -- the engine ----------------------------------------------------------------------

    def _drain(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._conn.bio_read(_BIO_CHUNK)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < _BIO_CHUNK:  # saves a call that would only raise WantReadError
                break
        return b"".join(chunks)

    async def _flush(self) -> bool:
        """Send whatever OpenSSL produced; return True if this yielded to the scheduler."""
        lock = self._send_lock
        waited = False
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
            waited = True
        try:
            data = self._drain()
            if not data:
                return waited
            try:
                await self.transport_stream.send_all(data)
            except BaseException:
                # An unknown part of a record went out: the stream cannot be used again.
                self._state = _State.BROKEN
                raise
            return True
        finally:
            lock.release()

    async def _flush_quietly(self) -> None:
        """Best effort: put a queued alert on the wire before we report a failure."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._flush()

    async def _retry(self, fn: Callable[[], T], *, ignore_want_read: bool = False) -> T | None:
        await trio.lowlevel.checkpoint_if_cancelled()
        yielded = False
        while True:
            want_read = False
            finished = False
            result: T | None = None
            try:
                result = fn()
                finished = True
            except SSL.WantReadError:
                want_read = True
            except SSL.Error as exc:
                self._state = _State.BROKEN
                await self._flush_quietly()
                raise trio.BrokenResourceError(_describe_ssl_error(exc)) from exc
            except Exception:
                # Raised by one of our callbacks inside OpenSSL: the peer still gets the alert.
                self._state = _State.BROKEN
                await self._flush_quietly()
                raise
            if ignore_want_read:
                want_read, finished = False, True
            if await self._flush():
                yielded = True
                if not finished:
                    continue  # what we knew about wanting input may be stale now
            if finished:
                break
            if want_read:
                seen = self._recv_count
                async with self._recv_lock:
                    yielded = True
                    if seen == self._recv_count:
                        try:
                            data = await self.transport_stream.receive_some(_RECEIVE_SIZE)
                        except trio.BrokenResourceError:
                            # (Cancellation is fine: nothing was consumed.)
                            self._state = _State.BROKEN
                            raise
                        if data:
                            self._conn.bio_write(data)
                        else:
                            self._conn.bio_shutdown()
                        self._recv_count += 1
        if not yielded:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    # -- handshake -----------------------------------------------------------------------

    async def _ensure_handshake(self, *, checkpoint: bool) -> None:
        if not self._handshake_started:
            self._handshake_started = True
            try:
                await self._retry(self._conn.do_handshake)
            except BaseException:
                self._state = _State.BROKEN
                raise
            finally:
                self._handshake_done.set()
        elif checkpoint or not self._handshake_done.is_set():
            await self._handshake_done.wait()
        self._check_status()

    async def do_handshake(self) -> None:
        """Run the TLS handshake now (it otherwise runs on first use); idempotent.

        Raises ``trio.BrokenResourceError`` if it fails; the ``__cause__`` is the
        ``OpenSSL.SSL.Error``. With TLS 1.3 a *client* whose certificate the server refuses
        still completes the handshake: the refusal arrives on its first receive.
        """
        self._check_status()
        await self._ensure_handshake(checkpoint=True)

    # -- trio.abc.Stream -------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        with self._recv_conflict:
            self._check_status()
            if max_bytes is None:
                max_bytes = _RECEIVE_SIZE
            else:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be >= 1")
            await self._ensure_handshake(checkpoint=False)
            size = max_bytes

            def recv() -> bytes:
                try:
                    return self._conn.recv(size)
                except SSL.ZeroReturnError:  # the peer sent close_notify
                    return b""

            data = await self._retry(recv)
            assert data is not None
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            self._check_status()
            await self._ensure_handshake(checkpoint=False)
            view = memoryview(data).cast("B")
            if not view:
                await trio.lowlevel.checkpoint()
                return
            while view:
                chunk = view[:_SEND_CHUNK]
                written = await self._retry(functools.partial(self._conn.send, chunk))
                assert written is not None
                view = view[written:]

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            self._check_status()
            # A receive may be flushing an alert through the transport: share its lock.
            async with self._send_lock:
                await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send close_notify (if the stream is healthy) and close the transport."""
        if self._state is _State.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        if self._state is _State.BROKEN:
            self._state = _State.CLOSED
            await self.transport_stream.aclose()
            return
        try:
            await self._ensure_handshake(checkpoint=False)
            # One SSL_shutdown: queue close_notify, do not wait for the peer's (it may never
            # read again). The peer may already be gone: that is not an error here.
            with contextlib.suppress(trio.BrokenResourceError, trio.BusyResourceError):
                await self._retry(self._conn.shutdown, ignore_want_read=True)
        except BaseException:
            await trio.aclose_forcefully(self.transport_stream)
            raise
        else:
            await self.transport_stream.aclose()
        finally:
            self._state = _State.CLOSED

    # -- what the handshake established --------------------------------------------------

    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's leaf certificate, or None (no handshake yet, or none presented)."""
        return self._conn.get_peer_certificate(as_cryptography=True)

    def peer_cert_chain(self) -> list[x509.Certificate]:
        """The chain the peer sent. NOTE: on the server side OpenSSL omits the leaf."""
        return list(self._conn.get_peer_cert_chain(as_cryptography=True) or [])

    def verified_chain(self) -> list[x509.Certificate]:
        """The chain OpenSSL verified: leaf first, trust anchor last (empty if none)."""
        return list(self._conn.get_verified_chain(as_cryptography=True) or [])

    @property
    def protocol_version(self) -> str:
        return self._conn.get_protocol_version_name()

    @property
    def cipher(self) -> str | None:
        return self._conn.get_cipher_name()

    @property
    def server_name(self) -> str | None:
        """The SNI the client sent (server side) or set (client side)."""
        name = self._conn.get_servername()
        return name.decode("ascii", errors="replace") if name is not None else None


def _describe_ssl_error(exc: SSL.Error) -> str:
    """A one-line reason from an OpenSSL error (its queue holds (lib, func, reason) tuples)."""
    if isinstance(exc, SSL.SysCallError):
        return f"TLS transport failed: {exc.args[1] if len(exc.args) > 1 else exc}"
    details = exc.args[0] if exc.args else None
    if isinstance(details, list) and details:
        reasons = [str(item[-1]) for item in details if isinstance(item, tuple) and item]
        if reasons:
            return "TLS error: " + "; ".join(reasons)
    return f"TLS error: {exc}"
