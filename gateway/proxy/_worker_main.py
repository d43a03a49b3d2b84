"""Entry point of a proxy worker process: ``python -m gateway.proxy._worker_main``.

A module of its own, so that ``-m`` does not run ``gateway.proxy._workers`` a second time
after the package imported it (runpy warns about that).
"""

from __future__ import annotations

import logging
import signal

import trio

from gateway.proxy._scheduling import fair_scheduling
from gateway.proxy._workers import worker_main

if __name__ == "__main__":
    # SIGUSR1 (reopen the access log) may come before worker_main catches it, or while the
    # worker drains: it must not kill the process
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING)
    fair_scheduling()
    try:
        trio.run(worker_main)
    except KeyboardInterrupt:
        pass
