"""Access logs of a real node: proxy (one process and worker processes), Admin API and
Status API lines in their files, ``off`` and ``stdout``, reopened on SIGUSR1."""

from __future__ import annotations

import http.client as http_client
import os
import re
import signal
from pathlib import Path

import pytest
from helpers import GatewayProcess, ProcessGroup, Upstream, http, poll, proxying_node

pytestmark = pytest.mark.slow

AGENT = "access-log-test/1.0"


def get(url_host: tuple[str, int], target: str, agent: str = AGENT) -> tuple[int, int]:
    """GET on a new connection with a User-Agent; (status, body size)."""
    conn = http_client.HTTPConnection(*url_host, timeout=5)
    try:
        conn.request("GET", target, headers={"User-Agent": agent})
        response = conn.getresponse()
        return response.status, len(response.read())
    finally:
        conn.close()


def routed(node: GatewayProcess, upstream: Upstream) -> None:
    """A service on ``upstream`` and a route ``/api``, live on the proxy."""
    admin = node.url("admin")
    assert (
        http("POST", admin + "/services", json_body={"name": "s", "url": upstream.url}).status
        == 201
    )
    assert http("POST", admin + "/services/s/routes", json_body={"paths": ["/api"]}).status == 201
    poll(
        lambda: get(node.address("proxy"), "/api/ready", agent="probe")[0] == 200,
        timeout=15,
        message="route live",
    )


def lines_with(path: Path, pattern: str, count: int) -> list[str]:
    """The lines of ``path`` matching ``pattern``, once there are ``count`` (flushed every
    second by each process)."""
    regex = re.compile(pattern)

    def found() -> list[str] | None:
        try:
            text = path.read_text(encoding="latin-1")
        except FileNotFoundError:
            return None
        lines = [line for line in text.splitlines() if regex.search(line)]
        return lines if len(lines) >= count else None

    return poll(found, timeout=10, message=f"{count} lines matching {pattern!r} in {path}")


def combined(request: str, status: int, agent: str = AGENT) -> str:
    """A regex of a line in nginx's combined format."""
    stamp = r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]"
    return rf'^127\.0\.0\.1 - - {stamp} "{request}" {status} \d+ "-" "{re.escape(agent)}"'


@pytest.mark.parametrize("workers", [1, 2])
def test_proxy_admin_and_status_access_logs(
    processes: ProcessGroup, upstream: Upstream, workers: int
) -> None:
    node = proxying_node(processes, workers, status_access_log="logs/status_access.log")
    routed(node, upstream)
    proxy = node.address("proxy")
    requests = 10
    for i in range(requests):
        assert get(proxy, f"/api/{i}") == (200, get(proxy, f"/api/{i}", agent="probe")[1])
    status, size = get(proxy, "/missing")
    assert status == 404
    assert get(node.address("admin"), "/services/s")[0] == 200
    assert get(node.address("status"), "/status")[0] == 200

    logs = node.prefix / "logs"
    kong = ' kong_request_id: "-"$'
    ok = lines_with(
        logs / "access.log",
        combined(r"GET /api/\d HTTP/1\.1", 200) + kong,
        requests,
    )
    # every request once, each line whole (worker processes append to the same file)
    assert sorted(re.search(r"/api/(\d)", line)[1] for line in ok) == [  # type: ignore[index]
        str(i) for i in range(requests)
    ]
    (missing,) = lines_with(
        logs / "access.log",
        combined(r"GET /missing HTTP/1\.1", 404) + kong,
        1,
    )
    assert missing.split('"')[2].split()[1] == str(size)
    lines_with(
        logs / "admin_access.log",
        combined(r"GET /services/s HTTP/1\.1", 200) + "$",
        1,
    )
    lines_with(
        logs / "status_access.log",
        combined(r"GET /status HTTP/1\.1", 200) + "$",
        1,
    )
    # the admin calls of the setup are there too, not in the proxy's log
    lines_with(logs / "admin_access.log", r'"POST /services HTTP/1\.1" 201 ', 1)
    assert "/services" not in (logs / "access.log").read_text(encoding="latin-1")


@pytest.mark.parametrize("workers", [1, 2])
def test_sigusr1_reopens_the_access_logs(
    processes: ProcessGroup, upstream: Upstream, workers: int
) -> None:
    node = proxying_node(processes, workers)
    routed(node, upstream)
    proxy, admin = node.address("proxy"), node.address("admin")
    logs = node.prefix / "logs"
    for i in range(5):
        assert get(proxy, f"/api/before-{i}")[0] == 200
    assert get(admin, "/services/s?before")[0] == 200
    lines_with(logs / "access.log", r"/api/before-\d", 5)
    lines_with(logs / "admin_access.log", r"/services/s\?before", 1)

    (logs / "access.log").rename(logs / "access.log.1")
    (logs / "admin_access.log").rename(logs / "admin_access.log.1")
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGUSR1)
    # the node has reopened: the admin log in its own process, the proxy's in a worker
    poll(
        lambda: (logs / "access.log").exists() and (logs / "admin_access.log").exists(),
        message="access logs reopened",
    )
    for i in range(10):
        assert get(proxy, f"/api/after-{i}")[0] == 200
    assert get(admin, "/services/s?after")[0] == 200

    lines_with(logs / "access.log", combined(r"GET /api/after-\d HTTP/1\.1", 200), 10)
    lines_with(logs / "admin_access.log", r"/services/s\?after", 1)
    old = (logs / "access.log.1").read_text(encoding="latin-1")
    assert old.count("/api/before-") == 5
    assert "/api/after-" not in old
    assert "/api/before-" not in (logs / "access.log").read_text(encoding="latin-1")
    assert "?after" not in (logs / "admin_access.log.1").read_text(encoding="latin-1")
    # the signal stopped nothing: no worker restarted, the node stops cleanly
    assert node.alive
    assert "exited" not in node.log_text()
    assert node.stop() == 0


def test_access_logs_off_write_nothing(processes: ProcessGroup, upstream: Upstream) -> None:
    node = proxying_node(processes, 2, proxy_access_log="off", admin_access_log="off")
    routed(node, upstream)
    assert get(node.address("proxy"), "/api/x")[0] == 200
    assert get(node.address("proxy"), "/missing")[0] == 404
    assert node.stop() == 0
    logs = node.prefix / "logs"
    assert not (logs / "access.log").exists()
    assert not (logs / "admin_access.log").exists()
    assert "kong_request_id" not in node.log_text()


def test_proxy_access_log_to_stdout(processes: ProcessGroup, upstream: Upstream) -> None:
    node = proxying_node(processes, 1, proxy_access_log="stdout", admin_access_log="off")
    routed(node, upstream)
    assert get(node.address("proxy"), "/api/to-stdout")[0] == 200
    pattern = re.compile(r'"GET /api/to-stdout HTTP/1\.1" 200 \d+ "-" "access-log-test/1\.0"')
    poll(lambda: pattern.search(node.log_text()), timeout=10, message="line on stdout")
    assert not (node.prefix / "logs" / "access.log").exists()
