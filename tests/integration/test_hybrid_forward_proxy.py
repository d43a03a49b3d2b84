"""``cluster_use_proxy``: a data plane reaches its control plane through an HTTP CONNECT
forward proxy (the mutual TLS handshake runs inside the tunnel)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ProcessGroup, gen_shared_cert, http, poll

pytestmark = pytest.mark.slow


class _ConnectProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ConnectHandler)
        self.tunnels: list[str] = []


class _ConnectHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        client: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        target = head.split(b" ")[1].decode()
        assert isinstance(self.server, _ConnectProxy)
        self.server.tunnels.append(target)
        host, _, port = target.rpartition(":")
        with socket.create_connection((host, int(port))) as upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

            def pump(src: socket.socket, dst: socket.socket) -> None:
                try:
                    while data := src.recv(65536):
                        dst.sendall(data)
                except OSError:
                    pass
                finally:
                    for s in (src, dst):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass

            other = threading.Thread(target=pump, args=(upstream, client), daemon=True)
            other.start()
            pump(client, upstream)
            other.join(5)


@pytest.fixture
def connect_proxy() -> Iterator[_ConnectProxy]:
    server = _ConnectProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_data_plane_connects_through_the_forward_proxy(
    tmp_path: Path, processes: ProcessGroup, connect_proxy: _ConnectProxy
) -> None:
    cert, key = gen_shared_cert(tmp_path)
    common: dict[str, Any] = {"cluster_cert": cert, "cluster_cert_key": key}
    cp = processes.node(
        "cp",
        {
            "role": "control_plane",
            "admin_listen": "127.0.0.1:0",
            "cluster_listen": "127.0.0.1:0",
            "cluster_telemetry_listen": "127.0.0.1:0",
            **common,
        },
    )
    proxy_port = connect_proxy.server_address[1]
    dp = processes.node(
        "dp",
        {
            "role": "data_plane",
            "database": "off",
            "proxy_listen": "127.0.0.1:0",
            "status_listen": "127.0.0.1:0",
            "cluster_control_plane": f"127.0.0.1:{cp.port('cluster')}",
            "cluster_telemetry_endpoint": f"127.0.0.1:{cp.port('telemetry')}",
            "cluster_use_proxy": "on",
            "proxy_server": f"http://127.0.0.1:{proxy_port}",
            **common,
        },
    )

    def connected() -> bool:
        rows = http("GET", cp.url("admin", "/clustering/data-planes")).json()["data"]
        return bool(rows) and rows[0]["connected"] and rows[0]["id"] == dp.node_id

    poll(connected, message="the data plane connected through the proxy")
    assert f"127.0.0.1:{cp.port('cluster')}" in connect_proxy.tunnels
    poll(
        lambda: f"127.0.0.1:{cp.port('telemetry')}" in connect_proxy.tunnels,
        message="the telemetry link also goes through the proxy",
    )
