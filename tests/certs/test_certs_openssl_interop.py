"""Interop with certificates made by the ``openssl`` command line.

A root, one intermediate, a CP leaf (serverAuth + SANs) and DP leaves (clientAuth, wrong
EKU, no EKU) are made with ``openssl req`` / ``openssl x509 -extfile``. The pure policy must
accept and refuse them as documented, and a real mTLS handshake over TCP loopback between
two OpenSSLStreams must work with them. And the other way: ``openssl verify`` must accept
our development PKI.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from cryptography import x509
from openssl_pki import CA_EXT, issue, leaf_ext, make_root, openssl

import certs
from gateway.cluster import (
    ClusterPeer,
    ClusterPeerRejected,
    ClusterTLS,
    LikelyAuthenticationFailure,
    accept_cluster_peer,
    connect_cluster_peer,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def openssl_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("openssl-pki")
    make_root(d, "CN = Interop Root CA")
    issue(d, "int", "/CN=Interop Intermediate", "root", CA_EXT)
    issue(d, "cp", "/CN=cp.interop", "int",
          leaf_ext(extra="extendedKeyUsage = serverAuth\n"
                   "subjectAltName = DNS:cp.interop,IP:127.0.0.1\n"))  # fmt: skip
    issue(d, "dp", "/CN=any-dp-name", "int", leaf_ext(extra="extendedKeyUsage = clientAuth\n"))
    issue(d, "dpwrong", "/CN=dp-wrong", "int", leaf_ext(extra="extendedKeyUsage = serverAuth\n"))
    issue(d, "dpnoeku", "/CN=dp-no-eku", "int", leaf_ext())
    intermediate = (d / "int.crt").read_text()
    for leaf in ("cp", "dp", "dpwrong", "dpnoeku"):  # cluster_cert = leaf + intermediates
        (d / f"{leaf}-chain.crt").write_text((d / f"{leaf}.crt").read_text() + intermediate)
    return d


def _load(d: Path, name: str) -> list[x509.Certificate]:
    return certs.load_certificates(str(d / f"{name}-chain.crt"), setting="cluster_cert")


def test_policy_on_openssl_made_chain(openssl_pki: Path) -> None:
    now = datetime.now(UTC)
    root = certs.load_certificates(str(openssl_pki / "root.crt"), setting="cluster_ca_cert")[0]
    certs.check_ca_root(root)
    with pytest.raises(certs.CertificateError, match="intermediate"):
        certs.check_ca_root(
            certs.load_certificates(str(openssl_pki / "int.crt"), setting="cluster_ca_cert")[0]
        )
    policy = certs.PkiPolicy(root)
    cp = _load(openssl_pki, "cp")
    policy.verify_control_plane(cp[0], cp[1:], "cp.interop", now)
    policy.verify_control_plane(cp[0], cp[1:], "127.0.0.1", now)
    with pytest.raises(certs.VerificationError, match="server name"):
        policy.verify_control_plane(cp[0], cp[1:], "other.interop", now)
    dp = _load(openssl_pki, "dp")
    assert len(policy.verify_data_plane(dp[0], dp[1:], now).chain) == 3
    wrong = _load(openssl_pki, "dpwrong")
    with pytest.raises(certs.VerificationError, match="lacks EKU clientAuth"):
        policy.verify_data_plane(wrong[0], wrong[1:], now)
    no_eku = _load(openssl_pki, "dpnoeku")
    with pytest.raises(certs.VerificationError, match="no extendedKeyUsage"):
        policy.verify_data_plane(no_eku[0], no_eku[1:], now)


def _tls(d: Path, leaf: str) -> ClusterTLS:
    return ClusterTLS.load(
        mode="pki",
        cluster_cert=str(d / f"{leaf}-chain.crt"),
        cluster_cert_key=str(d / f"{leaf}.key"),
        cluster_ca_cert=str(d / "root.crt"),
        server_name="cp.interop",
    )


async def _tcp_link(cp_tls: ClusterTLS, dp_tls: ClusterTLS) -> tuple[object, object]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    outcome: dict[str, object] = {}

    async def cp_side() -> None:
        transport = await listener.accept()
        try:
            peer = await accept_cluster_peer(
                transport, cp_tls, peer=f"127.0.0.1:{port}", now=datetime.now(UTC)
            )
        except ClusterPeerRejected as exc:
            outcome["cp"] = exc
            return
        async with peer.stream:
            outcome["cp"] = peer
            outcome["cp_got"] = await peer.stream.receive_some()
            await peer.stream.send_all(b"welcome")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cp_side)
        transport = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            dp = await connect_cluster_peer(transport, dp_tls, now=datetime.now(UTC))
        except ClusterPeerRejected as exc:
            outcome["dp"] = exc
        else:
            async with dp.stream:
                outcome["dp"] = dp
                try:
                    await dp.stream.send_all(b"hello")
                    outcome["dp_got"] = await dp.stream.receive_some()
                except LikelyAuthenticationFailure as exc:
                    outcome["dp_got"] = exc
    await listener.aclose()
    return outcome["cp"], outcome


async def test_mtls_over_tcp_with_openssl_made_certs(openssl_pki: Path) -> None:
    cp, outcome = await _tcp_link(_tls(openssl_pki, "cp"), _tls(openssl_pki, "dp"))
    assert isinstance(cp, ClusterPeer)
    assert cp.certificate.subject.rfc4514_string() == "CN=any-dp-name"
    assert outcome["cp_got"] == b"hello"
    assert outcome["dp_got"] == b"welcome"
    dp = outcome["dp"]
    assert isinstance(dp, ClusterPeer)
    assert dp.stream.protocol_version == "TLSv1.3"


async def test_openssl_made_dp_without_eku_refused_over_tcp(openssl_pki: Path) -> None:
    cp, outcome = await _tcp_link(_tls(openssl_pki, "cp"), _tls(openssl_pki, "dpnoeku"))
    assert isinstance(cp, ClusterPeerRejected)
    assert "clientAuth" in cp.reason
    assert isinstance(outcome["dp_got"], LikelyAuthenticationFailure)


def test_openssl_verify_accepts_our_dev_pki(tmp_path: Path) -> None:
    pki = certs.build_dev_pki(datetime.now(UTC), intermediates=2, cp_names=["cp.test"])
    (tmp_path / "root.pem").write_bytes(certs.cert_pem(pki.root.certificate))
    (tmp_path / "chain.pem").write_bytes(certs.cert_pem(*pki.data_planes[0].chain))
    (tmp_path / "dp.pem").write_bytes(certs.cert_pem(pki.data_planes[0].certificate))
    (tmp_path / "cp.pem").write_bytes(certs.cert_pem(pki.control_plane.certificate))
    for leaf, purpose in (("dp.pem", "sslclient"), ("cp.pem", "sslserver")):
        openssl(tmp_path, "verify", "-CAfile", "root.pem", "-untrusted", "chain.pem",
                 "-purpose", purpose, leaf)  # fmt: skip
    with pytest.raises(subprocess.CalledProcessError):
        openssl(tmp_path, "verify", "-CAfile", "root.pem", "-untrusted", "chain.pem",
                 "-purpose", "sslserver", "dp.pem")  # fmt: skip
