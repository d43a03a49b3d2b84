"""Shared and PKI verification policies, each refusal with its reason."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

import certs

SECOND = timedelta(seconds=1)
CLIENT = [ExtendedKeyUsageOID.CLIENT_AUTH]
SERVER = [ExtendedKeyUsageOID.SERVER_AUTH]


def _leaf(
    issuer: certs.IssuedCertificate,
    now: datetime,
    *,
    eku: Sequence[x509.ObjectIdentifier] | None,
    names: Sequence[str] = (),
    cn: str | None = "leaf",
) -> certs.IssuedCertificate:
    return certs.issue_certificate(
        common_name=cn,
        issuer=issuer,
        not_before=now - timedelta(hours=1),
        not_after=now + timedelta(days=1),
        eku=eku,
        names=names,
    )


# -- shared mode ------------------------------------------------------------------------


def test_shared_mode_accepts_only_the_same_certificate(now: datetime) -> None:
    ours = certs.load_certificates(certs.generate_cluster_certificate(now)[0].decode(), setting="c")
    other = certs.load_certificates(
        certs.generate_cluster_certificate(now)[0].decode(), setting="c"
    )
    policy = certs.SharedModePolicy(ours[0])
    policy.verify(ours[0])
    with pytest.raises(certs.VerificationError, match="does not match the cluster certificate"):
        policy.verify(other[0])
    with pytest.raises(certs.VerificationError, match="no certificate"):
        policy.verify(None)


# -- PKI: chains ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_chains_up_to_three_intermediates_pass(now: datetime, depth: int) -> None:
    pki = certs.build_dev_pki(now, intermediates=depth, cp_names=["cp.example"])
    policy = certs.PkiPolicy(pki.root.certificate)
    dp = pki.data_planes[0]
    verified = policy.verify_data_plane(dp.certificate, dp.chain, now)
    assert len(verified.chain) == depth + 2
    assert verified.chain[-1] == pki.root.certificate
    assert verified.issuer == pki.leaf_issuer.certificate
    cp = pki.control_plane
    policy.verify_control_plane(cp.certificate, cp.chain, "cp.example", now)


def test_four_intermediates_refused_explicitly(now: datetime) -> None:
    pki = certs.build_dev_pki(now, intermediates=4, cp_names=["cp.example"])
    policy = certs.PkiPolicy(pki.root.certificate)
    dp = pki.data_planes[0]
    with pytest.raises(certs.VerificationError) as info:
        policy.verify_data_plane(dp.certificate, dp.chain, now)
    assert "too many intermediate CAs: 4, at most 3" in info.value.reason
    with pytest.raises(certs.VerificationError, match="too many intermediate CAs: 4"):
        policy.verify_control_plane(
            pki.control_plane.certificate, pki.control_plane.chain, "cp.example", now
        )
    # The limit is configurable.
    certs.PkiPolicy(pki.root.certificate, max_intermediates=4).verify_data_plane(
        dp.certificate, dp.chain, now
    )


def test_root_sent_along_does_not_count(pki1: certs.DevPki, now: datetime) -> None:
    policy = certs.PkiPolicy(pki1.root.certificate)
    dp = pki1.data_planes[0]
    policy.verify_data_plane(dp.certificate, [*dp.chain, pki1.root.certificate], now)


def test_other_ca_refused(pki1: certs.DevPki, now: datetime) -> None:
    other = certs.build_dev_pki(now, intermediates=1)
    policy = certs.PkiPolicy(pki1.root.certificate)
    dp = other.data_planes[0]
    with pytest.raises(certs.VerificationError, match="unknown CA"):
        policy.verify_data_plane(dp.certificate, dp.chain, now)


def test_missing_intermediate_refused(pki1: certs.DevPki, now: datetime) -> None:
    policy = certs.PkiPolicy(pki1.root.certificate)
    with pytest.raises(certs.VerificationError, match="does not chain to the trusted root"):
        policy.verify_data_plane(pki1.data_planes[0].certificate, [], now)


def test_expiry_boundaries(pki1: certs.DevPki) -> None:
    policy = certs.PkiPolicy(pki1.root.certificate)
    dp = pki1.data_planes[0]
    not_after = dp.certificate.not_valid_after_utc
    not_before = dp.certificate.not_valid_before_utc
    policy.verify_data_plane(dp.certificate, dp.chain, not_after)
    policy.verify_data_plane(dp.certificate, dp.chain, not_before)
    with pytest.raises(certs.VerificationError, match=r"data plane certificate .* has expired"):
        policy.verify_data_plane(dp.certificate, dp.chain, not_after + SECOND)
    with pytest.raises(certs.VerificationError, match="not yet valid"):
        policy.verify_data_plane(dp.certificate, dp.chain, not_before - SECOND)


def test_expired_intermediate_refused(pki1: certs.DevPki, now: datetime) -> None:
    old_ca = certs.issue_certificate(
        common_name="Old CA",
        issuer=pki1.root,
        not_before=now - timedelta(days=30),
        not_after=now - SECOND,
        ca=True,
    )
    leaf = _leaf(old_ca, now, eku=CLIENT)
    policy = certs.PkiPolicy(pki1.root.certificate)
    with pytest.raises(
        certs.VerificationError, match="intermediate certificate CN=Old CA has expired"
    ):
        policy.verify_data_plane(leaf.certificate, leaf.chain, now)


# -- PKI: extended key usage ------------------------------------------------------------


def test_dp_without_eku_refused(pki1: certs.DevPki, now: datetime) -> None:
    policy = certs.PkiPolicy(pki1.root.certificate)
    leaf = _leaf(pki1.leaf_issuer, now, eku=None)
    with pytest.raises(certs.VerificationError) as info:
        policy.verify_data_plane(leaf.certificate, leaf.chain, now)
    assert "no extendedKeyUsage" in info.value.reason
    assert "clientAuth" in info.value.reason


def test_dp_with_server_eku_only_refused(pki1: certs.DevPki, now: datetime) -> None:
    policy = certs.PkiPolicy(pki1.root.certificate)
    cp = pki1.control_plane
    with pytest.raises(
        certs.VerificationError, match=r"lacks EKU clientAuth \(it has: serverAuth\)"
    ):
        policy.verify_data_plane(cp.certificate, cp.chain, now)


def test_cp_without_server_eku_refused(pki1: certs.DevPki, now: datetime) -> None:
    policy = certs.PkiPolicy(pki1.root.certificate)
    no_eku = _leaf(pki1.leaf_issuer, now, eku=None, names=["cp.example"])
    with pytest.raises(certs.VerificationError, match=r"control plane .* serverAuth"):
        policy.verify_control_plane(no_eku.certificate, no_eku.chain, "cp.example", now)
    dp = pki1.data_planes[0]
    with pytest.raises(
        certs.VerificationError, match=r"lacks EKU serverAuth \(it has: clientAuth\)"
    ):
        policy.verify_control_plane(dp.certificate, dp.chain, "cp.example", now)


def test_both_usages_accepted_on_either_side(pki1: certs.DevPki, now: datetime) -> None:
    both = _leaf(pki1.leaf_issuer, now, eku=CLIENT + SERVER, names=["cp.example"])
    policy = certs.PkiPolicy(pki1.root.certificate)
    policy.verify_data_plane(both.certificate, both.chain, now)
    policy.verify_control_plane(both.certificate, both.chain, "cp.example", now)


def test_dp_common_name_is_not_checked(pki1: certs.DevPki, now: datetime) -> None:
    odd = _leaf(pki1.leaf_issuer, now, eku=CLIENT, cn="anything at all")
    certs.PkiPolicy(pki1.root.certificate).verify_data_plane(odd.certificate, odd.chain, now)


# -- PKI: names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "cn", "server_name", "ok"),
    [
        (["cp.example"], "x", "cp.example", True),
        (["cp.example"], "x", "CP.Example.", True),
        (["cp.example"], "cp.other", "cp.other", False),  # a SAN exists: the CN is ignored
        (["10.0.0.5"], "x", "10.0.0.5", True),
        (["10.0.0.5"], "x", "10.0.0.6", False),
        (["cp.example"], "x", "10.0.0.5", False),
        (["*.corp.example"], "x", "cp.corp.example", True),
        (["*.corp.example"], "x", "a.b.corp.example", False),
        (["*.example"], "x", "cp.example", False),  # no wildcard right under a single label
        ([], "cp.example", "cp.example", True),  # no SAN: CN fallback
        ([], "cp.example", "other.example", False),
    ],
)
def test_server_name_matching(
    pki1: certs.DevPki, now: datetime, names: list[str], cn: str, server_name: str, ok: bool
) -> None:
    leaf = _leaf(pki1.leaf_issuer, now, eku=SERVER, names=names, cn=cn)
    policy = certs.PkiPolicy(pki1.root.certificate)
    if ok:
        policy.verify_control_plane(leaf.certificate, leaf.chain, server_name, now)
    else:
        with pytest.raises(certs.VerificationError, match="does not match the server name"):
            policy.verify_control_plane(leaf.certificate, leaf.chain, server_name, now)


def test_no_certificate(pki1: certs.DevPki, now: datetime) -> None:
    with pytest.raises(certs.VerificationError, match="presented no certificate"):
        certs.PkiPolicy(pki1.root.certificate).verify_data_plane(None, [], now)


# -- PKI: CA certificate shape ----------------------------------------------------------


def _intermediate(
    pki: certs.DevPki, now: datetime, key_usage: x509.KeyUsage | None
) -> certs.IssuedCertificate:
    key = certs.new_private_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=Odd CA"))
        .issuer_name(pki.root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    cert = builder.sign(pki.root.key, hashes.SHA256())  # type: ignore[arg-type]
    return certs.IssuedCertificate(certificate=cert, key=key)


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def test_ca_without_key_usage_or_aki_is_accepted(pki1: certs.DevPki, now: datetime) -> None:
    # Like OpenSSL: private CAs made with `openssl req -x509` often carry neither.
    ca = _intermediate(pki1, now, None)
    leaf = _leaf(ca, now, eku=CLIENT)
    chain = certs.PkiPolicy(pki1.root.certificate).verify_data_plane(
        leaf.certificate, [ca.certificate], now
    )
    assert chain.issuer == ca.certificate


def test_ca_whose_key_usage_forbids_signing_is_refused(pki1: certs.DevPki, now: datetime) -> None:
    ca = _intermediate(pki1, now, _usage(cert_sign=False))
    leaf = _leaf(ca, now, eku=CLIENT)
    with pytest.raises(certs.VerificationError, match="unusable CA certificate"):
        certs.PkiPolicy(pki1.root.certificate).verify_data_plane(
            leaf.certificate, [ca.certificate], now
        )
