"""Loading certificate and key material from settings values.

A setting such as ``cluster_cert`` holds one of three things, as in Kong:

* a path to a PEM file (a certificate file may carry the leaf followed by its intermediates),
* the PEM text itself ("inline"),
* the PEM text encoded in base64 (handy in environment variables).

Inline PEM is recognised by its ``-----BEGIN`` marker; otherwise an existing file wins, then
a value that decodes as base64 to PEM; anything else is reported as a missing file. Every
error is a :class:`CertificateError` whose message starts with the setting name, so the
operator sees which key to fix.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from certs._errors import CertificateError

__all__ = [
    "PrivateKey",
    "check_key_matches",
    "load_certificates",
    "load_private_key",
    "read_setting_value",
]

#: The key types usable for a TLS certificate on the cluster link.
PrivateKey: TypeAlias = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


def read_setting_value(value: str, *, setting: str, what: str) -> tuple[bytes, str]:
    """Resolve a setting value to PEM bytes; return ``(pem, source)``.

    ``source`` describes where the bytes came from ("/path", "inline PEM value",
    "base64 value") for error messages. ``what`` is "certificate" or "key".
    """
    text = value.strip()
    if not text:
        raise CertificateError(f"{setting}: failed loading {what}: the value is empty")
    if "-----BEGIN" in text:
        return text.encode("utf-8", errors="replace") + b"\n", "inline PEM value"
    path = Path(value)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # name too long, NUL byte: not a usable path
        is_file = False
    if is_file:
        try:
            return path.read_bytes(), value
        except OSError as exc:
            raise CertificateError(
                f"{setting}: failed loading {what} from {value}: {exc.strerror or exc}"
            ) from exc
    decoded = _decode_base64(text)
    if decoded is not None:
        return decoded, "base64 value"
    try:
        data = path.read_bytes()  # gives the operator the OS's own reason
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CertificateError(f"{setting}: failed loading {what} from {value}: {reason}") from exc
    return data, value  # pragma: no cover - is_file() said no, but the read worked


def _decode_base64(text: str) -> bytes | None:
    compact = "".join(text.split())
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if b"-----BEGIN" in decoded else None


def load_certificates(value: str, *, setting: str) -> list[x509.Certificate]:
    """Load one or more PEM certificates (leaf first, then intermediates).

    Raises :class:`CertificateError` "<setting>: failed loading certificate from <source>:
    <reason>" when the value cannot be read or holds no certificate.
    """
    data, source = read_setting_value(value, setting=setting, what="certificate")
    prefix = f"{setting}: failed loading certificate from {source}"
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(data) if m.group(1) == b"CERTIFICATE"]
    if not blocks:
        raise CertificateError(f"{prefix}: no PEM certificate found")
    certificates: list[x509.Certificate] = []
    for index, block in enumerate(blocks):
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise CertificateError(
                f"{prefix}: certificate #{index + 1} is malformed: {exc}"
            ) from exc
    return certificates


def load_private_key(value: str, *, setting: str) -> PrivateKey:
    """Load an unencrypted PEM private key (PKCS#8, or traditional RSA/EC).

    Raises :class:`CertificateError` "<setting>: failed loading key from <source>: <reason>".
    """
    data, source = read_setting_value(value, setting=setting, what="key")
    prefix = f"{setting}: failed loading key from {source}"
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(data) if m.group(1).endswith(b"PRIVATE KEY")]
    if not blocks:
        raise CertificateError(f"{prefix}: no PEM private key found")
    if len(blocks) > 1:
        raise CertificateError(f"{prefix}: more than one private key found")
    try:
        key = serialization.load_pem_private_key(blocks[0], password=None)
    except TypeError as exc:  # encrypted key and no password
        raise CertificateError(f"{prefix}: encrypted keys are not supported ({exc})") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"{prefix}: malformed or unsupported key: {exc}") from exc
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise CertificateError(f"{prefix}: unsupported key type {type(key).__name__}")
    return key


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_key_matches(
    cert: x509.Certificate, key: PrivateKey, *, setting: str | None = None
) -> None:
    """Refuse a private key that does not belong to ``cert`` (compares the public keys)."""
    if _spki(cert.public_key()) != _spki(key.public_key()):
        prefix = f"{setting}: " if setting else ""
        raise CertificateError(
            f"{prefix}the private key does not match the certificate "
            f"{cert.subject.rfc4514_string() or '(empty subject)'}"
        )
