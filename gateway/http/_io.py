"""Socket I/O for the hot path, with fewer trips through Trio's scheduler.

``trio.SocketStream.send_all`` / ``receive_some`` each yield to the scheduler at least once
even when the kernel could complete the call at once (a cancellation checkpoint), and a read
that must wait costs a failed ``recv`` plus two scheduler rounds. For plain sockets these
helpers try the non-blocking call first and only wait (``wait_readable`` /
``wait_writable``, which are checkpoints) when the kernel says so. Every request still passes
through at least one checkpoint (waiting for the next request or for the upstream response),
so cancellation and fairness are kept. Other streams (TLS, memory streams in tests) use the
ordinary Trio methods.

``timeout`` (seconds without progress) raises ``trio.TooSlowError``. With a ``WaitSlot`` of a
running ``Watchdog`` it costs two attribute writes: the connection publishes the deadline of
the wait it is in, and one watchdog task per server checks every slot each tick (50 ms) and
wakes an expired wait with ``trio.lowlevel.notify_closing`` (the socket is then closed by
its owner, as timeouts always close the connection here). Deadlines are read from the
watchdog's ``clock``: ``time.monotonic`` by default, a C call, where ``trio.current_time``
runs three interpreted frames (twice per proxied request); pass ``trio.current_time`` to
run the watchdog on Trio's mock clock in tests. Without a slot, a cancel scope is
created, but only when the call really has to wait. A cancel scope per wait costs more than
the rest of the I/O path on a busy server (measured: ~15 % of a proxied request).

The watchdog also watches the client while its connection waits on another socket (the
upstream), as nginx's ``ngx_http_upstream_check_broken_connection``: once such a wait has
lasted ``peek_after`` seconds, and then every ``peek_after`` seconds, it peeks one byte of
the slot's ``client`` socket (``MSG_PEEK``, never blocking). EOF (a half-close included) or
an error other than "no data yet" means the client left: the wait is woken with
``notify_closing`` and raises ``ClientGone``; the socket it waited on is then unusable and
must be closed. Pending data means the client is alive (a pipelined request). Short waits,
the usual case, are never peeked: the cost stays in the watchdog task, one ``recv`` per
long wait and second, and one more store per blocking wait (its start time).
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable

import trio
from trio.lowlevel import notify_closing, wait_readable, wait_writable

__all__ = [
    "ClientGone",
    "WaitSlot",
    "Watchdog",
    "client_socket",
    "raw_socket",
    "receive",
    "send_all",
]

_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)


class ClientGone(trio.BrokenResourceError):
    """The client closed its connection while we waited on another socket (the upstream).
    The socket of that wait was woken with ``notify_closing``: close it, never reuse it."""


class WaitSlot:
    """The wait one connection task is in: socket, start and deadline (``inf``: none), and
    the connection's own ``client`` socket (None: not watched)."""

    __slots__ = (
        "client",
        "client_gone",
        "clock",
        "deadline",
        "expired",
        "peeked",
        "since",
        "sock",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline = math.inf
        self.expired = False
        self.sock: socket.socket | None = None
        self.client: socket.socket | None = None
        self.client_gone = False
        self.since = 0.0
        # the watchdog's last peek at the client (at most one per peek_after seconds)
        self.peeked = -math.inf


class Watchdog:
    """Enforces the deadlines of many ``WaitSlot`` with one task, ``tick`` seconds apart;
    deadlines are ``clock()`` values."""

    def __init__(
        self,
        tick: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        *,
        peek_after: float = 1.0,
    ) -> None:
        self.tick = tick
        self.clock = clock
        # how long a wait on another socket than the client's lasts before the client is
        # checked, and the least time between two checks of one slot
        self.peek_after = peek_after
        self._slots: set[WaitSlot] = set()

    def slot(self) -> WaitSlot:
        slot = WaitSlot(self.clock)
        self._slots.add(slot)
        return slot

    def release(self, slot: WaitSlot) -> None:
        self._slots.discard(slot)

    def check(self, now: float) -> int:
        """Wake the expired waits, and the long waits on the upstream of a client that
        left; returns how many."""
        fired = 0
        peek_after = self.peek_after
        for slot in self._slots:
            if slot.deadline <= now:
                slot.deadline = math.inf
                slot.expired = True
                if slot.sock is not None:
                    notify_closing(slot.sock)
                fired += 1
                continue
            sock = slot.sock
            client = slot.client
            if sock is None or client is None or sock is client:
                continue
            last = slot.since if slot.since > slot.peeked else slot.peeked
            if now - last < peek_after:
                continue
            slot.peeked = now
            if _left(client):
                slot.client_gone = True
                notify_closing(sock)
                fired += 1
        return fired

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.tick)
            self.check(self.clock())


def _left(client: socket.socket) -> bool:
    """Whether the client closed its side (nginx: ``recv(fd, buf, 1, MSG_PEEK)``)."""
    try:
        return not client.recv(1, _PEEK)
    except (BlockingIOError, InterruptedError):
        return False  # alive, nothing sent
    except OSError:
        return True  # reset, or closed under us


def client_socket(stream: object) -> socket.socket | None:
    """The stdlib socket of a client connection, plain or TLS (under a ``trio.SSLStream``),
    for the watchdog's peeks: never read from or written to."""
    raw = raw_socket(stream)
    if raw is None and isinstance(stream, trio.SSLStream):
        raw = raw_socket(stream.transport_stream)
    return raw


def raw_socket(stream: object) -> socket.socket | None:
    """The stdlib socket under a plain ``trio.SocketStream`` (None for other streams).
    Connections look it up once and pass it to ``send_all`` / ``receive`` as ``sock``."""
    if type(stream) is trio.SocketStream:
        raw = getattr(stream.socket, "_sock", None)
        if isinstance(raw, socket.socket):
            return raw
    return None


async def _wait(
    raw: socket.socket, readable: bool, timeout: float | None, slot: WaitSlot | None
) -> None:
    wait = wait_readable if readable else wait_writable
    if timeout is None:
        await wait(raw)
        return
    if slot is not None:
        # the flags are False here: the watchdog sets them only during a wait, and the
        # finally clause clears them (also when the wait ended before it woke it)
        slot.sock = raw
        now = slot.clock()
        slot.since = now
        slot.deadline = now + timeout
        try:
            await wait(raw)
        except trio.ClosedResourceError:
            if slot.client_gone:
                raise ClientGone("the client closed its connection") from None
            if slot.expired:
                raise trio.TooSlowError from None
            raise
        finally:
            slot.deadline = math.inf
            slot.sock = None
            slot.expired = False
            slot.client_gone = False
        return
    with trio.move_on_after(timeout):
        await wait(raw)
        return
    raise trio.TooSlowError


def _broken(
    raw: socket.socket, exc: OSError
) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if raw.fileno() < 0:
        return trio.ClosedResourceError("socket was closed")
    return trio.BrokenResourceError(exc)


async def send_all(
    stream: trio.abc.SendStream,
    data: bytes,
    *,
    timeout: float | None = None,
    slot: WaitSlot | None = None,
    sock: socket.socket | None = None,
) -> None:
    raw = sock if sock is not None else raw_socket(stream)
    if raw is None:
        if timeout is None:
            await stream.send_all(data)
        else:
            with trio.fail_after(timeout):
                await stream.send_all(data)
        return
    total = len(data)
    try:
        sent = raw.send(data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise _broken(raw, exc) from exc
    if sent == total:
        return
    view = memoryview(data)
    while sent < total:
        await _wait(raw, False, timeout, slot)
        try:
            sent += raw.send(view[sent:])
        except BlockingIOError:
            pass
        except OSError as exc:
            raise _broken(raw, exc) from exc


async def receive(
    stream: trio.abc.ReceiveStream,
    size: int = 65536,
    *,
    timeout: float | None = None,
    wait_first: bool = False,
    slot: WaitSlot | None = None,
    sock: socket.socket | None = None,
) -> bytes:
    """Some bytes (``b""`` at EOF). ``wait_first``: data is not expected to be there yet.
    ``sock``: ``raw_socket(stream)`` when the caller has it at hand."""
    raw = sock if sock is not None else raw_socket(stream)
    if raw is None:
        if timeout is None:
            return bytes(await stream.receive_some(size))
        with trio.fail_after(timeout):
            return bytes(await stream.receive_some(size))
    if wait_first:
        await _wait(raw, True, timeout, slot)
    while True:
        try:
            return raw.recv(size)
        except BlockingIOError:
            await _wait(raw, True, timeout, slot)
        except OSError as exc:
            raise _broken(raw, exc) from exc
