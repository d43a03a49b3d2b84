"""Keep client connections spread evenly over the worker processes.

All workers accept from the same listening sockets, and the kernel wakes every one of them
when a connection arrives: whichever gets there first takes it. A burst of connections
(a load balancer or a benchmark opening its pool, a client reconnecting after a restart)
can land mostly on one worker, and with keep-alive they stay there. Measured with 2 workers
and wrk's 50 connections: splits of 18/32 and 21/29 were common, and the connections on the
busier worker waited half as long again as on the other, which set the p99 of the whole node
(docs/performance.md, "Connection balance"). nginx has the same race (its
``accept_mutex`` and ``reuseport`` answer it only in part).

The board is a small shared-memory array, two signed 64-bit counters per worker slot: the
open client connections of worker ``i`` (``-1`` while no worker ``i`` runs) and the requests
it has served (copied from its ``ProxyState`` every ``REQUESTS_PUBLISH_INTERVAL`` seconds,
for the status API's ``server`` counters). The
supervisor creates it (a ``memfd``, or an unlinked temporary file where there is none) and
passes its descriptor to every worker; each worker writes only its own counter, and reads
the others when it is about to accept. A worker more than ``slack`` connections above the
least-loaded live worker leaves the pending connection to the others for ``ACCEPT_DEFER``
seconds, and takes it itself if it is still waiting then: a stuck or busy neighbour delays a
new connection by at most that, never refuses it. Counters are read without locks; a stale
read only makes one decision slightly off, and the next one corrects it.
"""

from __future__ import annotations

import mmap
import os
import tempfile

__all__ = ["ACCEPT_DEFER", "REQUESTS_PUBLISH_INTERVAL", "LoadBoard"]

#: How long an over-loaded worker leaves a pending connection to the others.
ACCEPT_DEFER = 0.002
#: How often a worker copies its request count to the board.
REQUESTS_PUBLISH_INTERVAL = 0.5
_FIELDS = 2  # per slot: open connections, requests served
_SIZE = 8 * _FIELDS  # bytes per slot


class LoadBoard:
    """Open connections per worker, in memory shared by the supervisor and its workers.

    ``LoadBoard.create(n)`` in the supervisor; ``LoadBoard(fd, n, mine=i)`` in worker ``i``
    (``from_env`` reads both from the environment the supervisor set).
    """

    __slots__ = ("_counts", "_map", "closed", "count", "fd", "mine")

    def __init__(self, fd: int, count: int, *, mine: int | None = None) -> None:
        if count < 1:
            raise ValueError("a board needs at least one slot")
        if mine is not None and not 0 <= mine < count:
            raise ValueError(f"worker slot {mine} is not on a board of {count}")
        self.fd = fd
        self.count = count
        self.mine = mine
        self.closed = False
        self._map = mmap.mmap(fd, count * _SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._counts = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, count: int) -> LoadBoard:
        """A new board with every slot empty (``-1``). Its descriptor is close-on-exec:
        pass it to the workers explicitly (``pass_fds``)."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("gateway-load-board")
        else:  # pragma: no cover - non-Linux
            with tempfile.TemporaryFile() as f:
                fd = os.dup(f.fileno())
        os.ftruncate(fd, count * _SIZE)
        board = cls(fd, count)
        for i in range(count):
            board.clear(i)
        return board

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LoadBoard | None:
        """Worker side: ``GATEWAY_PROXY_BOARD=fd:count`` and ``GATEWAY_PROXY_WORKER=i``."""
        env = os.environ if environ is None else environ
        value = env.get("GATEWAY_PROXY_BOARD")
        index = env.get("GATEWAY_PROXY_WORKER")
        if not value or index is None:
            return None
        fd, _, count = value.partition(":")
        return cls(int(fd), int(count), mine=int(index))

    def env_value(self) -> str:
        return f"{self.fd}:{self.count}"

    # -- the supervisor ----------------------------------------------------------------------

    def clear(self, slot: int) -> None:
        """No worker runs in ``slot`` (it exited): the others stop deferring to it."""
        self._counts[slot * _FIELDS] = -1
        self._counts[slot * _FIELDS + 1] = 0

    def connections(self, slot: int) -> int:
        """Open client connections of the worker in ``slot`` (``-1``: none runs)."""
        return int(self._counts[slot * _FIELDS])

    def requests(self, slot: int) -> int:
        """Requests served by the worker now running in ``slot``."""
        return int(self._counts[slot * _FIELDS + 1])

    # -- a worker ----------------------------------------------------------------------------

    def _own(self) -> int:
        if self.mine is None:
            raise RuntimeError("only a worker's board has a slot of its own")
        return self.mine

    def join(self) -> None:
        """This worker runs, with no connection and no request yet."""
        i = self._own() * _FIELDS
        self._counts[i] = 0
        self._counts[i + 1] = 0

    def connection_opened(self) -> None:
        i = self._own() * _FIELDS
        self._counts[i] = max(self._counts[i], 0) + 1

    def connection_closed(self) -> None:
        i = self._own() * _FIELDS
        self._counts[i] = max(self._counts[i] - 1, 0)

    def served(self, total: int) -> None:
        """Publish this worker's request count."""
        self._counts[self._own() * _FIELDS + 1] = total

    def may_accept(self, slack: int = 1) -> bool:
        """Whether this worker is within ``slack`` (plus 1/16 of its load) of the least-loaded
        live worker, so that taking the next connection keeps the spread even."""
        counts = self._counts
        mine = counts[self._own() * _FIELDS]
        least = mine
        for i in range(0, self.count * _FIELDS, _FIELDS):
            n = counts[i]
            if 0 <= n < least:
                least = n
        return mine <= least + slack + (mine >> 4)

    def close(self) -> None:
        """Unmap the board and close its descriptor."""
        if self.closed:
            return
        self.closed = True
        self._counts.release()
        self._map.close()
        os.close(self.fd)
