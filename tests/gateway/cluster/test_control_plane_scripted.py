"""A real control plane (in process, SQLite) against hand-written data planes.

The scripted data plane uses the real mutual TLS and websocket stack, but its hello and
answers are written by hand, so the tests can send what a real data plane never would:
other versions, other plugin sets, nacks, silence, drift.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cluster_support import (
    DP_ID,
    ScriptedLink,
    cluster_port,
    expect_rejected_upgrade,
    hello,
    new_id,
    poll,
    scripted_data_plane,
    settings,
    shared_tls,
    write_shared_cert,
)

from gateway._node import NodeInfo, open_node_store
from gateway.cluster._control_plane import serve_control_plane
from gateway.cluster._tls import ClusterPeerRejected, ClusterTLS
from gateway.cluster._websocket import LinkClosed, LinkRefused
from gateway.store import Store


@contextlib.asynccontextmanager
async def control_plane(
    tmp_path: Path, rows: tuple[tuple[str, dict[str, Any]], ...] = (), **overrides: Any
) -> AsyncIterator[tuple[NodeInfo, Store, ClusterTLS]]:
    """A control plane whose store holds *rows* before it starts."""
    cert, key = write_shared_cert(tmp_path)
    opts: dict[str, Any] = {
        "cluster_heartbeat_interval": 0.2,
        "cluster_heartbeat_timeout": 1.0,
        "cluster_sync_coalesce": 0,
    }
    opts.update(overrides)
    cp_settings = settings(tmp_path, "control_plane", cert, key, **opts)
    if rows:
        async with open_node_store(cp_settings) as store:
            for entity, data in rows:
                await store.insert(entity, data)
    async with trio.open_nursery() as nursery:
        info = await nursery.start(serve_control_plane, cp_settings)
        async with open_node_store(cp_settings) as store:
            yield info, store, shared_tls(cert, key)
        nursery.cancel_scope.cancel()


async def row(store: Store, key: str = DP_ID) -> dict[str, Any]:
    found = await store.get_data_plane(key)
    return found or {}


def snapshot_header(frame: bytes | str) -> dict[str, Any]:
    assert isinstance(frame, bytes)
    header = json.loads(frame[: frame.index(b"\n")])
    assert isinstance(header, dict)
    return header


async def no_snapshot_for(link: ScriptedLink, seconds: float) -> int:
    """Read for *seconds*; fail on a binary frame; return how many heartbeats came."""
    heartbeats = 0
    with trio.move_on_after(seconds):
        while True:
            message = await link.ws.receive()
            assert isinstance(message, str), "a snapshot was sent"
            if json.loads(message)["type"] == "heartbeat":
                heartbeats += 1
    return heartbeats


async def test_compatible_data_plane_gets_snapshot_and_row(tmp_path: Path) -> None:
    async with control_plane(tmp_path) as (info, store, tls):
        await store.insert("services", {"id": new_id(), "name": "s", "host": "a", "port": 80})
        async with scripted_data_plane(cluster_port(info), tls) as link:
            await link.send_json(hello(labels={"region": "eu-1"}))
            welcome = await link.receive_json()
            assert welcome["type"] == "welcome"
            assert welcome["sync_status"] == "normal"
            frame = await link.receive_until(lambda m: isinstance(m, bytes))
            header = snapshot_header(frame)
            await link.send_json(
                {
                    "type": "ack",
                    "config_version": header["config_version"],
                    "config_hash": header["config_hash"],
                }
            )

            async def acked() -> dict[str, Any] | None:
                r = await row(store)
                wanted = (header["config_version"], header["config_hash"])
                return r if (r.get("config_version"), r.get("config_hash")) == wanted else None

            r = await poll(acked)
            assert r["connected"] is True
            assert r["status"] == "connected"
            assert r["sync_status"] == "normal"
            assert r["ip"] == "127.0.0.1"
            assert r["hostname"] == "scripted-dp"
            assert r["labels"] == {"region": "eu-1"}
            assert r["cp_node_id"] == info.node_id
            assert r["config_version"] == header["config_version"]
            assert isinstance(r["cert_details"]["expiry_timestamp"], int)
        # After the link closes the row says so (Kong never does: kong-behaviour.md §2.6).
        r = await poll(lambda: _disconnected(store))
        assert r["disconnected_at"] >= r["connected_since"]


async def _disconnected(store: Store) -> dict[str, Any] | None:
    r = await row(store)
    return r if r.get("connected") is False else None


@pytest.mark.parametrize("version", ["1.0.0", "0.99.0", "not-a-version"])
async def test_incompatible_gateway_version_never_gets_a_snapshot(
    tmp_path: Path, version: str
) -> None:
    async with (
        control_plane(tmp_path) as (info, store, tls),
        scripted_data_plane(cluster_port(info), tls) as link,
    ):
        await link.send_json(hello(version=version))
        welcome = await link.receive_json()
        assert welcome["sync_status"] == "kong_version_incompatible"
        assert await no_snapshot_for(link, 0.7) >= 1  # the link stays up, heartbeats flow
        r = await row(store)
        assert r["sync_status"] == "kong_version_incompatible"
        assert version in r["status_reason"]
        assert "kong_version_incompatible" in r["last_error"]


@pytest.mark.parametrize(
    ("plugins", "status"),
    [
        ({"cors": "0.1.0"}, "plugin_set_incompatible"),
        ({"key-auth": "9.0.0"}, "plugin_version_incompatible"),
        ({"key-auth": "0.99.0"}, "plugin_version_incompatible"),
    ],
)
async def test_plugin_incompatibility_blocks_the_snapshot(
    tmp_path: Path, plugins: dict[str, str], status: str
) -> None:
    key_auth = {"id": new_id(), "name": "key-auth", "config": {}, "enabled": True}
    async with (
        control_plane(tmp_path, rows=(("plugins", key_auth),)) as (info, store, tls),
        scripted_data_plane(cluster_port(info), tls) as link,
    ):
        await link.send_json(hello(plugins=plugins))
        welcome = await link.receive_json()
        assert welcome["sync_status"] == status
        assert "key-auth" in welcome["reason"]
        await no_snapshot_for(link, 0.5)
        r = await poll(lambda: row(store))
        assert r["sync_status"] == status


async def test_extra_or_unconfigured_plugins_are_fine(tmp_path: Path) -> None:
    async with (
        control_plane(tmp_path) as (info, _store, tls),
        scripted_data_plane(cluster_port(info), tls) as link,
    ):
        await link.send_json(hello(plugins={"banana": "1.1.1", "cors": "0.0.1"}))
        assert (await link.receive_json())["sync_status"] == "normal"
        await link.receive_until(lambda m: isinstance(m, bytes))


async def test_nack_is_recorded_and_link_stays(tmp_path: Path) -> None:
    async with (
        control_plane(tmp_path, cluster_heartbeat_timeout=10) as (info, store, tls),
        scripted_data_plane(cluster_port(info), tls) as link,
    ):
        await link.send_json(hello())
        header = snapshot_header(await link.receive_until(lambda m: isinstance(m, bytes)))
        await link.send_json(
            {
                "type": "nack",
                "config_version": header["config_version"],
                "config_hash": header["config_hash"],
                "code": "invalid_config",
                "message": "declarative config is invalid",
                "errors": [
                    {
                        "entity_type": "route",
                        "entity_id": new_id(),
                        "field": "paths.1",
                        "message": "should start with: / (fixed path) or ~/ (regex path)",
                    }
                ],
            }
        )
        status = await link.receive_until(
            lambda m: isinstance(m, str) and json.loads(m)["type"] == "status"
        )
        assert json.loads(status)["sync_status"] == "config_rejected"

        async def rejected() -> dict[str, Any] | None:
            r = await row(store)
            return r if r.get("sync_status") == "config_rejected" else None

        r = await poll(rejected)
        assert "invalid_config" in r["last_error"]
        assert r["last_error_details"][0]["field"] == "paths.1"
        assert r["connected"] is True
        # A new config version is offered again.
        await store.insert("services", {"id": new_id(), "name": "t", "host": "b", "port": 1})
        frame = await link.receive_until(lambda m: isinstance(m, bytes))
        assert snapshot_header(frame)["config_version"] > header["config_version"]


async def test_payload_over_the_data_planes_limit_is_reported_not_sent(tmp_path: Path) -> None:
    services = tuple(("services", {"id": new_id(), "name": f"s{i}", "host": "a"}) for i in range(5))
    async with (
        control_plane(tmp_path, rows=services) as (info, store, tls),
        scripted_data_plane(cluster_port(info), tls) as link,
    ):
        await link.send_json(hello(max_payload=300))
        welcome = await link.receive_json()
        assert welcome["sync_status"] == "payload_too_large"
        assert "cluster_max_payload" in welcome["reason"]
        await no_snapshot_for(link, 0.5)
        r = await row(store)
        assert r["sync_status"] == "payload_too_large"
        assert "payload_too_large" in r["last_error"]


async def test_drift_is_detected_and_snapshot_sent_again(tmp_path: Path) -> None:
    async with (
        control_plane(tmp_path) as (info, _store, tls),
        scripted_data_plane(cluster_port(info), tls) as link,
    ):
        await link.send_json(hello())
        header = snapshot_header(await link.receive_until(lambda m: isinstance(m, bytes)))
        await link.send_json(
            {
                "type": "ack",
                "config_version": header["config_version"],
                "config_hash": header["config_hash"],
            }
        )
        await link.send_json({"type": "heartbeat", "config_version": 77, "config_hash": "a" * 32})
        again = snapshot_header(await link.receive_until(lambda m: isinstance(m, bytes)))
        assert again["config_hash"] == header["config_hash"]


async def test_silent_data_plane_is_closed(tmp_path: Path) -> None:
    async with control_plane(tmp_path) as (info, store, tls):
        async with scripted_data_plane(cluster_port(info), tls) as link:
            await link.send_json(hello())
            with trio.fail_after(5), pytest.raises(LinkClosed, match="4408"):
                await read_until_closed(link)  # we answer nothing, send no heartbeat
        r = await poll(lambda: _disconnected(store))
        assert "peer_timeout" in r["last_error"]


async def test_silent_before_hello_is_closed(tmp_path: Path) -> None:
    async with (
        control_plane(tmp_path) as (info, _, tls),
        scripted_data_plane(cluster_port(info), tls) as link,
    ):
        with trio.fail_after(5), pytest.raises(LinkClosed, match="4408"):
            await link.ws.receive()


async def test_garbage_is_a_protocol_error_not_a_crash(tmp_path: Path) -> None:
    async with control_plane(tmp_path) as (info, _, tls):
        async with scripted_data_plane(cluster_port(info), tls) as link:
            await link.send_raw("{not json")
            with trio.fail_after(5), pytest.raises(LinkClosed, match="1002"):
                await link.ws.receive()
        # The control plane still serves others.
        async with scripted_data_plane(cluster_port(info), tls) as link:
            await link.send_json(hello())
            assert (await link.receive_json())["type"] == "welcome"


async def test_wrong_path_and_missing_subprotocol_are_refused(tmp_path: Path) -> None:
    async with control_plane(tmp_path) as (info, _, tls):
        assert await expect_rejected_upgrade(cluster_port(info), tls, path="/v1/outlet") == 404
        assert (
            await expect_rejected_upgrade(cluster_port(info), tls, subprotocol="kong.meta.v1")
            == 400
        )


async def test_peer_without_the_cluster_certificate_never_reaches_the_protocol(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.cluster")
    other = tmp_path / "other"
    other.mkdir()
    stranger = shared_tls(*write_shared_cert(other))
    async with control_plane(tmp_path) as (info, store, _):
        with pytest.raises((ClusterPeerRejected, LinkRefused)):
            await say_hello(cluster_port(info), stranger)
        await poll(lambda: _async(any("rejected" in r.message for r in caplog.records)))
        assert any("127.0.0.1:" in r.message for r in caplog.records if "rejected" in r.message)
        assert await store.get_data_plane(DP_ID) is None


async def read_until_closed(link: ScriptedLink) -> None:
    while True:
        await link.ws.receive()


async def say_hello(port: int, tls: ClusterTLS) -> None:
    async with scripted_data_plane(port, tls) as link:
        await link.send_json(hello())
        await link.receive_json()


async def _async(value: Any) -> Any:
    return value


async def test_telemetry_listener_requires_mtls_and_holds_the_link(tmp_path: Path) -> None:
    from gateway.cluster._telemetry import TELEMETRY_PATH, TELEMETRY_SUBPROTOCOL

    async with control_plane(tmp_path) as (info, _, tls):
        port = info.first("telemetry")[1]
        async with scripted_data_plane(
            port, tls, path=TELEMETRY_PATH, subprotocol=TELEMETRY_SUBPROTOCOL
        ) as link:
            await link.send_json({"type": "anything"})
            with trio.fail_after(2):
                await link.ws._ws.ping()  # answered by the control plane
