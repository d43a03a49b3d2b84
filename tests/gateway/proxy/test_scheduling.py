"""``fair_scheduling``: Trio runs each batch of runnable tasks in arrival order."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import trio
import trio.lowlevel
import trio.testing
from trio._core import _run

from gateway.proxy import fair_scheduling


@pytest.fixture
def restore_trio(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put Trio's random source back afterwards, and run the scheduler as it runs outside
    tests (pytest-trio's Hypothesis support makes it deterministic: sorted, then shuffled)."""
    monkeypatch.setattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING", False)
    saved = _run._r
    yield
    _run._r = saved


async def batch_orders(rounds: int, width: int = 8) -> list[tuple[list[int], list[int]]]:
    """``rounds`` times: park ``width`` tasks, wake them all from one task in the order they
    parked (one scheduler batch), and record ``(woken order, run order)``."""
    out: list[tuple[list[int], list[int]]] = []
    for _ in range(rounds):
        parked: list[tuple[int, trio.lowlevel.Task]] = []
        ran: list[int] = []

        async def sleeper(
            i: int, parked: list[tuple[int, trio.lowlevel.Task]], ran: list[int]
        ) -> None:
            parked.append((i, trio.lowlevel.current_task()))
            await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.SUCCEEDED)
            ran.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(width):
                nursery.start_soon(sleeper, i, parked, ran)
            await trio.testing.wait_all_tasks_blocked()
            for _, task in parked:
                trio.lowlevel.reschedule(task)
        out.append(([i for i, _ in parked], ran))
    return out


def test_batches_run_in_arrival_order(restore_trio: None) -> None:
    assert fair_scheduling() is True
    for woken, ran in trio.run(batch_orders, 40):
        assert ran == woken


def test_without_it_trio_reverses_some_batches(restore_trio: None) -> None:
    _run._r = random.Random(1)
    rounds = trio.run(batch_orders, 40)
    reversed_ = sum(ran == woken[::-1] for woken, ran in rounds)
    in_order = sum(ran == woken for woken, ran in rounds)
    # a fixed seed: both orders are seen, and nothing else
    assert reversed_ > 0
    assert in_order > 0
    assert reversed_ + in_order == len(rounds)


def test_installing_twice_keeps_one_source_and_the_clock_offset_random(
    restore_trio: None,
) -> None:
    assert fair_scheduling() is True
    source = _run._r
    assert fair_scheduling() is True
    assert _run._r is source
    offsets = {_run._r.uniform(10000, 200000) for _ in range(5)}
    assert len(offsets) == 5
    assert _run._r.random() == 0.0


def test_a_trio_without_the_source_is_left_alone(
    restore_trio: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(_run, "_r")
    assert fair_scheduling() is False
    assert "cannot be set to arrival order" in caplog.text
