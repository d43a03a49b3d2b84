"""Loading cluster_cert / cluster_cert_key values: path, inline PEM, base64 PEM."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import certs


def test_file_with_leaf_and_intermediates(tmp_path: Path, pki1: certs.DevPki) -> None:
    path = tmp_path / "dp.crt"
    path.write_bytes(pki1.data_planes[0].cert_pem)
    loaded = certs.load_certificates(str(path), setting="cluster_cert")
    assert loaded == [pki1.data_planes[0].certificate, pki1.intermediates[0].certificate]


def test_inline_and_base64_values(pki1: certs.DevPki) -> None:
    pem = pki1.control_plane.cert_pem
    inline = certs.load_certificates(pem.decode(), setting="cluster_cert")
    b64 = certs.load_certificates(base64.b64encode(pem).decode(), setting="cluster_cert")
    assert inline == b64 == [pki1.control_plane.certificate, pki1.intermediates[0].certificate]
    key_inline = certs.load_private_key(pki1.control_plane.key_pem.decode(), setting="k")
    key_b64 = certs.load_private_key(
        base64.b64encode(pki1.control_plane.key_pem).decode(), setting="k"
    )
    for key in (key_inline, key_b64):
        certs.check_key_matches(pki1.control_plane.certificate, key)


def test_key_from_file_and_traditional_format(tmp_path: Path, pki1: certs.DevPki) -> None:
    key = pki1.data_planes[0].key
    traditional = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path = tmp_path / "dp.key"
    path.write_bytes(traditional)
    loaded = certs.load_private_key(str(path), setting="cluster_cert_key")
    certs.check_key_matches(pki1.data_planes[0].certificate, loaded)


def test_missing_file_message_names_setting_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(certs.CertificateError) as info:
        certs.load_certificates(str(missing), setting="cluster_cert")
    assert str(info.value) == (
        f"cluster_cert: failed loading certificate from {missing}: No such file or directory"
    )
    with pytest.raises(certs.CertificateError) as info:
        certs.load_private_key(str(missing), setting="cluster_cert_key")
    assert str(info.value).startswith(f"cluster_cert_key: failed loading key from {missing}: ")


def test_file_without_certificate(tmp_path: Path, pki1: certs.DevPki) -> None:
    path = tmp_path / "key-only.pem"
    path.write_bytes(pki1.control_plane.key_pem)
    with pytest.raises(certs.CertificateError, match=r"^cluster_cert: .*no PEM certificate found"):
        certs.load_certificates(str(path), setting="cluster_cert")
    with pytest.raises(certs.CertificateError, match=r"^cluster_ca_cert: .*the value is empty"):
        certs.load_certificates("", setting="cluster_ca_cert")


def test_malformed_certificate_body() -> None:
    bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(certs.CertificateError, match=r"^cluster_cert: .*inline PEM.*malformed"):
        certs.load_certificates(bad, setting="cluster_cert")


def test_bad_keys(pki1: certs.DevPki) -> None:
    encrypted = pki1.root.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(certs.CertificateError, match=r"^cluster_cert_key: .*encrypted"):
        certs.load_private_key(encrypted.decode(), setting="cluster_cert_key")
    with pytest.raises(certs.CertificateError, match=r"^cluster_cert_key: .*no PEM private key"):
        certs.load_private_key(pki1.root.cert_pem.decode(), setting="cluster_cert_key")
    garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with pytest.raises(certs.CertificateError, match=r"^cluster_cert_key: .*malformed"):
        certs.load_private_key(garbage, setting="cluster_cert_key")


def test_mismatched_key(pki1: certs.DevPki) -> None:
    with pytest.raises(certs.CertificateError, match=r"^cluster_cert_key: the private key"):
        certs.check_key_matches(
            pki1.control_plane.certificate, pki1.data_planes[0].key, setting="cluster_cert_key"
        )


def test_key_never_appears_in_errors(pki1: certs.DevPki) -> None:
    key_text = pki1.control_plane.key_pem.decode()
    broken = key_text.replace("PRIVATE KEY-----\n", "PRIVATE KEY-----\n!", 1)
    with pytest.raises(certs.CertificateError) as info:
        certs.load_private_key(broken, setting="cluster_cert_key")
    body = "".join(key_text.splitlines()[1:-1])
    assert body[:20] not in str(info.value)
