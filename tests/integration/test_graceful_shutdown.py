"""Stopping a proxying node with real signals: ``python -m gateway start`` gets SIGTERM or
SIGQUIT while requests are in flight. The listeners close at once (new connections are
refused), the requests in flight finish, and the node exits 0; a request that outlasts
``worker_shutdown_timeout`` is cut, and the node still exits when that deadline passes."""

from __future__ import annotations

import http.client as http_client
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers import GatewayProcess, ProcessGroup, http, poll, proxying_node

pytestmark = pytest.mark.slow


class _SlowHandler(BaseHTTPRequestHandler):
    """``GET /slow/<seconds>``: answers 200 after that long."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server: SlowUpstream = self.server.owner  # type: ignore[attr-defined]
        delay = float(self.path.rsplit("/", 1)[-1] or 0)
        with server.lock:
            server.started += 1
        if server.closing.wait(delay):
            return  # the test is over
        body = b"finished"
        try:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the gateway gave up on this request (the deadline test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class SlowUpstream:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = 0
        self.closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
        self.server.daemon_threads = True
        self.server.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow() -> Any:
    upstream = SlowUpstream()
    try:
        yield upstream
    finally:
        upstream.stop()


def start_node(
    processes: ProcessGroup, upstream: SlowUpstream, workers: int, **settings: Any
) -> GatewayProcess:
    node = proxying_node(processes, workers, **settings)
    admin = node.url("admin")
    service = {"name": "slow", "url": upstream.url + "/slow"}
    assert http("POST", admin + "/services", json_body=service).status == 201
    route = {"name": "slow", "paths": ["/slow"]}
    assert http("POST", admin + "/services/slow/routes", json_body=route).status == 201
    poll(lambda: http("GET", node.url("proxy", "/slow/0")).status == 200, message="the route")
    return node


class InFlight(threading.Thread):
    """One request through the proxy on its own connection; ``outcome`` is ``(status,
    body)`` or the exception it ended with."""

    def __init__(self, node: GatewayProcess, path: str) -> None:
        super().__init__(daemon=True)
        self.address = node.address("proxy")
        self.path = path
        self.outcome: tuple[int, bytes] | BaseException | None = None

    def run(self) -> None:
        conn = http_client.HTTPConnection(*self.address, timeout=30)
        try:
            conn.request("GET", self.path)
            response = conn.getresponse()
            self.outcome = (response.status, response.read())
        except Exception as exc:
            self.outcome = exc
        finally:
            conn.close()


def start_requests(
    node: GatewayProcess, upstream: SlowUpstream, paths: list[str]
) -> list[InFlight]:
    already = upstream.started
    requests = [InFlight(node, path) for path in paths]
    for request in requests:
        request.start()
    # in flight: the upstream has every one of them
    poll(lambda: upstream.started >= already + len(paths), message="requests at the upstream")
    return requests


def refuses_connections(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def wait_exit(node: GatewayProcess, timeout: float) -> int:
    assert node.proc is not None
    return node.proc.wait(timeout)


@pytest.mark.parametrize(
    ("workers", "signum"),
    [(2, signal.SIGTERM), (2, signal.SIGQUIT), (1, signal.SIGTERM)],
    ids=["2-workers-SIGTERM", "2-workers-SIGQUIT", "in-process-SIGTERM"],
)
def test_signal_drains_in_flight_requests(
    processes: ProcessGroup, slow: SlowUpstream, workers: int, signum: signal.Signals
) -> None:
    node = start_node(processes, slow, workers)
    address = node.address("proxy")
    # several connections, so that with workers each one has some
    requests = start_requests(node, slow, ["/slow/1.5"] * 6)
    assert node.proc is not None
    signalled = time.monotonic()
    node.proc.send_signal(signum)

    # The listeners close at once: refused while the requests are still in flight.
    poll(lambda: refuses_connections(address), timeout=5, message="connections refused")
    assert all(r.outcome is None for r in requests), [r.outcome for r in requests]

    assert wait_exit(node, timeout=10) == 0
    elapsed = time.monotonic() - signalled
    for request in requests:
        request.join(5)
        assert request.outcome == (200, b"finished")
    # the drain waited for them, not for its deadline (worker_shutdown_timeout = 10 s)
    assert elapsed < 6, elapsed
    assert refuses_connections(address)


@pytest.mark.parametrize("workers", [2, 1], ids=["2-workers", "in-process"])
def test_a_request_outlasting_the_drain_deadline_is_cut(
    processes: ProcessGroup, slow: SlowUpstream, workers: int
) -> None:
    node = start_node(processes, slow, workers, worker_shutdown_timeout=1)
    requests = start_requests(node, slow, ["/slow/0.3", "/slow/60"])
    quick, endless = requests
    assert node.proc is not None
    signalled = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)

    assert wait_exit(node, timeout=10) == 0
    elapsed = time.monotonic() - signalled
    # the deadline (1 s) and some start-up slack; far from the request's 60 s
    assert 0.9 <= elapsed < 5, elapsed
    quick.join(5)
    endless.join(5)
    assert quick.outcome == (200, b"finished")
    assert isinstance(endless.outcome, OSError | http_client.HTTPException), endless.outcome
