"""Access logs: nginx's ``access_log``, one line per request (proxy, Admin API, Status API).

Theory of operation: a server that logs formats each line when its request ends and hands
it to its ``AccessLog``, which only appends it to a list in memory. The list is written in
one ``os.write`` when it passes ``FLUSH_BYTES``, once a second (``run_flusher``, as
nginx's ``access_log ... buffer= flush=``) and when the server stops, so a request costs
no system call. A file target is opened ``O_APPEND``: the worker processes of a node all
append to the same file, and whole-buffer writes keep their lines whole. ``stdout`` and
``stderr`` write to the process's own descriptors.

Lines use nginx's ``combined`` format (the Admin and Status APIs: Kong's template gives
their ``access_log`` no format) or Kong's ``kong_log_format``, ``combined`` followed by
``kong_request_id: "..."`` (the proxy). Every value a client chose is escaped as nginx
escapes variables in a log line (``"``, ``\\``, control and non-ASCII bytes as ``\\xXX``),
so a client cannot forge a line (a CR LF in a header or in the request target).
``[$time_local]`` is formatted once per second.

A file target is reopened on SIGUSR1, as nginx's ``-s reopen``: a rotation renames the
file, then signals the node. ``open_access_log`` registers each log with
``reopen_access_logs``, which the signal handlers call: the node's (``run_until_signal``, its
Admin and Status API logs and a single-process proxy's) and each worker process's (its proxy
log); the worker pool registers a hook that forwards the signal to its workers. A log that
cannot be reopened (its directory is gone) says so and keeps its old descriptor.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import trio

__all__ = [
    "FLUSH_BYTES",
    "FLUSH_INTERVAL",
    "AccessLog",
    "basic_user",
    "combined_line",
    "escape",
    "on_reopen",
    "open_access_log",
    "reopen_access_logs",
    "time_local",
]

log = logging.getLogger("gateway")

#: The buffer is written once it holds this many bytes...
FLUSH_BYTES = 64 * 1024
#: ... and at least this often (seconds) when it holds anything.
FLUSH_INTERVAL = 1.0

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# what nginx escapes in the value of a variable in a log line (ngx_http_log_escape)
_UNSAFE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')
# what a log line may hold as is: printable ASCII but the quote and the backslash
_SAFE = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
_MODE = 0o644
# what SIGUSR1 calls in this process (reopen_access_logs), in registration order
_REOPEN_HOOKS: list[Callable[[], None]] = []


def _hex(match: re.Match[bytes]) -> bytes:
    return b"\\x%02X" % match[0][0]


def escape(value: bytes | None) -> bytes:
    """``value`` as nginx writes a variable in a log line; ``-`` when empty or absent."""
    if not value:
        return b"-"
    if not value.translate(None, _SAFE):  # one C pass: every byte is safe (the usual case)
        return value
    return _UNSAFE.sub(_hex, value)


def time_local(seconds: float) -> bytes:
    """nginx's ``$time_local``: ``10/Oct/2000:13:55:36 -0700`` (English month names)."""
    t = time.localtime(seconds)
    offset = (t.tm_gmtoff or 0) // 60
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset), 60)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{hours:02d}{minutes:02d}"
    ).encode("ascii")


def basic_user(authorization: bytes | None) -> bytes | None:
    """nginx's ``$remote_user``: the user name of a ``Basic`` Authorization header."""
    if not authorization or authorization[:6].lower() != b"basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, _ = decoded.partition(b":")
    return user if colon else None


def combined_line(
    stamp: bytes,
    remote_addr: str,
    request_line: bytes,
    status: int,
    body_bytes_sent: int,
    *,
    remote_user: bytes | None = None,
    referer: bytes | None = None,
    user_agent: bytes | None = None,
) -> bytes:
    """One line (without its newline) in nginx's ``combined`` format."""
    return b'%s - %s [%s] "%s" %d %d "%s" "%s"' % (
        remote_addr.encode("latin-1", "replace"),
        escape(remote_user),
        stamp,
        escape(request_line),
        status,
        body_bytes_sent,
        escape(referer),
        escape(user_agent),
    )


class AccessLog:
    """A buffered access log writing to ``target``: ``stdout``, ``stderr`` or a file path
    (relative paths are resolved by the settings loader, under the prefix)."""

    def __init__(self, target: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self._clock = clock
        self._lines: list[bytes] = []
        self._size = 0
        self._second = -1
        self._stamp = b""
        self._fd, self._owned = self._open(target)

    @staticmethod
    def _open(target: str | Path) -> tuple[int, bool]:
        if target == "stdout":
            return 1, False
        if target == "stderr":
            return 2, False
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, _FLAGS, _MODE), True

    def reopen(self) -> None:
        """Flush, then write to the file now at the path (nginx's ``-s reopen``, after a
        rotation renamed it). The directory is not created again: when the open fails, the
        error is logged and the lines keep going to the previous file."""
        if not self._owned or self._fd < 0:
            return  # stdout, stderr: the process's own descriptors; closed: nothing to do
        self.flush()
        try:
            fd = os.open(self.target, _FLAGS, _MODE)
        except OSError as exc:
            log.error(
                "access log %s: cannot reopen (%s); still writing to the previous file",
                self.target,
                exc,
            )
            return
        os.close(self._fd)
        self._fd = fd

    def stamp(self) -> bytes:
        """``$time_local`` of now, formatted at most once per second."""
        second = int(self._clock())
        if second != self._second:
            self._second = second
            self._stamp = time_local(second)
        return self._stamp

    def write(self, line: bytes) -> None:
        """Buffer ``line`` (without its newline); written at once past ``FLUSH_BYTES``."""
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= FLUSH_BYTES:
            self.flush()

    @property
    def buffered(self) -> int:
        return self._size

    def flush(self) -> None:
        """Write what is buffered in one ``write`` (a short write is completed)."""
        if not self._lines:
            return
        self._lines.append(b"")
        data = memoryview(b"\n".join(self._lines))
        self._lines.clear()
        self._size = 0
        if self._fd < 0:
            return
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            # a full disk or a closed stdout must not take requests down: the lines are lost
            pass

    def close(self) -> None:
        self.flush()
        if self._owned and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    async def run_flusher(self) -> None:
        """Flush every ``FLUSH_INTERVAL`` seconds until cancelled."""
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            self.flush()


@asynccontextmanager
async def open_access_log(target: str | Path | None) -> AsyncIterator[AccessLog | None]:
    """The ``AccessLog`` of ``target`` with its flusher running; ``None`` when the target
    is ``off`` (or None). Flushed and closed on exit, cancelled or not."""
    if target is None or target == "off":
        yield None
        return
    access_log = AccessLog(target)
    try:
        with on_reopen(access_log.reopen):
            async with trio.open_nursery() as nursery:
                # the flusher lives as long as the servers that write to this log
                nursery.start_soon(access_log.run_flusher)
                try:
                    yield access_log
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        access_log.close()


@contextmanager
def on_reopen(hook: Callable[[], None]) -> Iterator[None]:
    """Have ``reopen_access_logs`` call ``hook`` while inside (``open_access_log`` registers
    each log's ``reopen``; the worker pool, the forwarding of the signal to its workers)."""
    _REOPEN_HOOKS.append(hook)
    try:
        yield
    finally:
        _REOPEN_HOOKS.remove(hook)


def reopen_access_logs() -> None:
    """Reopen every access log of this process (what SIGUSR1 does)."""
    for hook in list(_REOPEN_HOOKS):
        hook()
