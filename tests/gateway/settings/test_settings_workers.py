"""``worker_processes = auto`` counts the CPUs this process may run on, and
``worker_shutdown_timeout`` bounds the drain."""

from __future__ import annotations

import os

import pytest
from settings_helpers import errors, load

from gateway.proxy._workers import WorkerPool
from gateway.settings._listen import ListenAddress
from gateway.settings._values import available_cpus, parse_worker_processes


def test_auto_follows_the_cpu_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    # a process pinned to 3 CPUs (taskset, a cpuset cgroup) of a 64-CPU machine
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5, 7}, raising=False)
    assert available_cpus() == 3
    assert parse_worker_processes("auto") == 3
    assert load(worker_processes="auto").worker_processes == 3
    assert load(worker_processes="5").worker_processes == 5


def test_auto_without_affinity_counts_every_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert available_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert available_cpus() == 1


def test_auto_when_the_affinity_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(pid: int) -> set[int]:
        raise OSError("not permitted")

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "sched_getaffinity", fails, raising=False)
    assert available_cpus() == 4


def test_worker_pool_without_a_count_uses_the_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)

    class Bare:  # settings without worker_processes
        proxy_listen = (ListenAddress(host="127.0.0.1", port=0),)

    pool = WorkerPool(Bare(), workers=None)
    try:
        assert pool.count == 2
        assert len(pool.slots) == 2
    finally:
        for listen in pool.sockets:
            listen.sock.close()
        pool.board.close()


def test_worker_shutdown_timeout() -> None:
    assert load().worker_shutdown_timeout == 10.0
    assert load(worker_shutdown_timeout="0").worker_shutdown_timeout == 0.0
    assert load(worker_shutdown_timeout="2.5").worker_shutdown_timeout == 2.5
    assert errors(worker_shutdown_timeout="-1") == [
        "worker_shutdown_timeout: must be >= 0, got -1 (from command line)"
    ]
