"""Single-certificate rules: validity to the second, expiry window, root CA shape."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

import certs

SECOND = timedelta(seconds=1)


@pytest.fixture(scope="module")
def leaf(pki1: certs.DevPki) -> certs.IssuedCertificate:
    return pki1.data_planes[0]


def test_validity_boundaries_to_the_second(leaf: certs.IssuedCertificate) -> None:
    not_before = leaf.certificate.not_valid_before_utc
    not_after = leaf.certificate.not_valid_after_utc
    certs.check_validity(leaf.certificate, not_before)
    certs.check_validity(leaf.certificate, not_after)
    # Fractions of a second do not count: X.509 times are whole seconds.
    certs.check_validity(leaf.certificate, not_after + timedelta(microseconds=999_999))
    with pytest.raises(certs.VerificationError, match="has expired"):
        certs.check_validity(leaf.certificate, not_after + SECOND)
    with pytest.raises(certs.VerificationError, match="not yet valid"):
        certs.check_validity(leaf.certificate, not_before - SECOND)


def test_naive_times_are_utc(leaf: certs.IssuedCertificate) -> None:
    naive = leaf.certificate.not_valid_after_utc.replace(tzinfo=None)
    certs.check_validity(leaf.certificate, naive)
    with pytest.raises(certs.VerificationError):
        certs.check_validity(leaf.certificate, naive + SECOND)


def test_expires_within(leaf: certs.IssuedCertificate, now: datetime) -> None:
    left = leaf.certificate.not_valid_after_utc - now
    assert not certs.expires_within(leaf.certificate, now, left)
    assert certs.expires_within(leaf.certificate, now, left + SECOND)
    assert certs.expires_within(leaf.certificate, now + left + SECOND, timedelta(0))


def test_root_accepted(pki1: certs.DevPki) -> None:
    certs.check_ca_root(pki1.root.certificate)


def test_intermediate_refused_with_clear_message(pki1: certs.DevPki) -> None:
    with pytest.raises(certs.CertificateError) as info:
        certs.check_ca_root(pki1.intermediates[0].certificate)
    message = str(info.value)
    assert message.startswith("cluster_ca_cert: ")
    assert "intermediate CA" in message
    assert "must be the root CA certificate" in message


def test_leaf_and_gen_cert_refused_as_root(pki1: certs.DevPki, now: datetime) -> None:
    with pytest.raises(certs.CertificateError, match="not a CA certificate"):
        certs.check_ca_root(pki1.control_plane.certificate)
    shared = certs.load_certificates(
        certs.generate_cluster_certificate(now)[0].decode(), setting="x"
    )[0]
    with pytest.raises(certs.CertificateError, match="basicConstraints"):
        certs.check_ca_root(shared)


def test_self_named_but_not_self_signed_refused(pki1: certs.DevPki, now: datetime) -> None:
    # A CA certificate whose issuer name equals its subject but which another key signed.
    impostor_issuer = certs.issue_certificate(
        common_name="Impostor", issuer=None, not_before=now, not_after=now + SECOND * 60, ca=True
    )
    forged = certs.issue_certificate(
        common_name="Impostor",
        issuer=impostor_issuer,
        not_before=now,
        not_after=now + SECOND * 60,
        ca=True,
    )
    assert forged.certificate.subject == forged.certificate.issuer
    with pytest.raises(certs.CertificateError, match="does not verify with its own key"):
        certs.check_ca_root(forged.certificate)
