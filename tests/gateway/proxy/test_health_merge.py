"""Merging the health reports of several proxy processes into the one view the Admin API
shows (``/upstreams/{u}/health``), and the supervisor's book of manual marks."""

from __future__ import annotations

from typing import Any

from proxy_support import FakeSettings

from gateway.proxy._balancer import Balancer, Balancers
from gateway.proxy._state import merged_balancer_health, merged_target_health, upstream_health
from gateway.proxy._workers import WorkerPool

CHECKS = {"active": {"healthy": {"interval": 5}, "unhealthy": {"tcp_failures": 1}}}


def balancers(*targets: str) -> Balancers:
    config = {
        "upstreams": [{"id": "u1", "name": "pool", "healthchecks": CHECKS}],
        "targets": [{"target": t, "upstream": {"id": "u1"}} for t in targets],
    }
    return Balancers.build(config)


def the(built: Balancers) -> Balancer:
    found = built.get("pool")
    assert found is not None
    return found


def report(worker: int, built: Balancers) -> dict[str, Any]:
    return {"worker": worker, "pid": 100 + worker, "upstreams": upstream_health(built)}


def labels(items: list[dict[str, Any]]) -> dict[str, str]:
    return {item["target"]: item["health"] for item in items}


def test_one_process_is_its_own_view() -> None:
    built = balancers("10.0.0.1:80", "10.0.0.2:80")
    the(built).set_healthy("10.0.0.2:80", False)
    reports = [report(0, built)]
    assert merged_target_health(reports, "pool") == the(built).health_snapshot()
    assert merged_balancer_health(reports, "pool") == the(built).balancer_health()


def test_a_target_is_healthy_only_if_every_process_uses_it() -> None:
    first, second = balancers("10.0.0.1:80", "10.0.0.2:80"), balancers("10.0.0.1:80", "10.0.0.2:80")
    the(second).set_healthy("10.0.0.2:80", False)
    reports = [report(0, first), report(1, second)]
    merged = merged_target_health(reports, "pool")
    assert labels(merged) == {"10.0.0.1:80": "HEALTHY", "10.0.0.2:80": "UNHEALTHY"}
    assert [item["target"] for item in merged] == ["10.0.0.1:80", "10.0.0.2:80"]  # config order
    assert merged[1]["data"]["weight"]["available"] == 0
    # the upstream as the worst process sees it
    summary = merged_balancer_health(reports, "pool")
    assert summary is not None
    assert summary["details"]["weight"]["available"] == 100
    # order does not matter
    assert merged_target_health(list(reversed(reports)), "pool") == merged


def test_targets_known_to_some_processes_only_and_unknown_upstreams() -> None:
    # a worker still on the previous config has one target less
    old, new = balancers("10.0.0.1:80"), balancers("10.0.0.1:80", "10.0.0.3:80")
    reports = [report(0, old), report(1, new)]
    assert labels(merged_target_health(reports, "pool")) == {
        "10.0.0.1:80": "HEALTHY",
        "10.0.0.3:80": "HEALTHY",
    }
    assert merged_target_health(reports, "nope") == []
    assert merged_balancer_health(reports, "nope") is None
    assert merged_balancer_health([], "pool") is None


def test_unhealthy_upstream_wins() -> None:
    up, down = balancers("10.0.0.1:80"), balancers("10.0.0.1:80")
    the(down).set_healthy("10.0.0.1:80", False)
    summary = merged_balancer_health([report(0, up), report(1, down)], "pool")
    assert summary is not None
    assert summary["health"] == "UNHEALTHY"
    assert summary["details"]["healthy"] is False


async def test_marks_are_kept_for_restarted_workers_until_a_report_contradicts_them() -> None:
    """The book of marks alone (no processes: the slots have no control channel)."""
    pool = WorkerPool(FakeSettings(), workers=2)
    try:
        await pool.mark_target("pool", "10.0.0.2:80", False)
        await pool.mark_target("pool", "10.0.0.1:80", False)
        await pool.mark_target("pool", "10.0.0.1:80", True)  # the latest mark of a target wins
        assert {k: m.healthy for k, m in pool._marks.items()} == {
            ("pool", "10.0.0.2:80"): False,
            ("pool", "10.0.0.1:80"): True,
        }
        slot = pool.slots[0]
        built = balancers("10.0.0.1:80", "10.0.0.2:80")
        the(built).set_healthy("10.0.0.2:80", False)
        # a report made before the worker applied the marks says nothing about them
        slot.health = upstream_health(balancers("10.0.0.1:80"))
        pool._forget_overridden_marks(slot)
        assert len(pool._marks) == 2
        # after: it shows both marks in force
        slot.marked = 3
        slot.health = upstream_health(built)
        pool._forget_overridden_marks(slot)
        assert len(pool._marks) == 2
        # an active check brought 10.0.0.2 back: that mark no longer holds
        the(built).set_healthy("10.0.0.2:80", True)
        slot.health = upstream_health(built)
        pool._forget_overridden_marks(slot)
        assert list(pool._marks) == [("pool", "10.0.0.1:80")]
        # a config without the target drops its mark too
        slot.health = upstream_health(balancers("10.0.0.2:80"))
        pool._forget_overridden_marks(slot)
        assert pool._marks == {}
    finally:
        for listen in pool.sockets:
            listen.sock.close()
        pool.board.close()
