"""Helpers for integration tests that run real ``python -m gateway`` processes.

Every process gets its own ``--prefix`` in a temporary directory and ports 0; its bound
addresses are read back from ``<prefix>/listeners.json``. Waiting is always polling with a
deadline (:func:`poll`), never a fixed sleep. Processes are stopped with SIGTERM (SIGKILL
after a grace period) and their logs are kept next to the prefix for failure reports.
"""

from __future__ import annotations

import contextlib
import http.client as http_client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from openssl_pki import CA_EXT, issue, leaf_ext, make_root

T = TypeVar("T")

__all__ = [
    "GatewayProcess",
    "HttpResult",
    "ProcessGroup",
    "Upstream",
    "gen_shared_cert",
    "http",
    "make_openssl_pki",
    "poll",
]


def poll(
    probe: Callable[[], T | None],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Call ``probe`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except (OSError, http_client.HTTPException) as exc:  # not up yet
            last = exc
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} not met within {timeout} s (last: {last!r})")
        time.sleep(interval)


class HttpResult:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"HttpResult({self.status}, {self.body[:200]!r})"


def http(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    form: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> HttpResult:
    """One HTTP/1.1 request on a new connection; never raises for HTTP error statuses."""
    parts = urlsplit(url)
    conn = http_client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        headers: dict[str, str] = {}
        body: bytes | None = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["content-type"] = "application/json"
        elif form is not None:
            from urllib.parse import urlencode

            body = urlencode(form).encode()
            headers["content-type"] = "application/x-www-form-urlencoded"
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        return HttpResult(
            response.status,
            response.read(),
            {k.lower(): v for k, v in response.getheaders()},
        )
    finally:
        conn.close()


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class GatewayProcess:
    """One ``python -m gateway start`` subprocess."""

    def __init__(self, name: str, prefix: Path, settings: dict[str, Any]) -> None:
        self.name = name
        self.prefix = prefix
        # One proxy process unless a test asks for more: the suite stays light on 2 cores;
        # tests that exercise worker processes set worker_processes explicitly.
        self.settings = {"worker_processes": "1", **{k: str(v) for k, v in settings.items()}}
        self.log_path = prefix.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.listeners: dict[str, Any] = {}

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> GatewayProcess:
        self.prefix.mkdir(parents=True, exist_ok=True)
        (self.prefix / "listeners.json").unlink(missing_ok=True)
        args = [sys.executable, "-m", "gateway", "start", "--prefix", str(self.prefix)]
        for key, value in self.settings.items():
            args += ["--set", f"{key}={value}"]
        log = self.log_path.open("ab")
        log.write(f"---- start {' '.join(args)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=_clean_env(), cwd=self.prefix
        )
        log.close()
        if wait:
            self.wait_started(timeout)
        return self

    def wait_started(self, timeout: float = 20.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            try:
                doc = json.loads((self.prefix / "listeners.json").read_text())
            except (FileNotFoundError, ValueError):
                return None
            return doc if doc.get("pid") == self.proc.pid else None

        self.listeners = poll(ready, timeout=timeout, message=f"{self.name} started")
        return self.listeners

    def address(self, kind: str) -> tuple[str, int]:
        host, port = self.listeners[kind][0]
        return ("127.0.0.1" if host in ("0.0.0.0", "") else host), int(port)

    def port(self, kind: str) -> int:
        return self.address(kind)[1]

    def url(self, kind: str, path: str = "") -> str:
        host, port = self.address(kind)
        return f"http://{host}:{port}{path}"

    @property
    def node_id(self) -> str:
        return str(self.listeners["node_id"])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the node gets no chance to say goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class ProcessGroup:
    """Creates processes under one directory and stops them all at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[GatewayProcess] = []

    def node(
        self, name: str, settings: dict[str, Any], *, start: bool = True, wait: bool = True
    ) -> GatewayProcess:
        """A process named *name* (prefix ``<root>/<name>``); started unless ``start=False``.

        ``wait=False`` returns at once: call ``wait_started`` (start several in parallel).
        """
        process = GatewayProcess(name, self.root / name, settings)
        self.processes.append(process)
        if start:
            process.start(wait=wait)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop(timeout=10)

    def logs(self) -> str:
        parts = []
        for process in self.processes:
            parts.append(f"===== {process.name} =====\n{process.log_text()[-6000:]}")
        return "\n".join(parts)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave in two writes

    def do_GET(self) -> None:
        body = json.dumps({"upstream": self.server.name, "path": self.path}).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Upstream:
    """A tiny HTTP upstream on 127.0.0.1:0 in a background thread."""

    def __init__(self, name: str = "upstream") -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.name = name  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def gen_shared_cert(directory: Path) -> tuple[Path, Path]:
    """``python -m gateway hybrid gen_cert`` in *directory* (the seed's first step)."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "gateway", "hybrid", "gen_cert"],
        cwd=directory,
        check=True,
        capture_output=True,
        env=_clean_env(),
        timeout=30,
    )
    return directory / "cluster.crt", directory / "cluster.key"


def make_openssl_pki(directory: Path, server_name: str = "control-plane.gateway.test") -> Path:
    """Root CA -> intermediate -> CP (serverAuth) and DP (clientAuth) leaves, with openssl.

    Writes ``root.crt``, ``cp-chain.crt`` / ``cp.key`` and ``dp-chain.crt`` / ``dp.key``
    (leaf files carry the intermediate, as the seed's PKI mode expects).
    """
    directory.mkdir(parents=True, exist_ok=True)
    make_root(directory, "O = Gateway Tests\nCN = Hybrid Root CA")
    issue(directory, "int", "/CN=Hybrid Intermediate CA", "root", CA_EXT)
    usage = "digitalSignature,keyEncipherment,keyAgreement"
    issue(directory, "cp", f"/CN={server_name}", "int",
          leaf_ext(usage, "extendedKeyUsage = serverAuth\n"
                   f"subjectAltName = DNS:{server_name},IP:127.0.0.1\n"))  # fmt: skip
    issue(directory, "dp", "/CN=gateway-dp-any-name", "int",
          leaf_ext(usage, "extendedKeyUsage = clientAuth\n"))  # fmt: skip
    intermediate = (directory / "int.crt").read_text()
    for leaf in ("cp", "dp"):
        (directory / f"{leaf}-chain.crt").write_text(
            (directory / f"{leaf}.crt").read_text() + intermediate
        )
    return directory


@contextlib.contextmanager
def dump_logs_on_failure(group: ProcessGroup) -> Iterator[None]:
    try:
        yield
    except BaseException:
        sys.stderr.write(group.logs())
        raise


def proxying_node(processes: ProcessGroup, workers: int, **settings: Any) -> GatewayProcess:
    """A traditional node (SQLite under its prefix) with admin, proxy and status listeners on
    ephemeral ports, proxying with ``workers`` processes."""
    return processes.node(
        "node",
        {
            "admin_listen": "127.0.0.1:0",
            "proxy_listen": "127.0.0.1:0",
            "status_listen": "127.0.0.1:0",
            "worker_processes": workers,
            **settings,
        },
    )
