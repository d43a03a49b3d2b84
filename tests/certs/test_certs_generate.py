"""gen_cert output (Kong's shape) and the development PKI."""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

import certs


def test_gen_cert_matches_kong(now: datetime) -> None:
    cert_pem, key_pem = certs.generate_cluster_certificate(now)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    [cert] = certs.load_certificates(cert_pem.decode(), setting="cluster_cert")
    key = certs.load_private_key(key_pem.decode(), setting="cluster_cert_key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp384r1"
    certs.check_key_matches(cert, key)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "kong_clustering"
    assert cert.subject == cert.issuer
    assert len(cert.extensions) == 0
    assert cert.not_valid_before_utc == now
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(seconds=3 * 365 * 86400)


def test_gen_cert_days(now: datetime) -> None:
    cert_pem, _ = certs.generate_cluster_certificate(now, days=2)
    [cert] = certs.load_certificates(cert_pem.decode(), setting="c")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(seconds=172800)


def test_dev_pki_shape(pki1: certs.DevPki) -> None:
    root = pki1.root.certificate
    certs.check_ca_root(root)
    inter = pki1.intermediates[0].certificate
    inter.verify_directly_issued_by(root)
    cp = pki1.control_plane.certificate
    cp.verify_directly_issued_by(inter)
    eku = cp.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cp.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cp.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    for dp in pki1.data_planes:
        usages = dp.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        aia = dp.certificate.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess
        ).value
        assert aia[0].access_method == AuthorityInformationAccessOID.OCSP
        # Leaf PEMs carry their intermediates; the root is not sent.
        assert certs.load_certificates(dp.cert_pem.decode(), setting="c") == [dp.certificate, inter]
    assert pki1.ocsp_responder is not None
    responder_eku = pki1.ocsp_responder.certificate.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    ).value
    assert list(responder_eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]


def test_issue_certificate_without_eku_and_with_custom_validity(
    pki1: certs.DevPki, now: datetime
) -> None:
    issued = certs.issue_certificate(
        common_name=None,
        issuer=pki1.leaf_issuer,
        not_before=now - timedelta(days=10),
        not_after=now - timedelta(days=1),
        eku=None,
        key_type="rsa-2048",
    )
    cert = issued.certificate
    assert len(cert.subject) == 0
    assert cert.not_valid_after_utc == now - timedelta(days=1)
    try:
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        pass
    else:  # pragma: no cover
        raise AssertionError("EKU should be absent")
    assert issued.chain == (pki1.intermediates[0].certificate,)
