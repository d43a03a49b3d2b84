"""In-process helpers for the cluster tests: settings, certificates, a scripted data plane
and a scripted control plane that use the real TLS and websocket stack."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
import trio_websocket

import certs
from gateway._node import NodeInfo
from gateway.cluster._tls import (
    ClusterPeerRejected,
    ClusterTLS,
    accept_cluster_peer,
    connect_cluster_peer,
)
from gateway.cluster._websocket import (
    ClusterWebSocket,
    absorb_reader_errors,
    accept_websocket,
    connect_websocket,
)
from gateway.settings import Settings, load_settings
from protocol.sync import SUBPROTOCOL, WEBSOCKET_PATH, max_frame_size

DP_ID = "22222222-2222-4222-8222-222222222222"


def write_shared_cert(directory: Path, name: str = "cluster") -> tuple[Path, Path]:
    cert_pem, key_pem = certs.generate_cluster_certificate(datetime.now(UTC), days=30)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return cert, key


def settings(tmp: Path, role: str, cert: Path, key: Path, **overrides: Any) -> Settings:
    values: dict[str, str] = {
        "role": role,
        "prefix": str(tmp / role),
        "cluster_cert": str(cert),
        "cluster_cert_key": str(key),
        "log_level": "debug",
    }
    if role == "control_plane":
        values |= {
            "admin_listen": "127.0.0.1:0",
            "cluster_listen": "127.0.0.1:0",
            "cluster_telemetry_listen": "127.0.0.1:0",
        }
    else:
        values |= {"database": "off", "proxy_listen": "127.0.0.1:0", "status_listen": "off"}
    values |= {k: str(v) for k, v in overrides.items()}
    return load_settings(None, env={}, overrides=values)


def shared_tls(cert: Path, key: Path) -> ClusterTLS:
    return ClusterTLS.load(mode="shared", cluster_cert=str(cert), cluster_cert_key=str(key))


def hello(**overrides: Any) -> dict[str, Any]:
    """A hello as a data plane of this version sends it (JSON wire form)."""
    from gateway import __version__
    from gateway.plugins import plugin_versions

    doc: dict[str, Any] = {
        "type": "hello",
        "node_id": DP_ID,
        "hostname": "scripted-dp",
        "version": __version__,
        "plugins": dict(plugin_versions()),
        "labels": {},
        "config_version": 0,
        "config_hash": "0" * 32,
        "max_payload": 16 * 1024 * 1024,
        "protocol_versions": ["v1"],
        "capabilities": [],
    }
    doc.update(overrides)
    return doc


class ScriptedLink:
    """One end of a real cluster websocket, driven by hand."""

    def __init__(self, ws: ClusterWebSocket) -> None:
        self.ws = ws

    async def send_json(self, doc: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(doc))

    async def send_raw(self, payload: bytes | str) -> None:
        await self.ws.send(payload)

    async def receive(self, timeout: float = 5.0) -> bytes | str:
        with trio.fail_after(timeout):
            return await self.ws.receive()

    async def receive_json(self, timeout: float = 5.0) -> dict[str, Any]:
        message = await self.receive(timeout)
        assert isinstance(message, str), f"expected a text frame, got {len(message)} bytes"
        doc = json.loads(message)
        assert isinstance(doc, dict)
        return doc

    async def receive_until(
        self, predicate: Callable[[bytes | str], bool], timeout: float = 5.0
    ) -> bytes | str:
        with trio.fail_after(timeout):
            while True:
                message = await self.ws.receive()
                if predicate(message):
                    return message


@contextlib.asynccontextmanager
async def scripted_data_plane(
    port: int,
    tls: ClusterTLS,
    *,
    path: str = WEBSOCKET_PATH,
    subprotocol: str = SUBPROTOCOL,
) -> AsyncIterator[ScriptedLink]:
    """Connect to a control plane with the real mTLS + websocket client stack."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    peer = await connect_cluster_peer(tcp, tls, now=datetime.now(UTC), peer=f"127.0.0.1:{port}")
    try:
        with absorb_reader_errors():
            async with trio.open_nursery() as nursery:
                ws = await connect_websocket(
                    nursery,
                    peer.stream,
                    host="kong_clustering",
                    path=path,
                    subprotocol=subprotocol,
                    max_message_size=max_frame_size(16 * 1024 * 1024),
                    timeout=5,
                )
                try:
                    yield ScriptedLink(ws)
                finally:
                    await ws.close(1000, "done", wait=0.5)
                    nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(peer.stream)


async def expect_rejected_upgrade(port: int, tls: ClusterTLS, **kw: Any) -> int:
    """Open a websocket the control plane refuses; return the HTTP status it answered."""
    statuses: list[int] = []
    try:
        async with scripted_data_plane(port, tls, **kw):
            pass
    except* trio_websocket.ConnectionRejected as group:
        statuses.append(getattr(group.exceptions[0], "status_code", 0))
    assert statuses, "the upgrade was accepted"
    return statuses[0]


class ScriptedControlPlane:
    """A control plane listener whose sessions are written by the test."""

    def __init__(self, tls: ClusterTLS) -> None:
        self.tls = tls
        self.port = 0
        self.links: trio.MemorySendChannel[ScriptedLink]
        self.incoming: trio.MemoryReceiveChannel[ScriptedLink]
        self.links, self.incoming = trio.open_memory_channel[ScriptedLink](10)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]

        async def handle(stream: trio.SocketStream) -> None:
            try:
                peer = await accept_cluster_peer(stream, self.tls, peer="dp", now=datetime.now(UTC))
            except ClusterPeerRejected:
                return
            with absorb_reader_errors():
                async with trio.open_nursery() as nursery:
                    ws = await accept_websocket(
                        nursery,
                        peer.stream,
                        path=WEBSOCKET_PATH,
                        subprotocol=SUBPROTOCOL,
                        max_message_size=2 * 1024 * 1024,
                        timeout=5,
                        peer="dp",
                    )
                    assert ws is not None
                    done = trio.Event()
                    link = ScriptedLink(ws)
                    link.done = done  # type: ignore[attr-defined]
                    await self.links.send(link)
                    await done.wait()
                    nursery.cancel_scope.cancel()

        task_status.started(self.port)
        await trio.serve_listeners(handle, listeners)


async def poll(
    probe: Callable[[], Awaitable[Any]], *, timeout: float = 5.0, interval: float = 0.02
) -> Any:
    """Await ``probe()`` until it returns something truthy; fail after ``timeout``."""
    last: Any = None
    with trio.move_on_after(timeout):
        while True:
            last = await probe()
            if last:
                return last
            await trio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value: {last!r})")


def new_id() -> str:
    return str(uuid.uuid4())


def cluster_port(info: NodeInfo) -> int:
    return info.first("cluster")[1]
