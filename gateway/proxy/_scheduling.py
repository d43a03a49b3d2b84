"""First-come, first-served order for the tasks Trio runs in one scheduler batch.

Each round, Trio's scheduler takes every task that became runnable (in the order they did:
epoll reports sockets in the order they became ready) and runs them as one batch. It runs
a batch forwards or backwards at random, half the time each, so that no program comes to
depend on an order Trio does not promise. For a proxy that costs latency: with 50 busy
keep-alive connections a batch holds a few dozen tasks, and a request that is served last
in one batch and waits through a reversed one waits nearly two rounds instead of one. In
alternating runs of one gateway worker each way (wrk's closed loop at full speed, 50
connections; docs/performance.md), always running a batch in arrival order took the median
p99 from 13.6 ms to 10.7 ms over 16 runs each, with p90 unchanged at 8.2 ms: only the tail
moves.

Trio offers no switch for this, so ``fair_scheduling`` replaces the random source of
``trio._core._run`` (``_r``) with one whose ``random()`` is always 0, which is what makes
the scheduler run the batch in arrival order. The same source also draws the arbitrary
offset of Trio's clock (``uniform``), which still comes from the ordinary generator.

The process entry points of a proxying node call it (``python -m gateway start`` for the
traditional and data plane roles, ``python -m gateway quickstart``, the worker processes).
Tests check that the order it produces is the arrival order, so a Trio release that
changes the scheduler is noticed.
"""

from __future__ import annotations

import logging
import random

__all__ = ["fair_scheduling"]

log = logging.getLogger("gateway.proxy")


class _ArrivalOrder(random.Random):
    """``random()`` is always 0.0: Trio's scheduler then runs each batch first come first
    served. ``uniform`` (Trio's clock offset) and the rest are the ordinary generator's."""

    def __init__(self) -> None:
        super().__init__()
        # ``float()`` is 0.0: a C call, cheaper than a method of our own (the scheduler asks
        # once per batch, so once or twice per proxied request)
        self.random = float  # type: ignore[method-assign]

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * random.Random.random(self)


def fair_scheduling() -> bool:
    """Make Trio run each batch of runnable tasks in arrival order (process-wide; returns
    whether it could, False with a warning if this Trio has no such random source)."""
    try:
        from trio._core import _run
    except ImportError:  # pragma: no cover - a Trio without this layout
        _run = None  # type: ignore[assignment]
    current = getattr(_run, "_r", None)
    if not isinstance(current, random.Random):
        log.warning("this Trio's scheduler cannot be set to arrival order; keeping its own")
        return False
    if not isinstance(current, _ArrivalOrder):
        _run._r = _ArrivalOrder()
    return True
