"""The Status API of a proxying node: upstream and target health, and the server counters,
in-process and with worker processes."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import ProcessGroup, Upstream, http, poll, proxying_node

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("workers", [1, 2])
def test_target_health_visible_on_the_status_api(
    processes: ProcessGroup, upstream: Upstream, workers: int
) -> None:
    node = proxying_node(processes, workers)
    admin = node.url("admin")
    checks = {
        "active": {
            "http_path": "/",
            "healthy": {"interval": 0.1, "successes": 1},
            "unhealthy": {"interval": 0.1, "tcp_failures": 1, "http_failures": 1},
        }
    }
    assert (
        http(
            "POST",
            admin + "/upstreams",
            json_body={
                "name": "pool",
                "healthchecks": checks,
            },
        ).status
        == 201
    )
    live = f"127.0.0.1:{upstream.port}"
    assert http("POST", admin + "/upstreams/pool/targets", json_body={"target": live}).status == 201
    dead = "127.0.0.1:9"  # discard port: nothing listens, connections are refused
    assert http("POST", admin + "/upstreams/pool/targets", json_body={"target": dead}).status == 201

    def seen() -> list[dict[str, Any]] | None:
        result = http("GET", node.url("status", "/status/upstreams/pool"))
        if result.status != 200:
            return None
        reports = result.json()["data"]
        # Every proxy process runs its own health checks and must see both verdicts.
        for report in reports:
            health = {
                target["target"]: target["health"]
                for up in report["upstreams"]
                for target in up["targets"]
            }
            if health.get(live) != "HEALTHY" or health.get(dead) != "UNHEALTHY":
                return None
        return reports if len(reports) == workers else None

    reports = poll(seen, timeout=15, message="target health on /status/upstreams")
    assert all(r["upstreams"][0]["name"] == "pool" for r in reports)
    assert http("GET", node.url("status", "/status/upstreams/nope")).status == 404


@pytest.mark.parametrize("workers", [1, 2])
def test_server_counters_on_the_status_api(
    processes: ProcessGroup, upstream: Upstream, workers: int
) -> None:
    """``GET /status`` (Status API and Admin API) shows ``server.connections_active`` and
    ``total_requests``, with worker processes summed over the workers and listed per
    worker."""
    node = proxying_node(processes, workers)
    admin = node.url("admin")
    service = {"name": "echo", "url": upstream.url}
    assert http("POST", admin + "/services", json_body=service).status == 201
    route = {"name": "r", "paths": ["/echo"]}
    assert http("POST", admin + "/services/echo/routes", json_body=route).status == 201
    poll(
        lambda: http("GET", node.url("proxy", "/echo")).status == 200 or None,
        message="the route on the proxy",
    )
    for _ in range(5):
        assert http("GET", node.url("proxy", "/echo")).status == 200

    def counters() -> dict[str, Any] | None:
        server = http("GET", node.url("status", "/status")).json().get("server")
        # with workers the request counts are published every 0.5 s
        return server if server and server["total_requests"] >= 6 else None

    server = poll(counters, timeout=10, message="server counters on /status")
    assert server["connections_active"] >= 0
    if workers > 1:
        assert len(server["workers"]) == workers
        assert sum(w["total_requests"] for w in server["workers"]) == server["total_requests"]
        assert all(isinstance(w["pid"], int) for w in server["workers"])
    else:
        assert "workers" not in server
    # the Admin API's /status shows the same counters
    admin_server = http("GET", admin + "/status").json()["server"]
    assert admin_server["total_requests"] >= server["total_requests"]
    assert ("workers" in admin_server) == (workers > 1)
