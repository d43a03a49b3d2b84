"""The load board that spreads connections over worker processes (gateway/proxy/_balance.py).

Two mappings of one board stand for the supervisor and a worker: what one writes, the other
reads, as between processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gateway.proxy._balance import LoadBoard


@pytest.fixture
def board() -> Iterator[LoadBoard]:
    b = LoadBoard.create(3)
    yield b
    b.close()


def worker(board: LoadBoard, index: int) -> LoadBoard:
    """A second mapping of ``board``, as worker ``index`` opens it."""
    return LoadBoard(os.dup(board.fd), board.count, mine=index)


def test_a_new_board_has_no_worker(board: LoadBoard) -> None:
    assert [board.connections(i) for i in range(3)] == [-1, -1, -1]
    assert [board.requests(i) for i in range(3)] == [0, 0, 0]
    assert os.get_inheritable(board.fd) is False  # passed to workers explicitly only


def test_workers_publish_connections_and_requests(board: LoadBoard) -> None:
    w0, w2 = worker(board, 0), worker(board, 2)
    try:
        w0.join()
        w2.join()
        for _ in range(3):
            w0.connection_opened()
        w0.connection_closed()
        w2.connection_opened()
        w0.served(41)
        assert [board.connections(i) for i in range(3)] == [2, -1, 1]
        assert board.requests(0) == 41
        # a closed connection never takes the count below zero
        w2.connection_closed()
        w2.connection_closed()
        assert board.connections(2) == 0
        # the supervisor clears the slot of a worker that exited
        board.clear(0)
        assert board.connections(0) == -1
        assert board.requests(0) == 0
    finally:
        w0.close()
        w2.close()


def test_a_worker_ahead_of_the_least_loaded_leaves_the_connection(board: LoadBoard) -> None:
    w0, w1 = worker(board, 0), worker(board, 1)
    try:
        w0.join()
        w1.join()
        assert w0.may_accept()
        assert w1.may_accept()
        w0.connection_opened()  # 1 / 0: one ahead is within the slack
        assert w0.may_accept()
        w0.connection_opened()  # 2 / 0
        assert not w0.may_accept()
        assert w1.may_accept()
        w1.connection_opened()
        assert w0.may_accept()
        # slot 2 has no worker (-1): it never counts as the least loaded
        assert board.connections(2) == -1
        # the slack grows by 1/16 of the load: 40 against 38 is even enough
        for _ in range(38):
            w0.connection_opened()
        for _ in range(37):
            w1.connection_opened()
        assert (board.connections(0), board.connections(1)) == (40, 38)
        assert w0.may_accept()  # 40 <= 38 + 1 + 40 // 16
        w0.connection_opened()
        w0.connection_opened()
        assert not w0.may_accept()  # 42 > 38 + 1 + 42 // 16
        assert w0.may_accept(slack=3)
    finally:
        w0.close()
        w1.close()


def test_a_lone_worker_always_accepts(board: LoadBoard) -> None:
    w1 = worker(board, 1)
    try:
        w1.join()
        for _ in range(100):
            assert w1.may_accept()
            w1.connection_opened()
    finally:
        w1.close()


def test_bad_shapes_are_refused(board: LoadBoard) -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        LoadBoard(board.fd, 0)
    with pytest.raises(ValueError, match="slot 3 is not on a board of 3"):
        LoadBoard(board.fd, 3, mine=3)
    with pytest.raises(RuntimeError, match="slot of its own"):
        board.connection_opened()


def test_from_env_reads_what_the_supervisor_sets(board: LoadBoard) -> None:
    assert LoadBoard.from_env({}) is None
    assert LoadBoard.from_env({"GATEWAY_PROXY_BOARD": board.env_value()}) is None
    fd = os.dup(board.fd)
    w = LoadBoard.from_env(
        {"GATEWAY_PROXY_BOARD": f"{fd}:{board.count}", "GATEWAY_PROXY_WORKER": "1"}
    )
    assert w is not None
    try:
        assert (w.count, w.mine) == (3, 1)
        w.join()
        w.connection_opened()
        assert board.connections(1) == 1
    finally:
        w.close()


def test_another_process_sees_the_same_counters(board: LoadBoard) -> None:
    """The board is shared memory: a child process given the descriptor writes to it."""
    code = (
        "import os, sys\n"
        "from gateway.proxy._balance import LoadBoard\n"
        "b = LoadBoard.from_env()\n"
        "b.join()\n"
        "for _ in range(5): b.connection_opened()\n"
        "b.served(7)\n"
    )
    env = dict(os.environ)
    env["GATEWAY_PROXY_BOARD"] = board.env_value()
    env["GATEWAY_PROXY_WORKER"] = "2"
    subprocess.run([sys.executable, "-c", code], env=env, pass_fds=[board.fd], check=True)
    assert board.connections(2) == 5
    assert board.requests(2) == 7


def test_close_is_idempotent() -> None:
    b = LoadBoard.create(1)
    b.close()
    b.close()
    assert b.closed
