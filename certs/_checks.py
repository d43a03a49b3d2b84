"""Single-certificate rules: validity window, expiry warning, root CA shape, fingerprints.

Times are arguments (timezone-aware ``datetime``; a naive value is taken as UTC) and are
compared to the second, as X.509 times have no fractions: a certificate is valid from
``not_before`` through ``not_after`` inclusive.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from certs._errors import CertificateError, VerificationError

__all__ = [
    "check_ca_root",
    "check_validity",
    "describe",
    "expires_within",
    "fingerprint_sha256",
    "utc_seconds",
]


def utc_seconds(now: datetime) -> datetime:
    """``now`` in UTC, truncated to the second (naive values are taken as UTC)."""
    aware = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return aware.replace(microsecond=0)


def describe(cert: x509.Certificate) -> str:
    """A short human name for log lines: the subject DN, or the serial if it is empty."""
    subject = cert.subject.rfc4514_string()
    return subject if subject else f"serial {cert.serial_number:x}"


def fingerprint_sha256(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER encoding (what Kong compares in shared mode)."""
    return cert.fingerprint(hashes.SHA256())


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_validity(cert: x509.Certificate, now: datetime) -> None:
    """Raise :class:`VerificationError` if ``cert`` is expired or not yet valid at ``now``."""
    at = utc_seconds(now)
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    if at < not_before:
        raise VerificationError(
            f"certificate {describe(cert)} is not yet valid: valid from {_stamp(not_before)}, "
            f"now is {_stamp(at)}"
        )
    if at > not_after:
        raise VerificationError(
            f"certificate {describe(cert)} has expired: valid until {_stamp(not_after)}, "
            f"now is {_stamp(at)}"
        )


def expires_within(cert: x509.Certificate, now: datetime, window: timedelta) -> bool:
    """True if ``cert`` is expired at ``now`` or will be within ``window``."""
    return cert.not_valid_after_utc < utc_seconds(now) + window


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _self_signed(cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def check_ca_root(cert: x509.Certificate, *, setting: str = "cluster_ca_cert") -> None:
    """Require a self-signed CA root (Kong: "must be the root CA certificate").

    basicConstraints must say CA, the subject must equal the issuer, and the signature must
    verify with the certificate's own key. An intermediate CA gets its own message.
    """
    name = describe(cert)
    if not _is_ca(cert):
        raise CertificateError(
            f"{setting}: {name} is not a CA certificate (basicConstraints CA:TRUE is missing)"
        )
    if cert.subject != cert.issuer:
        raise CertificateError(
            f"{setting}: {name} is an intermediate CA issued by {cert.issuer.rfc4514_string()}; "
            "it must be the root CA certificate (self-signed), not an intermediate"
        )
    if not _self_signed(cert):
        raise CertificateError(
            f"{setting}: {name} names itself as issuer but its signature does not verify "
            "with its own key; it must be a self-signed root CA certificate"
        )


def public_key_der(cert: x509.Certificate) -> bytes:
    """DER SubjectPublicKeyInfo of ``cert`` (for key comparisons)."""
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
