"""Upstream health on the Admin API of a node with worker processes: the health checks run in
the workers, so ``GET /upstreams/{u}/health`` must show what they see (the Status API's view,
merged), and ``PUT .../targets/{t}/healthy|unhealthy`` must change where every worker sends
traffic, a worker restarted later included."""

from __future__ import annotations

import http.client as http_client
import json
import os
import signal
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers import GatewayProcess, ProcessGroup, http, poll, proxying_node

pytestmark = pytest.mark.slow

PROBE_PATH = "/probe"


class _CountingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        server: CountingUpstream = self.server.owner  # type: ignore[attr-defined]
        if self.path != PROBE_PATH:
            with server.lock:
                server.requests += 1
        body = json.dumps({"upstream": server.name}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class CountingUpstream:
    """An HTTP target on 127.0.0.1:0 that counts the requests it gets (probes aside)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
        self.server.daemon_threads = True
        self.server.owner = self  # type: ignore[attr-defined]
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Close the listening socket: connections are refused from now on."""
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def targets() -> Any:
    a, b = CountingUpstream("a"), CountingUpstream("b")
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def admin_health(node: GatewayProcess) -> dict[str, str]:
    result = http("GET", node.url("admin", "/upstreams/pool/health"))
    assert result.status == 200, result
    return {item["target"]: item["health"] for item in result.json()["data"]}


def worker_health(node: GatewayProcess) -> list[dict[str, str]]:
    """Each proxy process's view of the targets of ``pool`` (the Status API)."""
    reports = http("GET", node.url("status", "/status/upstreams")).json()["data"]
    return [
        {
            t["target"]: t["health"]
            for up in r["upstreams"]
            if up["name"] == "pool"
            for t in up["targets"]
        }
        for r in reports
    ]


def worker_requests(node: GatewayProcess) -> dict[int, int]:
    server = http("GET", node.url("status", "/status")).json()["server"]
    workers = server.get("workers") or [{"pid": 0, "total_requests": server["total_requests"]}]
    return {w["pid"]: w["total_requests"] for w in workers}


def send_traffic(node: GatewayProcess, *, connections: int = 8, each: int = 25) -> Counter[str]:
    """``connections`` keep-alive connections, all open at once (the load board spreads them
    over the workers), ``each`` requests on each; which target answered, counted."""
    host, port = node.address("proxy")
    conns = [http_client.HTTPConnection(host, port, timeout=5) for _ in range(connections)]
    seen: Counter[str] = Counter()
    try:
        for conn in conns:
            conn.connect()
        for _ in range(each):
            for conn in conns:
                conn.request("GET", "/lb")
                response = conn.getresponse()
                body = response.read()
                assert response.status == 200, (response.status, body)
                seen[json.loads(body)["upstream"]] += 1
    finally:
        for conn in conns:
            conn.close()
    return seen


def served_by_every_worker(node: GatewayProcess, before: dict[int, int], sent: int) -> None:
    """Every worker served some of the ``sent`` requests (counters published every 0.5 s)."""

    def settled() -> dict[int, int] | None:
        now = worker_requests(node)
        delta = {pid: now[pid] - before.get(pid, 0) for pid in now}
        return delta if sum(delta.values()) >= sent else None

    delta = poll(settled, timeout=10, message="request counters")
    assert all(n > 0 for n in delta.values()), delta


@pytest.mark.parametrize("workers", [1, 2])
def test_admin_health_and_manual_marks_reach_every_worker(
    processes: ProcessGroup, targets: tuple[CountingUpstream, CountingUpstream], workers: int
) -> None:
    a, b = targets
    node = proxying_node(processes, workers)
    admin = node.url("admin")
    # Active probes of healthy targets only: a target that fails one goes down and stays
    # down (no probe would bring it back), so a manual mark holds until the next one.
    checks = {
        "active": {
            "http_path": PROBE_PATH,
            "healthy": {"interval": 0.1, "successes": 1},
            "unhealthy": {"interval": 0, "tcp_failures": 1, "http_failures": 1},
        }
    }
    upstream = {"name": "pool", "healthchecks": checks}
    assert http("POST", admin + "/upstreams", json_body=upstream).status == 201
    for target in (a, b):
        body = {"target": target.target}
        assert http("POST", admin + "/upstreams/pool/targets", json_body=body).status == 201
    service = {"name": "lb", "host": "pool", "port": 80}
    assert http("POST", admin + "/services", json_body=service).status == 201
    route = {"name": "lb", "paths": ["/lb"]}
    assert http("POST", admin + "/services/lb/routes", json_body=route).status == 201

    def every_worker(expected: dict[str, str]) -> bool:
        views = worker_health(node)
        return len(views) == workers and all(v == expected for v in views)

    both_up = {a.target: "HEALTHY", b.target: "HEALTHY"}
    poll(lambda: every_worker(both_up), timeout=15, message="both targets healthy everywhere")
    assert admin_health(node) == both_up
    poll(lambda: http("GET", node.url("proxy", "/lb")).status == 200, message="the route")

    # PUT unhealthy: every worker applied it when the answer comes, and the Admin API and
    # the Status API say so at once.
    assert http("PUT", admin + f"/upstreams/pool/targets/{b.target}/unhealthy").status == 204
    b_down = {a.target: "HEALTHY", b.target: "UNHEALTHY"}
    assert admin_health(node) == b_down
    assert every_worker(b_down)
    before_b, before = b.requests, worker_requests(node)
    seen = send_traffic(node)
    assert seen == Counter({"a": 200})
    assert b.requests == before_b
    if workers > 1:
        served_by_every_worker(node, before, 200)

        # A worker restarted meanwhile gets the mark too (Kong keeps it in shared memory).
        victim = next(iter(worker_requests(node)))
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            pids = worker_requests(node)
            reports = http("GET", node.url("status", "/status/upstreams")).json()["data"]
            return (
                victim not in pids
                and len(pids) == workers
                and {r["pid"] for r in reports} == set(pids)
                and every_worker(b_down)
            )

        poll(replaced, timeout=20, message="a restarted worker with the mark")
        before = worker_requests(node)
        assert send_traffic(node) == Counter({"a": 200})
        assert b.requests == before_b
        served_by_every_worker(node, before, 200)

    # A config change keeps the mark (health records outlive config versions, as in Kong).
    extra = {"name": "other", "paths": ["/other"]}
    assert http("POST", admin + "/services/lb/routes", json_body=extra).status == 201
    poll(lambda: http("GET", node.url("proxy", "/other")).status == 200, message="new route")
    assert every_worker(b_down)
    assert send_traffic(node, each=5) == Counter({"a": 40})

    # PUT healthy: b takes traffic again, in every worker.
    assert http("PUT", admin + f"/upstreams/pool/targets/{b.target}/healthy").status == 204
    assert admin_health(node) == both_up
    assert every_worker(both_up)
    seen = send_traffic(node)
    assert seen["a"] > 0, seen
    assert seen["b"] > 0, seen
    assert b.requests - before_b == seen["b"]

    # b goes down for real: the workers' probes find out, and the Admin API shows it as
    # the Status API does.
    b.stop()
    poll(lambda: admin_health(node) == b_down, timeout=15, message="b UNHEALTHY on the Admin API")
    poll(lambda: every_worker(b_down), timeout=15, message="b UNHEALTHY in every worker")
    summary = http("GET", admin + "/upstreams/pool/health?balancer_health=1").json()["data"]
    assert summary["health"] == "HEALTHY"
    assert summary["details"]["weight"] == {"total": 200, "available": 100, "unavailable": 100}
    assert send_traffic(node, each=5) == Counter({"a": 40})

    # Marks need health checks, as in Kong ("no healthchecker found").
    plain = {"name": "plain"}
    assert http("POST", admin + "/upstreams", json_body=plain).status == 201
    body = {"target": a.target}
    assert http("POST", admin + "/upstreams/plain/targets", json_body=body).status == 201
    poll(lambda: http("GET", admin + "/upstreams/plain/health").json()["data"], message="plain")
    result = http("PUT", admin + f"/upstreams/plain/targets/{a.target}/unhealthy")
    assert result.status == 400, result
    assert admin_health(node) == b_down
