"""Revocation checks of data plane certificates (``cluster_ocsp``) with real processes.

A control plane and data planes started through the CLI in PKI mode; the PKI is made by
``certs.build_dev_pki`` / ``issue_certificate`` (root -> intermediate -> leaves, a delegated
OCSP signer); a real ``openssl ocsp`` responder answers for the data plane certificates.
Each data plane certificate's AIA names the responder of its case: the good one, a port
nothing listens on, a tiny server answering HTTP 500, an ``openssl ocsp`` signing with an
unrelated key, or none at all.

Kong's acceptance items 31-36 (kong-behaviour.md 11.3) are the log texts asserted here; a
refused data plane never gets a ``/clustering/data-planes`` row and is listed by
``GET /clustering/refusals`` with its certificate subject and the reason.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from helpers import GatewayProcess, ProcessGroup, http, poll

from certs import IssuedCertificate, build_dev_pki, cert_pem, issue_certificate
from certs._generate import DevPki
from tests.gateway.cluster.ocsp_helpers import (
    free_port,
    openssl_ocsp_responder,
    unrelated_responder,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]

DEADLINE = 15.0
REVOKED = (
    'client certificate was revoked: failed to validate OCSP response: certificate status "revoked"'
    " in the OCSP response"
)
HTTP_500 = (
    "data plane client certificate revocation check failed: OCSP responder returns bad HTTP "
    "status code: 500"
)
SERVER_NAME = "localhost"


class _Status500(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(500)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Cluster:
    """The module's PKI, written to files, and the responders' ports."""

    directory: Path
    pki: DevPki
    responder_port: int
    unrelated_port: int
    down_port: int
    status500_port: int
    data_planes: dict[str, IssuedCertificate] = field(default_factory=dict)

    def write(self, name: str, issued: IssuedCertificate) -> tuple[Path, Path]:
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        cert.write_bytes(issued.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(issued.key_pem)
        return cert, key

    def issue(self, name: str, ocsp_port: int | None) -> IssuedCertificate:
        start = datetime.now(UTC) - timedelta(minutes=1)
        issued = issue_certificate(
            common_name=name,
            issuer=self.pki.leaf_issuer,
            not_before=start,
            not_after=start + timedelta(days=30),
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
            ocsp_url=None if ocsp_port is None else f"http://127.0.0.1:{ocsp_port}/",
        )
        self.data_planes[name] = issued
        self.write(name, issued)
        return issued

    def responder_view(self, *names: str) -> DevPki:
        """The PKI as ``openssl_ocsp_responder`` sees it: these DP certificates, in order."""
        return attrs.evolve(self.pki, data_planes=tuple(self.data_planes[n] for n in names))

    def control_plane(
        self, processes: ProcessGroup, name: str, ocsp: str, **extra: Any
    ) -> GatewayProcess:
        return processes.node(
            name,
            {
                "role": "control_plane",
                "admin_listen": "127.0.0.1:0",
                "cluster_listen": "127.0.0.1:0",
                "cluster_telemetry_listen": "off",
                "cluster_mtls": "pki",
                "cluster_ca_cert": self.directory / "root.crt",
                "cluster_cert": self.directory / "cp.crt",
                "cluster_cert_key": self.directory / "cp.key",
                "cluster_ocsp": ocsp,
                "cluster_ocsp_timeout": 2,
                **extra,
            },
        )

    def data_plane(self, processes: ProcessGroup, cp: GatewayProcess, name: str) -> GatewayProcess:
        return processes.node(
            f"{cp.name}-{name}",
            {
                "role": "data_plane",
                "database": "off",
                "proxy_listen": "127.0.0.1:0",
                "status_listen": "127.0.0.1:0",
                "cluster_control_plane": f"127.0.0.1:{cp.port('cluster')}",
                "cluster_mtls": "pki",
                "cluster_ca_cert": self.directory / "root.crt",
                "cluster_server_name": SERVER_NAME,
                "cluster_cert": self.directory / f"{name}.crt",
                "cluster_cert_key": self.directory / f"{name}.key",
                "cluster_reconnect_backoff_min": 0.2,
                "cluster_reconnect_backoff_max": 1,
            },
            wait=False,
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("revocation-pki")
    responder_port, unrelated_port, down_port = free_port(), free_port(), free_port()
    status500 = ThreadingHTTPServer(("127.0.0.1", 0), _Status500)
    status500.daemon_threads = True
    thread = threading.Thread(target=status500.serve_forever, daemon=True)
    thread.start()
    pki = build_dev_pki(
        datetime.now(UTC) - timedelta(minutes=1),
        intermediates=1,
        dp_count=0,
        cp_names=(SERVER_NAME, "127.0.0.1"),
        ocsp_url=f"http://127.0.0.1:{responder_port}/",  # gives the delegated OCSP signer
        days=30,
    )
    state = Cluster(
        directory=directory,
        pki=pki,
        responder_port=responder_port,
        unrelated_port=unrelated_port,
        down_port=down_port,
        status500_port=int(status500.server_address[1]),
    )
    (directory / "root.crt").write_bytes(cert_pem(pki.root.certificate))
    state.write("cp", pki.control_plane)
    for name in ("dp-good", "dp-revoked"):
        state.issue(name, responder_port)
    state.issue("dp-down", down_port)
    state.issue("dp-http500", state.status500_port)
    state.issue("dp-no-aia", None)
    state.issue("dp-unrelated", unrelated_port)
    # The responders live for the whole module: dp-good is good, dp-revoked revoked; the
    # unrelated one signs with a key of another CA.
    main_dir = directory / "responder"
    unrelated_dir = directory / "unrelated"
    main_dir.mkdir()
    unrelated_dir.mkdir()
    try:
        with (
            openssl_ocsp_responder(
                main_dir,
                state.responder_view("dp-good", "dp-revoked"),
                responder_port,
                revoked=(1,),
            ),
            openssl_ocsp_responder(
                unrelated_dir,
                state.responder_view("dp-unrelated"),
                unrelated_port,
                signer=unrelated_responder(),
            ),
        ):
            yield state
    finally:
        status500.shutdown()
        status500.server_close()


# -- what the control plane shows -----------------------------------------------------------


def rows(cp: GatewayProcess) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = http("GET", cp.url("admin", "/clustering/data-planes")).json()[
        "data"
    ]
    return result


def refusals(cp: GatewayProcess) -> list[dict[str, Any]]:
    answer = http("GET", cp.url("admin", "/clustering/refusals"))
    assert answer.status == 200, answer
    result: list[dict[str, Any]] = answer.json()["data"]
    return result


def refusal_of(cp: GatewayProcess, name: str, stage: str = "revocation") -> dict[str, Any] | None:
    for refusal in refusals(cp):
        if refusal["subject"] == f"CN={name}" and refusal["stage"] == stage:
            return refusal
    return None


def wait_connected(cp: GatewayProcess, dp: GatewayProcess) -> dict[str, Any]:
    def connected() -> dict[str, Any] | None:
        for row in rows(cp):
            if row["id"] == dp.node_id and row["connected"]:
                return row
        return None

    return poll(connected, timeout=DEADLINE, message=f"{dp.name} connected")


def wait_refused(cp: GatewayProcess, name: str, stage: str = "revocation") -> dict[str, Any]:
    return poll(
        lambda: refusal_of(cp, name, stage),
        timeout=DEADLINE,
        message=f"{name} listed in /clustering/refusals ({stage})",
    )


def wait_log(process: GatewayProcess, *texts: str) -> str:
    """The first log line containing every one of ``texts``."""

    def line() -> str | None:
        lines = process.log_text().splitlines()
        return next((ln for ln in lines if all(t in ln for t in texts)), None)

    return poll(line, timeout=DEADLINE, message=f"{process.name} logs {texts!r}")


def start_all(
    cluster: Cluster, processes: ProcessGroup, cp: GatewayProcess, names: tuple[str, ...]
) -> dict[str, GatewayProcess]:
    dps = {name: cluster.data_plane(processes, cp, name) for name in names}
    for dp in dps.values():
        dp.wait_started()
    return dps


# -- the three modes ------------------------------------------------------------------------


def test_on_admits_only_a_verified_good_certificate(
    cluster: Cluster, processes: ProcessGroup
) -> None:
    cp = cluster.control_plane(processes, "cp-on", "on")
    names = ("dp-good", "dp-revoked", "dp-down", "dp-http500", "dp-no-aia", "dp-unrelated")
    dps = start_all(cluster, processes, cp, names)

    wait_connected(cp, dps["dp-good"])  # Kong 31
    expected = {
        "dp-revoked": REVOKED,  # Kong 32
        "dp-down": "data plane client certificate revocation check failed: OCSP responder",
        "dp-http500": HTTP_500,  # Kong 33
        "dp-no-aia": "the certificate has no OCSP responder URL (AIA)",
        "dp-unrelated": "failed to validate OCSP response",
    }
    for name, reason in expected.items():
        refusal = wait_refused(cp, name)
        assert reason in refusal["reason"], refusal
        assert refusal["address"].startswith("127.0.0.1:")
        assert refusal["serial"] == format(cluster.data_planes[name].certificate.serial_number, "x")
    assert "unreachable" in refusal_of(cp, "dp-down")["reason"]  # type: ignore[index]
    # The log names the peer address, Kong's text and the certificate.
    line = wait_log(cp, REVOKED)
    assert "data plane 127.0.0.1:" in line
    assert "rejected:" in line
    assert "CN=dp-revoked" in line
    assert " WARNING " in line
    wait_log(cp, HTTP_500)
    # Refused before the websocket upgrade: no row for any of them, ever.
    assert {row["id"] for row in rows(cp)} == {dps["dp-good"].node_id}
    status = http("GET", dps["dp-revoked"].url("status", "/status")).json()
    assert status["control_plane"]["connected"] is False
    assert status["control_plane"]["last_error"]


def test_optional_refuses_revoked_and_allows_without_a_verdict(
    cluster: Cluster, processes: ProcessGroup
) -> None:
    cp = cluster.control_plane(processes, "cp-optional", "optional")
    names = ("dp-good", "dp-revoked", "dp-down", "dp-http500", "dp-no-aia", "dp-unrelated")
    dps = start_all(cluster, processes, cp, names)

    # Kong 35: revoked is refused in optional mode too, with the same log line.
    refusal = wait_refused(cp, "dp-revoked")
    assert REVOKED in refusal["reason"]
    wait_log(cp, REVOKED)
    # No verdict (responder down, HTTP 500, no AIA, a response that fails its checks):
    # allowed, with a warning naming the reason (Kong 36 for the 500).
    for name in ("dp-good", "dp-down", "dp-http500", "dp-no-aia", "dp-unrelated"):
        wait_connected(cp, dps[name])
    allowed = "allowed without a revocation verdict (cluster_ocsp = optional)"
    line = wait_log(cp, allowed, HTTP_500)
    assert " WARNING " in line
    assert "CN=dp-http500" in line
    assert "unreachable" in wait_log(cp, allowed, "CN=dp-down")
    wait_log(cp, allowed, "CN=dp-no-aia", "no OCSP responder URL")
    wait_log(cp, allowed, "CN=dp-unrelated", "failed to validate OCSP response")
    assert dps["dp-revoked"].node_id not in {row["id"] for row in rows(cp)}
    assert all(r["subject"] == "CN=dp-revoked" for r in refusals(cp))


def test_off_does_not_check(cluster: Cluster, processes: ProcessGroup) -> None:
    cp = cluster.control_plane(processes, "cp-off", "off")
    dps = start_all(cluster, processes, cp, ("dp-revoked",))
    wait_connected(cp, dps["dp-revoked"])  # Kong 34
    assert refusals(cp) == []


# -- re-checks of connected data planes -------------------------------------------------------


def test_revoked_while_connected_is_disconnected_and_cannot_reconnect(
    cluster: Cluster, processes: ProcessGroup, tmp_path: Path
) -> None:
    port = free_port()
    cluster.issue("dp-victim", port)
    view = cluster.responder_view("dp-victim")
    cp = cluster.control_plane(processes, "cp-recheck", "on", cluster_ocsp_recheck_interval=1)
    good_dir, revoked_dir = _mkdir(tmp_path / "good-index"), _mkdir(tmp_path / "revoked-index")
    with openssl_ocsp_responder(good_dir, view, port):
        dp = cluster.data_plane(processes, cp, "dp-victim")
        dp.wait_started()
        row = wait_connected(cp, dp)
        assert row["last_error"] is None
    # The CA revokes the certificate; the responder now says so.
    with openssl_ocsp_responder(revoked_dir, view, port, revoked=(0,)):
        revoked_at = time.monotonic()

        # Disconnected at the next re-check (1 s), with the reason in the row.
        def disconnected() -> dict[str, Any] | None:
            for r in rows(cp):
                if r["id"] == dp.node_id and not r["connected"]:
                    return r
            return None

        row = poll(disconnected, timeout=DEADLINE, message="the revoked data plane disconnected")
        # Within the re-check interval (1 s), plus the responder round trip and polling.
        assert time.monotonic() - revoked_at < 4.0
        assert REVOKED in row["last_error"], row
        assert REVOKED in row["disconnect_reason"], row
        wait_refused(cp, "dp-victim", stage="recheck")
        line = wait_log(cp, "disconnected: data plane client certificate was revoked")
        assert dp.node_id in line
        # It tries again and is refused at connect: the cached "good" answer was dropped.
        wait_refused(cp, "dp-victim", stage="revocation")
        status = http("GET", dp.url("status", "/status")).json()
        assert status["control_plane"]["connected"] is False
        for r in rows(cp):
            if r["id"] == dp.node_id:
                assert not r["connected"]
    assert dp.alive  # the data plane keeps running (and serving its last configuration)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
