"""Certificates, SNIs and CA certificates: PEM values are parsed with ``cryptography``."""

from __future__ import annotations

import datetime
import functools
import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import types

from gateway.schema import _entities_types as t
from gateway.schema._entity import EntitySchema
from gateway.schema._fields import String

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@functools.lru_cache(maxsize=256)
def _load_certs(pem: str) -> tuple[x509.Certificate, ...] | str:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        return f"invalid certificate: {exc}"
    return tuple(certs)


@functools.lru_cache(maxsize=256)
def _load_key(pem: str) -> types.PrivateKeyTypes | str:
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        return f"invalid key: {exc}"


def load_certificate(pem: str) -> x509.Certificate | None:
    """The leaf certificate of a PEM chain (None when unreadable)."""
    certs = _load_certs(pem)
    return None if isinstance(certs, str) else certs[0]


def check_certificate(pem: str) -> str | None:
    certs = _load_certs(pem)
    return certs if isinstance(certs, str) else None


def check_key(pem: str) -> str | None:
    key = _load_key(pem)
    return key if isinstance(key, str) else None


def _public_der(pem_cert: str, pem_key: str) -> tuple[bytes, bytes, str, str] | None:
    cert = load_certificate(pem_cert)
    key = _load_key(pem_key)
    if cert is None or isinstance(key, str):
        return None
    cert_pub = cert.public_key()
    return (
        cert_pub.public_bytes(*_SPKI),
        key.public_key().public_bytes(*_SPKI),
        type(cert_pub).__name__,
        type(key.public_key()).__name__,
    )


def _check_pairs(entity: dict[str, Any]) -> str | list[str] | None:
    messages: list[str] = []
    main = _public_der(entity["cert"], entity["key"])
    if main is not None and main[0] != main[1]:
        messages.append("certificate does not match key")
    if entity.get("cert_alt") and entity.get("key_alt"):
        alt = _public_der(entity["cert_alt"], entity["key_alt"])
        if alt is not None and alt[0] != alt[1]:
            messages.append("alternative certificate does not match key")
        if main is not None and alt is not None and _key_family(main[2]) == _key_family(alt[2]):
            messages.append(
                "certificate and alternative certificate need to have different type "
                "(e.g. RSA and ECDSA), the provided certificates were both of the same type"
            )
    return messages[0] if len(messages) == 1 else (messages or None)


def _key_family(class_name: str) -> str:
    return class_name.lstrip("_").replace("PublicKey", "").lower()


def _check_certificate_pairs(entity: dict[str, Any]) -> dict[str, Any] | str | None:
    result = _check_pairs(entity)
    if isinstance(result, list):
        return {"@entity": result}
    return result


CERTIFICATES = EntitySchema(
    "certificates",
    [
        ("cert", String(required=True, checks=[check_certificate], secret=True)),
        ("key", String(required=True, checks=[check_key], secret=True)),
        ("cert_alt", String(checks=[check_certificate], secret=True)),
        ("key_alt", String(checks=[check_key], secret=True)),
        ("tags", t.tags()),
    ],
    entity_checks=[t.mutually_required("cert_alt", "key_alt"), _check_certificate_pairs],
)

SNIS = EntitySchema(
    "snis",
    [
        ("name", t.sni(required=True, unique=True)),
        ("tags", t.tags()),
        ("certificate", t.foreign("certificates", required=True, on_delete="cascade")),
    ],
    endpoint_key="name",
)


def certificate_digest(pem: str) -> str | None:
    """Kong's ``cert_digest``: the SHA-256 of the DER certificate, lower-case hex."""
    cert = load_certificate(pem)
    if cert is None:
        return None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _compute_digest(data: dict[str, Any]) -> dict[str, Any]:
    cert = data.get("cert")
    if isinstance(cert, str):
        digest = certificate_digest(cert)
        if digest is not None:
            data["cert_digest"] = digest
    return data


def check_ca_certificate(pem: str) -> str | None:
    certs = _load_certs(pem)
    if isinstance(certs, str):
        return certs
    if len(certs) > 1:
        return "please submit only one certificate at a time"
    cert = certs[0]
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return (
            'certificate does not appear to be a CA because it is missing the "CA" basic constraint'
        )
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
        return 'certificate expired, "Not After" time is in the past'
    return None


CA_CERTIFICATES = EntitySchema(
    "ca_certificates",
    [
        ("cert", String(required=True, checks=[check_ca_certificate])),
        ("cert_digest", String(unique=True)),
        ("tags", t.tags()),
    ],
    preprocess=_compute_digest,
)
