"""Certificate generation: ``hybrid gen_cert`` and a development PKI.

Everything here is pure: the caller passes the time and gets PEM bytes (or objects) back;
writing files and choosing their modes is the CLI's job. ``issue_certificate`` is the one
low-level builder; the other functions are recipes on top of it, and tests use it directly
to make odd certificates (no EKU, wrong EKU, expired, CN only, ...).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from certs._checks import utc_seconds
from certs._load import PrivateKey

__all__ = [
    "CLUSTER_COMMON_NAME",
    "DEFAULT_CLUSTER_CERT_DAYS",
    "DevPki",
    "IssuedCertificate",
    "KeyType",
    "build_dev_pki",
    "cert_pem",
    "generate_cluster_certificate",
    "issue_certificate",
    "key_pem",
    "new_private_key",
    "parse_names",
]

KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "ed25519"]

#: Kong's ``hybrid gen_cert`` default validity: 3 x 365 days.
DEFAULT_CLUSTER_CERT_DAYS = 1095
CLUSTER_COMMON_NAME = "kong_clustering"


def new_private_key(key_type: KeyType = "ec-p256") -> PrivateKey:
    """A fresh private key of the given type."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}")


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (``BEGIN PRIVATE KEY``), as Kong's gen_cert writes."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def parse_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries for host names: IP literals become iPAddress, the rest dNSName."""
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def _signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


@attrs.frozen(kw_only=True)
class IssuedCertificate:
    """A certificate, its key, and the intermediates above it (nearest issuer first)."""

    certificate: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        """The leaf followed by its intermediates: what ``cluster_cert`` should hold."""
        return cert_pem(self.certificate, *self.chain)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)


def issue_certificate(
    *,
    common_name: str | None,
    issuer: IssuedCertificate | None,
    not_before: datetime,
    not_after: datetime,
    key: PrivateKey | None = None,
    key_type: KeyType = "ec-p256",
    ca: bool = False,
    path_length: int | None = None,
    eku: Sequence[x509.ObjectIdentifier] | None = None,
    names: Sequence[str] = (),
    ocsp_url: str | None = None,
    serial_number: int | None = None,
    extensions: bool = True,
) -> IssuedCertificate:
    """Build and sign one certificate.

    ``issuer=None`` makes it self-signed. ``eku=None`` omits the extendedKeyUsage extension
    (``eku=[]`` is not allowed by X.509). ``names`` become subjectAltName entries.
    ``extensions=False`` produces a bare certificate (as Kong's gen_cert does) and ignores
    every extension argument. The returned chain is the issuer's chain with the issuer
    prepended, unless the issuer is a self-signed root (roots are not sent).
    """
    own_key = key if key is not None else new_private_key(key_type)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    signer_key = issuer.key if issuer is not None else own_key
    issuer_name = issuer.certificate.subject if issuer is not None else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(own_key.public_key())
        .serial_number(serial_number if serial_number is not None else x509.random_serial_number())
        .not_valid_before(utc_seconds(not_before))
        .not_valid_after(utc_seconds(not_after))
    )
    if extensions:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(own_key, rsa.RSAPrivateKey) and not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(own_key.public_key()), critical=False
        )
        authority_public_key = signer_key.public_key()
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_public_key),
            critical=False,
        )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(parse_names(names)), critical=False
            )
        if ocsp_url is not None:
            builder = builder.add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier(ocsp_url),
                        )
                    ]
                ),
                critical=False,
            )
    certificate = builder.sign(signer_key, _signature_hash(signer_key))
    chain: tuple[x509.Certificate, ...] = ()
    if issuer is not None and issuer.certificate.subject != issuer.certificate.issuer:
        chain = (issuer.certificate, *issuer.chain)
    return IssuedCertificate(certificate=certificate, key=own_key, chain=chain)


def generate_cluster_certificate(
    now: datetime, days: int = DEFAULT_CLUSTER_CERT_DAYS, common_name: str = CLUSTER_COMMON_NAME
) -> tuple[bytes, bytes]:
    """The shared-mode pair, as Kong's ``hybrid gen_cert``: ``(cert_pem, key_pem)``.

    EC P-384 key (PKCS#8 PEM); self-signed certificate with subject = issuer =
    ``CN=kong_clustering``, valid from ``now`` for ``days`` x 86400 s, and no extensions.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    start = utc_seconds(now)
    issued = issue_certificate(
        common_name=common_name,
        issuer=None,
        not_before=start,
        not_after=start + timedelta(days=days),
        key_type="ec-p384",
        extensions=False,
    )
    return issued.cert_pem, issued.key_pem


@attrs.frozen(kw_only=True)
class DevPki:
    """A development PKI: root, intermediates (root-most first), CP and DP leaves.

    ``ocsp_responder`` is a delegated OCSP signer (EKU OCSPSigning) issued by the CA that
    issued the DP certificates; it exists when an OCSP URL was given.
    """

    root: IssuedCertificate
    intermediates: tuple[IssuedCertificate, ...]
    control_plane: IssuedCertificate
    data_planes: tuple[IssuedCertificate, ...]
    ocsp_responder: IssuedCertificate | None = None

    @property
    def leaf_issuer(self) -> IssuedCertificate:
        """The CA that signed the leaves (the last intermediate, or the root)."""
        return self.intermediates[-1] if self.intermediates else self.root


def build_dev_pki(
    now: datetime,
    *,
    intermediates: int = 0,
    cp_names: Sequence[str] = ("localhost", "127.0.0.1"),
    dp_count: int = 1,
    ocsp_url: str | None = None,
    days: int = 365,
    key_type: KeyType = "ec-p256",
    cp_eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.SERVER_AUTH,),
    dp_eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    root_name: str = "Gateway Development Root CA",
) -> DevPki:
    """Build a root CA, ``intermediates`` intermediate CAs and CP/DP leaf certificates.

    The CP certificate carries EKU serverAuth and ``cp_names`` as SANs (its CN is the first
    name); DP certificates (``dp-1`` ...) carry EKU clientAuth and, if ``ocsp_url`` is set,
    an AIA OCSP entry. Leaf PEMs carry their intermediates. Not for production use.
    """
    if not 0 <= intermediates <= 8:
        raise ValueError("intermediates must be between 0 and 8")
    if dp_count < 0:
        raise ValueError("dp_count must not be negative")
    start = utc_seconds(now)
    # CAs outlive the leaves by a day on each side so a leaf is never valid past its issuer.
    ca_from, ca_until = start - timedelta(days=1), start + timedelta(days=days + 1)
    until = start + timedelta(days=days)
    root = issue_certificate(
        common_name=root_name,
        issuer=None,
        not_before=ca_from,
        not_after=ca_until,
        key_type=key_type,
        ca=True,
    )
    cas: list[IssuedCertificate] = []
    parent = root
    for level in range(1, intermediates + 1):
        parent = issue_certificate(
            common_name=f"Gateway Development Intermediate CA {level}",
            issuer=parent,
            not_before=ca_from,
            not_after=ca_until,
            key_type=key_type,
            ca=True,
        )
        cas.append(parent)
    control_plane = issue_certificate(
        common_name=cp_names[0] if cp_names else "control-plane",
        issuer=parent,
        not_before=start,
        not_after=until,
        key_type=key_type,
        eku=cp_eku,
        names=cp_names,
    )
    data_planes = tuple(
        issue_certificate(
            common_name=f"dp-{index}",
            issuer=parent,
            not_before=start,
            not_after=until,
            key_type=key_type,
            eku=dp_eku,
            ocsp_url=ocsp_url,
        )
        for index in range(1, dp_count + 1)
    )
    responder = None
    if ocsp_url is not None:
        responder = issue_certificate(
            common_name="Gateway Development OCSP Responder",
            issuer=parent,
            not_before=start,
            not_after=until,
            key_type=key_type,
            eku=(ExtendedKeyUsageOID.OCSP_SIGNING,),
        )
    return DevPki(
        root=root,
        intermediates=tuple(cas),
        control_plane=control_plane,
        data_planes=data_planes,
        ocsp_responder=responder,
    )
