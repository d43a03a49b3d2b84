"""The cluster link: contexts, handshake + policy, rejections and their log lines."""

from __future__ import annotations

import logging
from datetime import timedelta

import attrs
import pytest
import trio
import trio.testing
from cryptography import x509
from OpenSSL import SSL
from tls_helpers import NOW

import certs
from gateway.cluster import (
    SHARED_MODE_SNI,
    ClusterPeer,
    ClusterPeerRejected,
    ClusterTLS,
    LikelyAuthenticationFailure,
    accept_cluster_peer,
    connect_cluster_peer,
)


def _shared(pair: tuple[bytes, bytes]) -> ClusterTLS:
    return ClusterTLS.load(
        mode="shared", cluster_cert=pair[0].decode(), cluster_cert_key=pair[1].decode()
    )


def _pki(root: certs.IssuedCertificate, leaf: certs.IssuedCertificate) -> ClusterTLS:
    return ClusterTLS(
        mode="pki",
        cert_chain=(leaf.certificate, *leaf.chain),
        key=leaf.key,
        ca_root=root.certificate,
        server_name="cp.test",
    )


@pytest.fixture(scope="module")
def shared_pair() -> tuple[bytes, bytes]:
    return certs.generate_cluster_certificate(NOW)


async def _link(
    cp: ClusterTLS, dp: ClusterTLS, *, now: object = None, server_name: str | None = None
) -> tuple[ClusterPeer | BaseException, ClusterPeer | BaseException]:
    """Run both ends; return what each side got (a peer or the exception it raised)."""
    at = NOW if now is None else now
    cp_t, dp_t = trio.testing.memory_stream_pair()
    results: dict[str, ClusterPeer | BaseException] = {}

    async def cp_side() -> None:
        try:
            results["cp"] = await accept_cluster_peer(cp_t, cp, peer="127.0.0.1:5555", now=at)  # type: ignore[arg-type]
        except ClusterPeerRejected as exc:
            results["cp"] = exc

    async def dp_side() -> None:
        try:
            results["dp"] = await connect_cluster_peer(dp_t, dp, now=at, server_name=server_name)  # type: ignore[arg-type]
        except ClusterPeerRejected as exc:
            results["dp"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cp_side)
        nursery.start_soon(dp_side)
    return results["cp"], results["dp"]


async def _exchange(cp: ClusterPeer, dp: ClusterPeer) -> None:
    await dp.stream.send_all(b"hello")
    assert await cp.stream.receive_some() == b"hello"
    await cp.stream.aclose()
    assert await dp.stream.receive_some() == b""
    await dp.stream.aclose()


async def test_shared_mode_link(shared_pair: tuple[bytes, bytes]) -> None:
    tls = _shared(shared_pair)
    cp, dp = await _link(tls, _shared(shared_pair))
    assert isinstance(cp, ClusterPeer)
    assert isinstance(dp, ClusterPeer)
    assert cp.certificate == tls.leaf == dp.certificate
    assert cp.expires_at == tls.leaf.not_valid_after_utc
    assert cp.stream.server_name == SHARED_MODE_SNI
    await _exchange(cp, dp)


async def test_shared_mode_other_certificate_is_rejected(
    shared_pair: tuple[bytes, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.cluster")
    other = _shared(certs.generate_cluster_certificate(NOW))
    cp, dp = await _link(_shared(shared_pair), other)
    # The DP verifies first and refuses a CP certificate that is not its own.
    assert isinstance(dp, ClusterPeerRejected)
    assert "not trusted" in dp.reason or "not the shared cluster certificate" in dp.reason
    assert isinstance(cp, ClusterPeerRejected)
    assert any(
        "rejected" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
    )


async def test_pki_link_with_intermediate(pki: certs.DevPki) -> None:
    cp_tls = _pki(pki.root, pki.control_plane)
    cp, dp = await _link(cp_tls, _pki(pki.root, pki.data_planes[0]))
    assert isinstance(cp, ClusterPeer)
    assert isinstance(dp, ClusterPeer)
    assert cp.certificate == pki.data_planes[0].certificate
    assert cp.issuer == pki.intermediates[0].certificate
    assert cp.chain[-1] == pki.root.certificate
    assert dp.certificate == pki.control_plane.certificate
    await _exchange(cp, dp)


async def test_pki_dp_without_eku_refused_and_dp_sees_it_on_first_read(
    pki: certs.DevPki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.cluster")
    no_eku = certs.issue_certificate(
        common_name="dp-no-eku",
        issuer=pki.leaf_issuer,
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=1),
        eku=None,
    )
    cp, dp = await _link(_pki(pki.root, pki.control_plane), _pki(pki.root, no_eku))
    assert isinstance(cp, ClusterPeerRejected)
    assert "lacks extended key usage clientAuth" in cp.reason
    assert cp.peer == "127.0.0.1:5555"
    # TLS 1.3: the DP's handshake succeeded; the refusal shows up on its first read.
    assert isinstance(dp, ClusterPeer)
    with pytest.raises(LikelyAuthenticationFailure, match="refused this data plane"):
        await dp.stream.receive_some()
    messages = [r.getMessage() for r in caplog.records]
    assert any("127.0.0.1:5555" in m and "clientAuth" in m for m in messages)
    assert any("most likely refused" in m for m in messages)


def _deep_leaf(pki: certs.DevPki, levels: int) -> certs.IssuedCertificate:
    parent = pki.root
    for level in range(levels):
        parent = certs.issue_certificate(
            common_name=f"Deep CA {level + 1}",
            issuer=parent,
            not_before=NOW - timedelta(days=1),
            not_after=NOW + timedelta(days=30),
            ca=True,
        )
    return certs.issue_certificate(
        common_name="dp-deep",
        issuer=parent,
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=1),
        eku=[x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH],
    )


async def test_pki_four_intermediates_refused_by_cp(pki: certs.DevPki) -> None:
    cp, dp = await _link(_pki(pki.root, pki.control_plane), _pki(pki.root, _deep_leaf(pki, 4)))
    assert isinstance(cp, ClusterPeerRejected)
    assert "chain too long" in cp.reason
    assert isinstance(dp, ClusterPeer)
    with pytest.raises(LikelyAuthenticationFailure):
        await dp.stream.receive_some()


async def test_pki_three_intermediates_accepted() -> None:
    deep = certs.build_dev_pki(NOW, intermediates=3, cp_names=["cp.test"])
    cp, dp = await _link(_pki(deep.root, deep.control_plane), _pki(deep.root, deep.data_planes[0]))
    assert isinstance(cp, ClusterPeer)
    assert isinstance(dp, ClusterPeer)
    assert len(cp.chain) == 5
    await _exchange(cp, dp)


async def test_pki_server_name_mismatch_refused_by_dp(pki: certs.DevPki) -> None:
    cp, dp = await _link(
        _pki(pki.root, pki.control_plane),
        _pki(pki.root, pki.data_planes[0]),
        server_name="other.test",
    )
    assert isinstance(dp, ClusterPeerRejected)
    assert "does not match the server name 'other.test'" in dp.reason
    assert isinstance(cp, ClusterPeer)  # the CP was happy; the DP hung up
    with pytest.raises(trio.BrokenResourceError):
        await cp.stream.receive_some()
    await cp.stream.aclose()


async def test_policy_runs_after_openssl_with_callers_time(pki: certs.DevPki) -> None:
    # OpenSSL checks against the real clock; the policy uses the time we pass in.
    later = NOW + timedelta(days=400)
    cp, dp = await _link(
        _pki(pki.root, pki.control_plane), _pki(pki.root, pki.data_planes[0]), now=later
    )
    assert isinstance(dp, ClusterPeerRejected)
    assert "has expired" in dp.reason
    assert isinstance(cp, (ClusterPeerRejected, ClusterPeer))


async def test_pki_other_ca_refused(pki: certs.DevPki) -> None:
    other = certs.build_dev_pki(NOW, cp_names=["cp.test"])
    cp, _dp = await _link(_pki(pki.root, pki.control_plane), _pki(pki.root, other.data_planes[0]))
    assert isinstance(cp, ClusterPeerRejected)
    assert "unknown CA" in cp.reason


def test_contexts_are_built_once_and_rebuilt_on_change(pki: certs.DevPki) -> None:
    tls = _pki(pki.root, pki.control_plane)
    assert tls.server_context() is tls.server_context()
    assert tls.client_context() is tls.client_context()
    rotated = attrs.evolve(tls, cert_chain=(pki.control_plane.certificate,))
    assert rotated.server_context() is not tls.server_context()
    ctx = tls.server_context()
    assert ctx.get_session_cache_mode() == SSL.SESS_CACHE_OFF
    assert ctx.get_verify_mode() == SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


def test_verify_callback_never_overrides_openssl(pki: certs.DevPki) -> None:
    from OpenSSL import crypto

    tls = _pki(pki.root, pki.control_plane)
    callback = tls._verify_callback(x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
    conn = SSL.Connection(tls.server_context(), None)
    good = crypto.X509.from_cryptography(pki.data_planes[0].certificate)
    assert callback(conn, good, 0, 0, 1) is True
    for errno in (10, 20, 22, 26):
        assert callback(conn, good, errno, 0, 0) is False


def test_cluster_tls_refuses_bad_material(pki: certs.DevPki) -> None:
    with pytest.raises(certs.CertificateError, match="does not match"):
        ClusterTLS(
            mode="pki",
            cert_chain=(pki.control_plane.certificate,),
            key=pki.root.key,
            ca_root=pki.root.certificate,
        )
    with pytest.raises(certs.CertificateError, match="intermediate"):
        _pki(pki.intermediates[0], pki.control_plane)
    with pytest.raises(certs.CertificateError, match="cluster_ca_cert must be specified"):
        ClusterTLS(
            mode="pki", cert_chain=(pki.control_plane.certificate,), key=pki.control_plane.key
        )
