"""OCSP (RFC 6960) request building and response checking, without I/O.

Theory of operation
-------------------
The control plane asks the DP certificate's responder (AIA OCSP URL) whether the leaf is
revoked. The transport (HTTP POST, timeout, size cap) is the shell's job; here we build the
DER request and judge the DER response.

A response is trusted only if every check passes, in this order:

1. ``responseStatus`` is successful (other statuses are unsigned and mean nothing);
2. the signer is the issuing CA itself, or a delegated responder certificate shipped in the
   response that the issuing CA signed directly, that carries EKU OCSPSigning and is valid
   at ``now`` (RFC 6960 4.2.2.2); the responder ID (name or key hash) must name that signer;
3. the signature over ``tbsResponseData`` verifies with the signer's key;
4. a ``SingleResponse`` exists whose CertID (issuer name hash, issuer key hash, serial,
   computed with the hash algorithm the response used) is the leaf's;
5. ``thisUpdate <= now + skew`` and, if present, ``nextUpdate >= now - skew``.

Only then is the status (good / revoked / unknown) reported. Any failure raises
:class:`VerificationError`; the function never returns "good" for a response that failed a
check. Caching and soft/hard-fail decisions are the caller's.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from certs._checks import describe, utc_seconds
from certs._errors import VerificationError

__all__ = [
    "OcspStatus",
    "OcspVerdict",
    "build_ocsp_request",
    "check_ocsp_response",
    "ocsp_responder_url",
]


class OcspStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@attrs.frozen(kw_only=True)
class OcspVerdict:
    """A checked OCSP answer for one certificate."""

    status: OcspStatus
    this_update: datetime
    next_update: datetime | None
    revocation_time: datetime | None = None
    revocation_reason: str | None = None


def ocsp_responder_url(leaf: x509.Certificate) -> str | None:
    """The first OCSP responder URL in the leaf's Authority Information Access, if any."""
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for description in aia:
        location = description.access_location
        if description.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            location, x509.UniformResourceIdentifier
        ):
            return location.value
    return None


def build_ocsp_request(
    leaf: x509.Certificate, issuer: x509.Certificate, *, nonce: bytes | None = None
) -> bytes:
    """A DER OCSP request for ``leaf`` with a SHA-1 CertID (what ``openssl ocsp`` sends)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _verify_signature(
    public_key: CertificatePublicKeyTypes,
    signature: bytes,
    data: bytes,
    algorithm: hashes.HashAlgorithm | None,
) -> None:
    if isinstance(public_key, rsa.RSAPublicKey):
        if algorithm is None:
            raise VerificationError("OCSP response has no signature hash algorithm")
        public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if algorithm is None:
            raise VerificationError("OCSP response has no signature hash algorithm")
        public_key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        public_key.verify(signature, data)
    else:
        raise VerificationError(
            f"OCSP response signed with an unsupported key type {type(public_key).__name__}"
        )


def _key_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """Hash of the subjectPublicKey BIT STRING contents (RFC 6960 CertID / ResponderID)."""
    spki = x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    if isinstance(algorithm, hashes.SHA1):
        return spki.digest
    # from_public_key always uses SHA-1; recompute for other algorithms.
    raw = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bits = _subject_public_key_bits(raw)
    digest = hashes.Hash(algorithm)
    digest.update(bits)
    return digest.finalize()


def _subject_public_key_bits(spki_der: bytes) -> bytes:
    """The BIT STRING contents (without the unused-bits byte) of a DER SubjectPublicKeyInfo."""

    def read(buf: bytes, pos: int) -> tuple[int, int, int]:
        tag = buf[pos]
        length = buf[pos + 1]
        pos += 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(buf[pos : pos + count], "big")
            pos += count
        return tag, pos, length

    _, pos, _ = read(spki_der, 0)  # outer SEQUENCE
    _, alg_pos, alg_len = read(spki_der, pos)  # AlgorithmIdentifier
    tag, bits_pos, bits_len = read(spki_der, alg_pos + alg_len)
    if tag != 0x03:
        raise VerificationError("malformed public key in certificate")
    return spki_der[bits_pos + 1 : bits_pos + bits_len]


def _name_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    digest = hashes.Hash(algorithm)
    digest.update(cert.subject.public_bytes())
    return digest.finalize()


def _responder_matches(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    if response.responder_key_hash is not None:
        return response.responder_key_hash == _key_hash(cert, hashes.SHA1())
    return False


def _find_signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime
) -> x509.Certificate:
    if _responder_matches(response, issuer):
        return issuer
    refusals: list[str] = []
    for candidate in response.certificates:
        if not _responder_matches(response, candidate):
            continue
        try:
            candidate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            refusals.append(f"delegated responder {describe(candidate)} is not issued by the CA")
            continue
        try:
            usages = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = None
        if usages is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
            refusals.append(f"delegated responder {describe(candidate)} lacks EKU OCSPSigning")
            continue
        if not candidate.not_valid_before_utc <= at <= candidate.not_valid_after_utc:
            refusals.append(f"delegated responder {describe(candidate)} is not valid now")
            continue
        return candidate
    if refusals:
        raise VerificationError("OCSP response signer refused: " + "; ".join(refusals))
    raise VerificationError(
        "OCSP response is signed neither by the issuing CA nor by a delegated responder "
        "certificate included in the response"
    )


def check_ocsp_response(
    der: bytes,
    leaf: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime,
    skew: timedelta = timedelta(minutes=5),
    *,
    nonce: bytes | None = None,
) -> OcspVerdict:
    """Check a DER OCSP response about ``leaf`` (issued by ``issuer``) and return its verdict.

    If ``nonce`` is given and the responder echoed a nonce, the two must be equal (many
    responders do not echo one, which is accepted). Raises :class:`VerificationError`.
    """
    at = utc_seconds(now)
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise VerificationError(f"malformed OCSP response: {exc}") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise VerificationError(
            f"OCSP responder answered {response.response_status.name.lower()}, not successful"
        )
    try:
        signer = _find_signer(response, issuer, at)
        _verify_signature(
            signer.public_key(),
            response.signature,
            response.tbs_response_bytes,
            response.signature_hash_algorithm,
        )
    except InvalidSignature:
        raise VerificationError("OCSP response signature does not verify") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise VerificationError(f"OCSP response signature cannot be checked: {exc}") from None
    if nonce is not None:
        for extension in response.extensions:
            if isinstance(extension.value, x509.OCSPNonce) and extension.value.nonce != nonce:
                raise VerificationError("OCSP response nonce does not match the request")
    for single in response.responses:
        algorithm = single.hash_algorithm
        if (
            single.serial_number == leaf.serial_number
            and single.issuer_key_hash == _key_hash(issuer, algorithm)
            and single.issuer_name_hash == _name_hash(issuer, algorithm)
        ):
            return _verdict(single, at, skew)
    raise VerificationError(
        f"OCSP response does not cover certificate {describe(leaf)} "
        f"(serial {leaf.serial_number:x}): CertID mismatch"
    )


def _verdict(single: ocsp.OCSPSingleResponse, at: datetime, skew: timedelta) -> OcspVerdict:
    this_update = single.this_update_utc
    next_update = single.next_update_utc
    if this_update > at + skew:
        raise VerificationError(
            f"OCSP response is not yet valid: thisUpdate {this_update.isoformat()} is in the future"
        )
    if next_update is not None and next_update < at - skew:
        raise VerificationError(
            f"OCSP response is stale: nextUpdate {next_update.isoformat()} has passed"
        )
    status = {
        ocsp.OCSPCertStatus.GOOD: OcspStatus.GOOD,
        ocsp.OCSPCertStatus.REVOKED: OcspStatus.REVOKED,
        ocsp.OCSPCertStatus.UNKNOWN: OcspStatus.UNKNOWN,
    }[single.certificate_status]
    reason = single.revocation_reason
    return OcspVerdict(
        status=status,
        this_update=this_update,
        next_update=next_update,
        revocation_time=single.revocation_time_utc,
        revocation_reason=reason.name if reason is not None else None,
    )
