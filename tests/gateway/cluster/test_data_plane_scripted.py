"""A real data plane (in process) against a hand-written control plane.

The scripted control plane uses the real mutual TLS and websocket server stack and the
protocol's own encoders, so it can send what a real control plane never would: configs that
do not validate on the data plane, damaged snapshots, silence.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
from cluster_support import (
    ScriptedControlPlane,
    ScriptedLink,
    poll,
    settings,
    shared_tls,
    write_shared_cert,
)

from gateway._node import NodeInfo
from gateway.cluster._cache import CACHE_FILES
from gateway.cluster._data_plane import serve_data_plane
from gateway.declarative import parse_declarative
from protocol.sync import SyncStatus, Welcome, encode_control, encode_snapshot, gzip_compress


def valid_config(path: str = "/a") -> dict[str, Any]:
    return parse_declarative(
        {
            "_format_version": "3.0",
            "services": [
                {
                    "name": "s",
                    "url": "http://127.0.0.1:9",
                    "routes": [{"name": "r", "paths": [path]}],
                }
            ],
        }
    )


async def http_get(port: int, path: str) -> tuple[int, dict[str, Any] | str]:
    """Minimal HTTP/1.1 GET (Connection: close) for the status API and the proxy."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("latin-1")


@contextlib.asynccontextmanager
async def data_plane(
    tmp_path: Path, control_plane: str, **overrides: Any
) -> AsyncIterator[NodeInfo]:
    cert, key = tmp_path / "cluster.crt", tmp_path / "cluster.key"
    opts: dict[str, Any] = {
        "cluster_control_plane": control_plane,
        "status_listen": "127.0.0.1:0",
        "cluster_reconnect_backoff_min": 0.05,
        "cluster_reconnect_backoff_max": 0.2,
        "cluster_dp_labels": "region:eu-1",
    }
    opts.update(overrides)
    dp_settings = settings(tmp_path, "data_plane", cert, key, **opts)
    async with trio.open_nursery() as nursery:
        info = await nursery.start(serve_data_plane, dp_settings)
        yield info
        nursery.cancel_scope.cancel()


def welcome(status: SyncStatus = SyncStatus.NORMAL) -> str:
    return encode_control(
        Welcome(
            protocol_version="v1",
            node_id="11111111-1111-4111-8111-111111111111",
            version="0.1.0",
            sync_status=status,
            heartbeat_interval=0.5,
            heartbeat_timeout=10.0,
            max_payload=16 * 1024 * 1024,
        )
    )


async def answer(link: ScriptedLink) -> dict[str, Any]:
    """The next ack or nack (heartbeats skipped), within 10 s."""
    with trio.fail_after(10):
        while True:
            doc = await link.receive_json()
            if doc["type"] in ("ack", "nack"):
                return doc


async def status_doc(info: NodeInfo) -> dict[str, Any]:
    status, doc = await http_get(info.first("status")[1], "/status")
    assert status == 200
    assert isinstance(doc, dict)
    return doc


async def test_hello_apply_ack_nack_keeps_old_config(tmp_path: Path) -> None:
    cert, key = write_shared_cert(tmp_path)
    cp = ScriptedControlPlane(shared_tls(cert, key))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(cp.serve)
        async with data_plane(tmp_path, f"127.0.0.1:{port}") as info:
            with trio.fail_after(10):
                link = await cp.incoming.receive()
            hello = await link.receive_json()
            assert hello["type"] == "hello"
            assert hello["node_id"] == info.node_id
            assert hello["labels"] == {"region": "eu-1"}
            assert "key-auth" in hello["plugins"]
            assert (hello["config_version"], hello["config_hash"]) == (0, "0" * 32)
            await link.send_raw(welcome())

            good = encode_snapshot(valid_config(), 5)
            await link.send_raw(good.frame)
            assert await answer(link) == {
                "type": "ack",
                "config_version": 5,
                "config_hash": good.config_hash,
            }
            proxy_port = info.first("proxy")[1]
            assert (await http_get(proxy_port, "/a"))[0] == 502  # routed (upstream is down)
            assert (tmp_path / "data_plane" / CACHE_FILES["unencrypted"]).exists()

            # A config that the control plane's schemas would refuse never runs here.
            bad = valid_config()
            bad["routes"][0]["paths"] = ["no-leading-slash"]
            bad["services"][0]["port"] = 70000
            snapshot = encode_snapshot(bad, 6)
            await link.send_raw(snapshot.frame)
            nack = await answer(link)
            assert nack["type"] == "nack"
            assert nack["code"] == "invalid_config"
            fields = {(e["entity_type"], e["field"]) for e in nack["errors"]}
            assert ("route", "paths") in {(t, f.split(".")[0]) for t, f in fields}
            assert ("service", "port") in fields
            doc = await status_doc(info)
            assert doc["configuration"]["version"] == 5
            assert doc["configuration"]["hash"] == good.config_hash
            assert "invalid" in doc["configuration"]["last_error"]
            assert (await http_get(proxy_port, "/a"))[0] == 502  # still the old config

            # Damaged payloads are refused by the protocol core, not applied.
            header = json.dumps(
                {
                    "type": "snapshot",
                    "config_version": 7,
                    "config_hash": "b" * 32,
                    "encoding": "gzip",
                    "size": 10,
                }
            ).encode()
            await link.send_raw(header + b"\n" + b"not gzip at all")
            assert (await answer(link))["code"] == "invalid_payload"
            raw = json.dumps(valid_config("/b")).encode()
            header = json.dumps(
                {
                    "type": "snapshot",
                    "config_version": 8,
                    "config_hash": "c" * 32,
                    "encoding": "gzip",
                    "size": len(raw),
                }
            ).encode()
            await link.send_raw(header + b"\n" + gzip_compress(raw))
            assert (await answer(link))["code"] == "hash_mismatch"
            assert (await http_get(proxy_port, "/b"))[0] == 404

            # Heartbeats carry what runs: still version 5.
            with trio.fail_after(10):
                while (doc := await link.receive_json())["type"] != "heartbeat":
                    pass
            assert (doc["config_version"], doc["config_hash"]) == (5, good.config_hash)
            link.done.set()  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


async def test_moves_to_the_next_control_plane_address(tmp_path: Path) -> None:
    cert, key = write_shared_cert(tmp_path)
    cp = ScriptedControlPlane(shared_tls(cert, key))
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(cp.serve)
        endpoints = f"127.0.0.1:{dead_port},127.0.0.1:{port}"
        async with data_plane(tmp_path, endpoints):
            with trio.fail_after(5):
                link = await cp.incoming.receive()
            assert (await link.receive_json())["type"] == "hello"
            link.done.set()  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


async def test_refused_certificate_is_reported_as_likely_authentication_failure(
    tmp_path: Path,
) -> None:
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    cp = ScriptedControlPlane(shared_tls(*write_shared_cert(server_dir)))
    write_shared_cert(tmp_path)  # the data plane's own, different certificate
    async with trio.open_nursery() as nursery:
        port = await nursery.start(cp.serve)
        async with data_plane(tmp_path, f"127.0.0.1:{port}") as info:

            async def refused() -> str | None:
                error = (await status_doc(info))["control_plane"]["last_error"]
                return error if error else None

            error = await poll(refused)
            assert "certificate" in error
            assert (await status_doc(info))["control_plane"]["connected"] is False
        nursery.cancel_scope.cancel()
