"""The seed's walkthrough with real processes: certificates, a control plane on SQLite, two
data planes, and the Admin API driving what the data planes serve.

Run in shared mode (``hybrid gen_cert``) and in PKI mode (root CA -> intermediate -> CP and
DP leaves made with the ``openssl`` command line).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import GatewayProcess, ProcessGroup, Upstream, http, make_openssl_pki, poll

pytestmark = pytest.mark.slow

PROPAGATION_DEADLINE = 1.0  # seconds, from the Admin API answer to every DP serving it


def cluster_settings(
    tmp_path: Path, mode: str, shared_certs: tuple[Path, Path]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(control plane settings, data plane settings) for the mTLS mode."""
    if mode == "shared":
        cert, key = shared_certs
        common = {"cluster_cert": cert, "cluster_cert_key": key}
        return common, dict(common)
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command line")
    pki = make_openssl_pki(tmp_path / "pki")
    cp = {
        "cluster_mtls": "pki",
        "cluster_ca_cert": pki / "root.crt",
        "cluster_cert": pki / "cp-chain.crt",
        "cluster_cert_key": pki / "cp.key",
    }
    dp = {
        "cluster_mtls": "pki",
        "cluster_ca_cert": pki / "root.crt",
        "cluster_cert": pki / "dp-chain.crt",
        "cluster_cert_key": pki / "dp.key",
        "cluster_server_name": "control-plane.gateway.test",
    }
    return cp, dp


def start_control_plane(processes: ProcessGroup, extra: dict[str, Any]) -> GatewayProcess:
    return processes.node(
        "cp",
        {
            "role": "control_plane",
            "admin_listen": "127.0.0.1:0",
            "cluster_listen": "127.0.0.1:0",
            "cluster_telemetry_listen": "127.0.0.1:0",
            **extra,
        },
    )


def start_data_plane(
    processes: ProcessGroup,
    name: str,
    cp: GatewayProcess,
    extra: dict[str, Any],
    *,
    wait: bool = True,
) -> GatewayProcess:
    return processes.node(
        name,
        {
            "role": "data_plane",
            "database": "off",
            "proxy_listen": "127.0.0.1:0",
            "status_listen": "127.0.0.1:0",
            "cluster_control_plane": f"127.0.0.1:{cp.port('cluster')}",
            "cluster_telemetry_endpoint": f"127.0.0.1:{cp.port('telemetry')}",
            "cluster_reconnect_backoff_min": 0.1,
            "cluster_reconnect_backoff_max": 1,
            **extra,
        },
        wait=wait,
    )


def all_serve(dps: list[GatewayProcess], path: str, status: int) -> bool:
    return all(http("GET", dp.url("proxy", path)).status == status for dp in dps)


def wait_all_serve(dps: list[GatewayProcess], path: str, status: int, since: float) -> float:
    """Poll until every DP answers *status* on *path*; the seconds since *since*."""
    remaining = PROPAGATION_DEADLINE - (time.monotonic() - since)
    poll(
        lambda: all_serve(dps, path, status),
        timeout=max(remaining, 0.01),
        interval=0.01,
        message=f"every data plane answers {status} on {path}",
    )
    return time.monotonic() - since


@pytest.mark.parametrize("mode", ["shared", "pki"])
def test_walkthrough(
    tmp_path: Path,
    mode: str,
    processes: ProcessGroup,
    upstream: Upstream,
    shared_certs: tuple[Path, Path],
) -> None:
    cp_extra, dp_extra = cluster_settings(tmp_path, mode, shared_certs)
    cp = start_control_plane(processes, cp_extra)
    # dp1 proxies in-process, dp2 with two worker processes (the default on this machine):
    # both must follow the control plane the same way.
    dps = [
        start_data_plane(processes, f"dp{i}", cp, {**dp_extra, "worker_processes": i}, wait=False)
        for i in (1, 2)
    ]
    for dp in dps:
        dp.wait_started()
    admin = cp.url("admin")

    # Both data planes are listed as connected and run the control plane's config.
    def listed() -> list[dict[str, Any]] | None:
        cp_hash = http("GET", admin + "/status").json()["configuration_hash"]
        rows = http("GET", admin + "/clustering/data-planes").json()["data"]
        ok = len(rows) == 2 and all(
            r["connected"] and r["config_hash"] == cp_hash and r["sync_status"] == "normal"
            for r in rows
        )
        return rows if ok else None

    rows = poll(listed, message="both data planes connected with the CP hash")
    assert {r["id"] for r in rows} == {dp.node_id for dp in dps}
    for r in rows:
        assert r["ip"] == "127.0.0.1"
        assert r["status"] == "connected"
        assert r["version"]
        assert isinstance(r["last_seen"], int)
        assert r["cert_details"]["expiry_timestamp"] > time.time()
        assert 1209500 < r["ttl"] <= 1209600
        assert r["cp_node_id"] == cp.node_id
    # Before any configuration the data planes answer 404 and are not ready.
    assert all_serve(dps, "/walk", 404)
    assert http("GET", dps[0].url("status", "/status/ready")).status == 503

    # A service and a route created on the CP are served by both DPs within 1 s.
    service = http("POST", admin + "/services", form={"name": "walk", "url": upstream.url})
    assert service.status == 201, service
    started = time.monotonic()
    route = http("POST", admin + "/services/walk/routes", form={"name": "walk", "paths[]": "/walk"})
    assert route.status == 201, route
    took = wait_all_serve(dps, "/walk", 200, started)
    body = http("GET", dps[1].url("proxy", "/walk/x")).json()
    assert body == {"upstream": "upstream", "path": "/x"}
    assert http("GET", dps[0].url("status", "/status/ready")).status == 200
    status = http("GET", dps[0].url("status", "/status")).json()
    assert status["control_plane"]["connected"] is True

    # Both data planes also hold their telemetry link (same mTLS checks) to the CP.
    def telemetry_up() -> bool:
        return all(
            http("GET", dp.url("status", "/status")).json()["telemetry"]["connected"] for dp in dps
        )

    poll(telemetry_up, message="both telemetry links open")
    assert (
        status["configuration"]["hash"]
        == http("GET", admin + "/status").json()["configuration_hash"]
    )

    # Deleting the route makes both answer 404 within 1 s.
    started = time.monotonic()
    assert http("DELETE", admin + "/routes/walk").status == 204
    took = max(took, wait_all_serve(dps, "/walk", 404, started))

    # Disabled services are not synced (Kong acceptance 11.1 #7).
    assert http("POST", admin + "/services/walk/routes", form={"paths[]": "/off"}).status == 201
    wait_all_serve(dps, "/off", 200, time.monotonic())
    started = time.monotonic()
    patched = http("PATCH", admin + "/services/walk", json_body={"enabled": False})
    assert patched.status == 200, patched
    wait_all_serve(dps, "/off", 404, started)
    print(f"{mode}: slowest propagation {took * 1000:.0f} ms")
