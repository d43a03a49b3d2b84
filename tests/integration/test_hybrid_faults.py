"""Faults with real processes: a control plane that dies under load, data planes restarted
while the control plane is down (each cache mode), a corrupt cache, the start order of cache
and ``declarative_config``, and a configuration larger than ``cluster_max_payload``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import GatewayProcess, ProcessGroup, Upstream, http, poll
from test_hybrid_walkthrough import start_control_plane, start_data_plane

from gateway.cluster._cache import CACHE_FILES

pytestmark = pytest.mark.slow


def certs_settings(shared_certs: tuple[Path, Path]) -> dict[str, Any]:
    return {"cluster_cert": shared_certs[0], "cluster_cert_key": shared_certs[1]}


def add_route(admin: str, upstream: Upstream, name: str, path: str) -> None:
    assert http("PUT", f"{admin}/services/{name}", form={"url": upstream.url}).status in (200, 201)
    result = http("POST", f"{admin}/services/{name}/routes", form={"paths[]": path})
    assert result.status == 201, result


def serves(dp: GatewayProcess, path: str, status: int = 200) -> bool:
    return http("GET", dp.url("proxy", path)).status == status


def restart(*nodes: GatewayProcess) -> None:
    """Start (or wait for) several nodes in parallel."""
    for node in nodes:
        if not node.alive:
            node.start(wait=False)
    for node in nodes:
        node.wait_started()


def dp_status(dp: GatewayProcess) -> dict[str, Any]:
    doc = http("GET", dp.url("status", "/status")).json()
    assert isinstance(doc, dict)
    return doc


def test_control_plane_killed_under_load_then_catch_up(
    tmp_path: Path, processes: ProcessGroup, upstream: Upstream, shared_certs: tuple[Path, Path]
) -> None:
    database = tmp_path / "cluster.db"
    common = {**certs_settings(shared_certs), "sqlite_path": database}
    cp = start_control_plane(processes, common)
    dp = start_data_plane(processes, "dp", cp, certs_settings(shared_certs))
    admin = cp.url("admin")
    add_route(admin, upstream, "load", "/load")
    poll(lambda: serves(dp, "/load"), message="DP serves /load")

    # 200 requests; the control plane is SIGKILLed after the 50th. None may fail.
    failures: list[str] = []
    for i in range(200):
        if i == 50:
            cp.kill()
        try:
            result = http("GET", dp.url("proxy", f"/load/{i}"), timeout=5)
            if result.status != 200:
                failures.append(f"{i}: {result}")
        except OSError as exc:
            failures.append(f"{i}: {exc!r}")
    assert failures == []
    poll(lambda: not dp_status(dp)["control_plane"]["connected"], message="DP sees CP gone")
    assert dp_status(dp)["configuration"]["source"] == "control_plane"

    # While that control plane is down, another one on the same database takes a change.
    other = processes.node(
        "cp-other",
        {
            "role": "control_plane",
            "admin_listen": "127.0.0.1:0",
            "cluster_listen": "127.0.0.1:0",
            "cluster_telemetry_listen": "off",
            **common,
        },
    )
    add_route(other.url("admin"), upstream, "later", "/later")
    other.stop()
    assert serves(dp, "/later", 404)

    # The first control plane comes back on its address: the DP reconnects and catches up.
    cp.settings["cluster_listen"] = f"127.0.0.1:{cp.port('cluster')}"
    cp.start()
    poll(lambda: serves(dp, "/later"), message="DP caught up with /later")
    assert dp_status(dp)["control_plane"]["connected"] is True
    assert serves(dp, "/load/again")


def test_restart_with_control_plane_down_uses_the_cache(
    tmp_path: Path, processes: ProcessGroup, upstream: Upstream, shared_certs: tuple[Path, Path]
) -> None:
    cp = start_control_plane(processes, certs_settings(shared_certs))
    modes = ("unencrypted", "encrypted", "off")
    dps = {
        mode: start_data_plane(
            processes,
            f"dp-{mode}",
            cp,
            {**certs_settings(shared_certs), "data_plane_config_cache_mode": mode},
            wait=False,
        )
        for mode in modes
    }
    restart(*dps.values())
    add_route(cp.url("admin"), upstream, "cached", "/cached")
    poll(lambda: all(serves(dp, "/cached") for dp in dps.values()), message="all serve")
    ids = {mode: dp.node_id for mode, dp in dps.items()}
    for dp in dps.values():
        dp.stop()
    cp.kill()
    assert not any(dp.alive for dp in dps.values())
    encrypted = dps["encrypted"].prefix / CACHE_FILES["encrypted"]
    assert encrypted.exists()
    assert b"/cached" not in encrypted.read_bytes()
    assert not (dps["off"].prefix / CACHE_FILES["unencrypted"]).exists()

    restart(*dps.values())
    for mode in ("unencrypted", "encrypted"):
        assert serves(dps[mode], "/cached"), mode
        status = dp_status(dps[mode])
        assert status["configuration"]["source"] == "cache"
        assert status["control_plane"]["connected"] is False
        assert http("GET", dps[mode].url("status", "/status/ready")).status == 200
    assert serves(dps["off"], "/cached", 404)
    assert http("GET", dps["off"].url("status", "/status/ready")).status == 503
    assert {mode: dp.node_id for mode, dp in dps.items()} == ids  # node ids persisted

    # A corrupt cache is ignored (logged), the node starts empty instead of crashing.
    plain = dps["unencrypted"]
    plain.stop()
    (plain.prefix / CACHE_FILES["unencrypted"]).write_bytes(b"GWC1P\x1f\x8b garbage")
    plain.start()
    assert serves(plain, "/cached", 404)
    assert "ignored" in plain.log_text()

    # Start order (the seed's): a valid cache wins over declarative_config, which is used
    # only when there is no cache. NOTE: Kong's code does the opposite (kong-behaviour §7.2).
    declarative = tmp_path / "kong.json"
    declarative.write_text(
        json.dumps(
            {
                "_format_version": "3.0",
                "services": [
                    {"name": "d", "url": upstream.url, "routes": [{"paths": ["/declared"]}]}
                ],
            }
        )
    )
    for mode in ("encrypted", "off"):
        dps[mode].stop()
        dps[mode].settings["declarative_config"] = str(declarative)
    restart(dps["encrypted"], dps["off"])
    assert serves(dps["encrypted"], "/cached")
    assert serves(dps["encrypted"], "/declared", 404)
    assert serves(dps["off"], "/declared")
    assert dp_status(dps["off"])["configuration"]["source"] == "declarative"


def test_oversized_config_is_reported_not_looped(
    tmp_path: Path, processes: ProcessGroup, shared_certs: tuple[Path, Path]
) -> None:
    # 2,500 consumers with 1.8 kB custom ids: ~4.6 MB, over the 4 MiB minimum limit.
    big = {
        "_format_version": "3.0",
        "consumers": [
            {"username": f"user-{i:05d}", "custom_id": f"c-{i:05d}-" + "x" * 1800}
            for i in range(2500)
        ],
    }
    (tmp_path / "big.json").write_text(json.dumps(big))
    database = tmp_path / "big.db"
    subprocess.run(
        [sys.executable, "-m", "gateway", "config", "db_import", "big.json",
         "--set", f"sqlite_path={database}", "--prefix", str(tmp_path / "import")],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    cp = start_control_plane(
        processes,
        {
            **certs_settings(shared_certs),
            "sqlite_path": database,
            "cluster_max_payload": 4194304,
            "cluster_heartbeat_interval": 0.3,
            "cluster_heartbeat_timeout": 5,
        },
    )
    dp = start_data_plane(processes, "dp", cp, certs_settings(shared_certs))
    admin = cp.url("admin")

    def reported() -> dict[str, Any] | None:
        rows = http("GET", admin + "/clustering/data-planes").json()["data"]
        return rows[0] if rows and rows[0]["sync_status"] == "payload_too_large" else None

    row = poll(reported, message="payload_too_large reported")
    assert "cluster_max_payload" in row["last_error"]
    assert row["connected"] is True
    # The link stays up (heartbeats keep last_seen moving): no reconnect loop.
    first_seen = row["last_seen"]
    poll(
        lambda: (
            http("GET", admin + "/clustering/data-planes").json()["data"][0]["last_seen"]
            >= first_seen + 2
        ),
        timeout=10,
        message="heartbeats on the same link",
    )
    assert dp.log_text().count("connected to control plane") == 1
    status = dp_status(dp)
    assert status["control_plane"]["sync_status"] == "payload_too_large"
    assert status["configuration"]["version"] is None
