"""Cluster certificate rotation without a restart, with real processes.

A control plane and a data plane in PKI mode (``certs.build_dev_pki``) serve traffic while
both rotate to new certificates from the same CA: the CP through its files and SIGHUP, the
DP through its files and ``POST /status/certificates/reload?reconnect=true``. A client loop
through the DP's proxy runs during the whole rotation and must see no failure. After the
DP's reconnect the CP row shows the new DP certificate's notAfter, and the CP presents its
new certificate to new connections. Bad material is refused and the old material stays.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from helpers import GatewayProcess, ProcessGroup, Upstream, http, poll

from certs import IssuedCertificate, build_dev_pki, cert_pem, issue_certificate
from certs._generate import DevPki

pytestmark = pytest.mark.slow

DEADLINE = 15.0
SERVER_NAME = "localhost"


def write_pair(directory: Path, name: str, issued: IssuedCertificate) -> tuple[Path, Path]:
    """Replace ``name.crt`` / ``name.key`` atomically (as a deployment tool would)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    for path, data, mode in ((key, issued.key_pem, 0o600), (cert, issued.cert_pem, 0o644)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    return cert, key


def reissue(pki: DevPki, template: IssuedCertificate, days: int) -> IssuedCertificate:
    """A new certificate and key from the same CA, for the same names and usage."""
    start = datetime.now(UTC) - timedelta(minutes=1)
    server = template is pki.control_plane
    return issue_certificate(
        common_name=template.certificate.subject.rfc4514_string().removeprefix("CN="),
        issuer=pki.leaf_issuer,
        not_before=start,
        not_after=start + timedelta(days=days),
        eku=[ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH],
        names=(SERVER_NAME, "127.0.0.1") if server else (),
    )


def not_after(issued: IssuedCertificate) -> int:
    return int(issued.certificate.not_valid_after_utc.timestamp())


class TrafficLoop:
    """GET through the proxy in a loop (one connection per request) until stopped."""

    def __init__(self, url: str, limit: int = 20_000) -> None:
        self.url = url
        self.limit = limit
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.done < self.limit:
            try:
                answer = http("GET", self.url, timeout=5)
                if answer.status != 200:
                    self.failures.append(f"HTTP {answer.status}: {answer.body[:200]!r}")
            except OSError as exc:
                self.failures.append(repr(exc))
            self.done += 1

    def __enter__(self) -> TrafficLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def presented_certificate(port: int, directory: Path, dp_name: str) -> x509.Certificate:
    """The certificate the CP presents to a new connection (a DP's TLS client)."""
    context = ssl.create_default_context(cafile=str(directory / "root.crt"))
    context.load_cert_chain(directory / f"{dp_name}.crt", directory / f"{dp_name}.key")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def row_of(cp: GatewayProcess, dp: GatewayProcess) -> dict[str, Any] | None:
    rows = http("GET", cp.url("admin", "/clustering/data-planes")).json()["data"]
    return next((r for r in rows if r["id"] == dp.node_id and r["connected"]), None)


def test_cp_and_dp_rotate_without_restart_and_traffic_never_fails(
    tmp_path: Path, processes: ProcessGroup, upstream: Upstream
) -> None:
    directory = tmp_path / "pki"
    directory.mkdir()
    pki = build_dev_pki(
        datetime.now(UTC) - timedelta(minutes=1),
        intermediates=1,
        dp_count=1,
        cp_names=(SERVER_NAME, "127.0.0.1"),
        days=365,
    )
    # Leaves that expire within cluster_cert_expiry_warning (30 days): both nodes warn.
    old_cp = reissue(pki, pki.control_plane, days=20)
    old_dp = reissue(pki, pki.data_planes[0], days=20)
    (directory / "root.crt").write_bytes(cert_pem(pki.root.certificate))
    write_pair(directory, "cp", old_cp)
    write_pair(directory, "dp", old_dp)
    pki_settings = {
        "cluster_mtls": "pki",
        "cluster_ca_cert": directory / "root.crt",
    }
    cp = processes.node(
        "cp",
        {
            "role": "control_plane",
            "admin_listen": "127.0.0.1:0",
            "status_listen": "127.0.0.1:0",
            "cluster_listen": "127.0.0.1:0",
            "cluster_telemetry_listen": "off",
            "cluster_cert": directory / "cp.crt",
            "cluster_cert_key": directory / "cp.key",
            **pki_settings,
        },
    )
    dp = processes.node(
        "dp",
        {
            "role": "data_plane",
            "database": "off",
            "proxy_listen": "127.0.0.1:0",
            "status_listen": "127.0.0.1:0",
            "cluster_control_plane": f"127.0.0.1:{cp.port('cluster')}",
            "cluster_server_name": SERVER_NAME,
            "cluster_cert": directory / "dp.crt",
            "cluster_cert_key": directory / "dp.key",
            "cluster_reconnect_backoff_min": 0.1,
            "cluster_reconnect_backoff_max": 0.5,
            **pki_settings,
        },
    )
    admin = cp.url("admin")
    assert http("POST", admin + "/services", form={"name": "s", "url": upstream.url}).status == 201
    assert http("POST", admin + "/services/s/routes", form={"paths[]": "/rot"}).status == 201
    poll(
        lambda: http("GET", dp.url("proxy", "/rot")).status == 200,
        timeout=DEADLINE,
        message="the DP serves /rot",
    )
    row = poll(lambda: row_of(cp, dp), timeout=DEADLINE, message="DP connected")
    assert row["cert_details"]["expiry_timestamp"] == not_after(old_dp)
    # Both nodes show their own certificate's expiry (Admin API and Status API) and warn.
    cp_status = http("GET", admin + "/status").json()
    assert cp_status["cluster_certificate"] == {
        "expiry_timestamp": not_after(old_cp),
        "expiring_soon": True,
    }
    dp_status = http("GET", dp.url("status", "/status")).json()
    assert dp_status["cluster_certificate"]["expiring_soon"] is True
    assert "the cluster certificate expires on" in cp.log_text()

    new_cp = reissue(pki, pki.control_plane, days=90)
    new_dp = reissue(pki, pki.data_planes[0], days=91)
    with TrafficLoop(dp.url("proxy", "/rot")) as traffic:
        # 1. The CP: new files, then SIGHUP.
        write_pair(directory, "cp", new_cp)
        assert cp.proc is not None
        cp.proc.send_signal(signal.SIGHUP)
        poll(
            lambda: (
                http("GET", admin + "/status").json()["cluster_certificate"]["expiry_timestamp"]
                == not_after(new_cp)
            ),
            timeout=DEADLINE,
            message="the CP uses its new certificate",
        )
        assert cp.alive
        status = http("GET", cp.url("status", "/status")).json()
        assert status["cluster_certificate"] == {
            "expiry_timestamp": not_after(new_cp),
            "expiring_soon": False,
        }
        # The reload call on the CP Admin API: nothing new now.
        again = http("POST", admin + "/clustering/certificates/reload").json()
        assert again == {
            "reloaded": False,
            "generation": 2,
            "error": None,
            "expiry_timestamp": not_after(new_cp),
        }
        # The existing DP session keeps its link; new connections get the new certificate.
        assert row_of(cp, dp) is not None
        presented = presented_certificate(cp.port("cluster"), directory, "dp")
        assert presented.public_bytes(Encoding.DER) == new_cp.certificate.public_bytes(Encoding.DER)

        # 2. The DP: new files, then the Status API call, reconnecting at once.
        write_pair(directory, "dp", new_dp)
        answer = http("POST", dp.url("status", "/status/certificates/reload?reconnect=true"))
        assert answer.status == 200, answer
        body = answer.json()
        assert body["error"] is None
        assert body["generation"] == 2
        assert body["expiry_timestamp"] == not_after(new_dp)
        assert body["reconnecting"] is True
        # After the reconnect the CP sees the new DP certificate.
        poll(
            lambda: (
                (r := row_of(cp, dp)) is not None
                and r["cert_details"]["expiry_timestamp"] == not_after(new_dp)
            ),
            timeout=DEADLINE,
            message="the CP row shows the DP's new certificate",
        )
        dp_status = http("GET", dp.url("status", "/status")).json()
        assert dp_status["cluster_certificate"] == {
            "expiry_timestamp": not_after(new_dp),
            "expiring_soon": False,
        }
        assert dp_status["control_plane"]["connected"] is True

        # 3. Bad material (a key that does not match) is refused; the old stays in use.
        other = reissue(pki, pki.control_plane, days=60)
        (directory / "cp.key").write_bytes(other.key_pem)
        refused = http("POST", admin + "/clustering/certificates/reload").json()
        assert refused["reloaded"] is False
        assert refused["generation"] == 2
        assert "cluster_cert_key" in refused["error"], refused
        assert refused["expiry_timestamp"] == not_after(new_cp)
        write_pair(directory, "cp", new_cp)  # back to the good pair
        # Some traffic after the reconnect as well.
        started = traffic.done
        poll(lambda: traffic.done >= started + 20, timeout=DEADLINE, message="more traffic")
    assert traffic.done >= 20, traffic.done
    assert traffic.failures == [], traffic.failures[:5]
    assert cp.alive
    assert dp.alive
