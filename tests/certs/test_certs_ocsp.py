"""OCSP request building and response checking (responses built in-process)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

import certs

MINUTE = timedelta(minutes=1)


def _response(
    pki: certs.DevPki,
    leaf: x509.Certificate,
    now: datetime,
    *,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    signer: certs.IssuedCertificate | None = None,
    include: list[x509.Certificate] | None = None,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
    encoding: ocsp.OCSPResponderEncoding = ocsp.OCSPResponderEncoding.HASH,
    nonce: bytes | None = None,
) -> bytes:
    issuer = pki.leaf_issuer
    signer = signer or issuer
    revoked = status == ocsp.OCSPCertStatus.REVOKED
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf,
            issuer=issuer.certificate,
            algorithm=algorithm or hashes.SHA1(),
            cert_status=status,
            this_update=this_update or now - MINUTE,
            next_update=next_update or now + 10 * MINUTE,
            revocation_time=now - 60 * MINUTE if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        .responder_id(encoding, signer.certificate)
    )
    if include:
        builder = builder.certificates(include)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    from cryptography.hazmat.primitives import serialization

    return builder.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dp(pki1: certs.DevPki) -> x509.Certificate:
    return pki1.data_planes[0].certificate


def _check(pki: certs.DevPki, dp: x509.Certificate, der: bytes, now: datetime) -> certs.OcspVerdict:
    return certs.check_ocsp_response(
        der, dp, pki.leaf_issuer.certificate, now, timedelta(minutes=5)
    )


def test_responder_url(pki1: certs.DevPki, dp: x509.Certificate) -> None:
    assert certs.ocsp_responder_url(dp) == "http://127.0.0.1:8888/ocsp"
    assert certs.ocsp_responder_url(pki1.control_plane.certificate) is None


def test_request_uses_sha1_cert_id(pki1: certs.DevPki, dp: x509.Certificate) -> None:
    der = certs.build_ocsp_request(dp, pki1.leaf_issuer.certificate, nonce=b"n" * 16)
    request = ocsp.load_der_ocsp_request(der)
    assert isinstance(request.hash_algorithm, hashes.SHA1)
    assert request.serial_number == dp.serial_number
    assert request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16


def test_good_signed_by_issuer(pki1: certs.DevPki, dp: x509.Certificate, now: datetime) -> None:
    der = _response(pki1, dp, now, encoding=ocsp.OCSPResponderEncoding.NAME)
    verdict = _check(pki1, dp, der, now)
    assert verdict.status is certs.OcspStatus.GOOD
    assert verdict.this_update == now - MINUTE
    assert verdict.next_update == now + 10 * MINUTE
    assert verdict.revocation_time is None


def test_revoked_by_delegated_responder(
    pki1: certs.DevPki, dp: x509.Certificate, now: datetime
) -> None:
    responder = pki1.ocsp_responder
    assert responder is not None
    der = _response(
        pki1,
        dp,
        now,
        status=ocsp.OCSPCertStatus.REVOKED,
        signer=responder,
        include=[responder.certificate],
    )
    verdict = _check(pki1, dp, der, now)
    assert verdict.status is certs.OcspStatus.REVOKED
    assert verdict.revocation_time == now - 60 * MINUTE
    assert verdict.revocation_reason == "key_compromise"


def test_unknown_with_sha256_cert_id(
    pki1: certs.DevPki, dp: x509.Certificate, now: datetime
) -> None:
    der = _response(pki1, dp, now, status=ocsp.OCSPCertStatus.UNKNOWN, algorithm=hashes.SHA256())
    assert _check(pki1, dp, der, now).status is certs.OcspStatus.UNKNOWN


def test_delegated_responder_without_ocsp_signing_refused(
    pki1: certs.DevPki, dp: x509.Certificate, now: datetime
) -> None:
    fake = certs.issue_certificate(
        common_name="not a responder",
        issuer=pki1.leaf_issuer,
        not_before=now - MINUTE,
        not_after=now + MINUTE * 60,
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    der = _response(pki1, dp, now, signer=fake, include=[fake.certificate])
    with pytest.raises(certs.VerificationError, match="lacks EKU OCSPSigning"):
        _check(pki1, dp, der, now)


def test_responder_from_another_ca_refused(
    pki1: certs.DevPki, dp: x509.Certificate, now: datetime
) -> None:
    other = certs.build_dev_pki(now, ocsp_url="http://x/")
    assert other.ocsp_responder is not None
    der = _response(
        pki1, dp, now, signer=other.ocsp_responder, include=[other.ocsp_responder.certificate]
    )
    with pytest.raises(certs.VerificationError, match="not issued by the CA"):
        _check(pki1, dp, der, now)


def test_signer_not_included_refused(
    pki1: certs.DevPki, dp: x509.Certificate, now: datetime
) -> None:
    assert pki1.ocsp_responder is not None
    der = _response(pki1, dp, now, signer=pki1.ocsp_responder)
    with pytest.raises(certs.VerificationError, match="signed neither by the issuing CA"):
        _check(pki1, dp, der, now)


def test_response_for_another_certificate_refused(
    pki1: certs.DevPki, dp: x509.Certificate, now: datetime
) -> None:
    other_leaf = pki1.data_planes[1].certificate
    der = _response(pki1, other_leaf, now)
    with pytest.raises(certs.VerificationError, match="CertID mismatch"):
        _check(pki1, dp, der, now)


def test_freshness_with_skew(pki1: certs.DevPki, dp: x509.Certificate, now: datetime) -> None:
    stale = _response(pki1, dp, now, this_update=now - 60 * MINUTE, next_update=now - 6 * MINUTE)
    with pytest.raises(certs.VerificationError, match="stale"):
        _check(pki1, dp, stale, now)
    barely = _response(pki1, dp, now, this_update=now - 60 * MINUTE, next_update=now - 5 * MINUTE)
    assert _check(pki1, dp, barely, now).status is certs.OcspStatus.GOOD
    future = _response(pki1, dp, now, this_update=now + 6 * MINUTE, next_update=now + 60 * MINUTE)
    with pytest.raises(certs.VerificationError, match="not yet valid"):
        _check(pki1, dp, future, now)


def test_tampered_signature_refused(
    pki1: certs.DevPki, dp: x509.Certificate, now: datetime
) -> None:
    der = bytearray(_response(pki1, dp, now))
    der[-3] ^= 0xFF  # inside the signature BIT STRING
    with pytest.raises(certs.VerificationError, match=r"signature|malformed"):
        _check(pki1, dp, bytes(der), now)


def test_unsuccessful_and_malformed_refused(
    pki1: certs.DevPki, dp: x509.Certificate, now: datetime
) -> None:
    from cryptography.hazmat.primitives import serialization

    try_later = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.TRY_LATER
    ).public_bytes(serialization.Encoding.DER)
    with pytest.raises(certs.VerificationError, match="try_later"):
        _check(pki1, dp, try_later, now)
    with pytest.raises(certs.VerificationError, match="malformed"):
        _check(pki1, dp, b"not der", now)


def test_nonce_mismatch_refused(pki1: certs.DevPki, dp: x509.Certificate, now: datetime) -> None:
    der = _response(pki1, dp, now, nonce=b"a" * 16)
    issuer = pki1.leaf_issuer.certificate
    certs.check_ocsp_response(der, dp, issuer, now, nonce=b"a" * 16)
    with pytest.raises(certs.VerificationError, match="nonce"):
        certs.check_ocsp_response(der, dp, issuer, now, nonce=b"b" * 16)
