"""Who may join the cluster: the shared-mode and PKI-mode verification policies.

Theory of operation
-------------------
OpenSSL verifies the peer during the TLS handshake (trust store, depth, purpose). These
policies are a second, independent check run on the certificates the handshake produced,
with the validation time passed in. They exist for two reasons: OpenSSL misses rules we
want (a leaf *without* EKU passes OpenSSL's purpose check; pyOpenSSL does no name checks),
and a refusal should carry a reason an operator can act on ("missing EKU clientAuth",
"too many intermediate CAs"), not "certificate verify failed".

Shared mode (Kong's default): both ends hold the same self-signed certificate; the peer's
leaf must be byte-identical to ours (SHA-256 of the DER encoding). Nothing else matters.

PKI mode: the leaf must chain to ``cluster_ca_cert`` (a root) through at most three
intermediates, be valid at ``now``, and carry EKU clientAuth (DP) or serverAuth (CP); the CP
certificate must also match the server name the DP dialled (SAN DNS/IP, CN if no SAN). The
DP's CN is not checked, as in Kong. Checks run in a fixed order -- validity, EKU, chain,
depth, name -- so the same bad certificate always gets the same reason.

Chain building uses ``cryptography.x509.verification`` with a permissive end-entity policy
(we check EKU and names ourselves, because its server verifier cannot fall back to the CN
and its client verifier insists on a SAN) and a depth limit above ours, so that "4
intermediates" is reported as such rather than as a generic construction failure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs._checks import check_validity, describe, fingerprint_sha256, utc_seconds
from certs._errors import VerificationError

__all__ = ["PkiPolicy", "SharedModePolicy", "VerifiedPeer", "match_server_name"]

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}
# Chain building may look this deep; anything past max_intermediates is then refused with an
# explicit reason.
_SEARCH_DEPTH = 8


def _ca_key_usage(
    policy: verification.Policy, cert: x509.Certificate, usage: x509.KeyUsage | None
) -> None:
    if usage is not None and not usage.key_cert_sign:
        raise ValueError(f"CA certificate {describe(cert)} has keyUsage without keyCertSign")


# Web PKI rules for CAs, relaxed where OpenSSL (and so Kong) is: keyUsage and the authority
# key identifier may be absent (private CAs made with ``openssl req -x509`` often lack them);
# basicConstraints CA:TRUE stays mandatory.
_CA_POLICY = (
    verification.ExtensionPolicy.webpki_defaults_ca()
    .may_be_present(x509.KeyUsage, verification.Criticality.AGNOSTIC, _ca_key_usage)
    .may_be_present(x509.AuthorityKeyIdentifier, verification.Criticality.AGNOSTIC, None)
)


class SharedModePolicy:
    """Shared mode: the peer must present exactly our own cluster certificate."""

    def __init__(self, own_cert: x509.Certificate) -> None:
        self._own = own_cert
        self._digest = fingerprint_sha256(own_cert)

    @property
    def certificate(self) -> x509.Certificate:
        return self._own

    def verify(self, peer_leaf: x509.Certificate | None) -> None:
        """Raise :class:`VerificationError` unless ``peer_leaf`` is our certificate."""
        if peer_leaf is None:
            raise VerificationError("the peer presented no certificate")
        if fingerprint_sha256(peer_leaf) != self._digest:
            raise VerificationError(
                f"the peer certificate {describe(peer_leaf)} does not match the cluster "
                "certificate (SHA-256 digest differs); shared mode requires both sides to use "
                "the same cluster_cert"
            )


class VerifiedPeer:
    """The outcome of a successful PKI check: the leaf and the chain up to the root."""

    __slots__ = ("chain", "leaf")

    def __init__(self, leaf: x509.Certificate, chain: Sequence[x509.Certificate]) -> None:
        self.leaf = leaf
        self.chain: tuple[x509.Certificate, ...] = tuple(chain)

    @property
    def issuer(self) -> x509.Certificate:
        """The certificate that signed the leaf (input for OCSP)."""
        return self.chain[1]

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        return self.chain[1:-1]


def match_server_name(cert: x509.Certificate, server_name: str) -> bool:
    """RFC 6125 style: SAN dNSName (one left-most ``*`` label) or iPAddress; CN if no SAN."""
    wanted = server_name.rstrip(".").lower()
    try:
        wanted_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
            wanted.strip("[]")
        )
    except ValueError:
        wanted_ip = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        if wanted_ip is not None:
            return wanted_ip in san.get_values_for_type(x509.IPAddress)
        return any(_dns_match(p, wanted) for p in san.get_values_for_type(x509.DNSName))
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return any(isinstance(cn, str) and _dns_match(cn, wanted) for cn in cns)


def _dns_match(pattern: str, name: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if pattern == name:
        return True
    if pattern.startswith("*.") and "*" not in pattern[1:]:
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:] and "." in rest
    return False


def _extended_key_usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier] | None:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def _require_eku(cert: x509.Certificate, usage: x509.ObjectIdentifier, role: str) -> None:
    name = _EKU_NAMES.get(usage, usage.dotted_string)
    usages = _extended_key_usages(cert)
    if usages is None:
        raise VerificationError(
            f"{role} certificate {describe(cert)} has no extendedKeyUsage extension; "
            f"it must carry EKU {name}"
        )
    if usage not in usages and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages:
        present = ", ".join(_EKU_NAMES.get(u, u.dotted_string) for u in usages) or "none"
        raise VerificationError(
            f"{role} certificate {describe(cert)} lacks EKU {name} (it has: {present})"
        )


class PkiPolicy:
    """PKI mode: chain to one root CA, at most ``max_intermediates``, EKU and name rules."""

    def __init__(self, root_ca: x509.Certificate, *, max_intermediates: int = 3) -> None:
        if max_intermediates < 0:
            raise ValueError("max_intermediates must not be negative")
        self._root = root_ca
        self._store = verification.Store([root_ca])
        self.max_intermediates = max_intermediates

    @property
    def root(self) -> x509.Certificate:
        return self._root

    def verify_data_plane(
        self,
        leaf: x509.Certificate | None,
        intermediates: Sequence[x509.Certificate],
        now: datetime,
    ) -> VerifiedPeer:
        """The CP's check of a DP client certificate (CN is not checked, as in Kong)."""
        return self._verify(leaf, intermediates, now, ExtendedKeyUsageOID.CLIENT_AUTH, "data plane")

    def verify_control_plane(
        self,
        leaf: x509.Certificate | None,
        intermediates: Sequence[x509.Certificate],
        server_name: str,
        now: datetime,
    ) -> VerifiedPeer:
        """The DP's check of the CP server certificate, including the name it dialled."""
        peer = self._verify(
            leaf, intermediates, now, ExtendedKeyUsageOID.SERVER_AUTH, "control plane"
        )
        if not match_server_name(peer.leaf, server_name):
            raise VerificationError(
                f"control plane certificate {describe(peer.leaf)} does not match the server "
                f"name {server_name!r} (checked subjectAltName, or CN when there is no SAN)"
            )
        return peer

    def _verify(
        self,
        leaf: x509.Certificate | None,
        intermediates: Sequence[x509.Certificate],
        now: datetime,
        usage: x509.ObjectIdentifier,
        role: str,
    ) -> VerifiedPeer:
        if leaf is None:
            raise VerificationError(f"the {role} presented no certificate")
        at = utc_seconds(now)
        try:
            check_validity(leaf, at)
        except VerificationError as exc:
            raise VerificationError(f"{role} {exc.reason}") from None
        _require_eku(leaf, usage, role)
        # A peer may send the root too; it adds nothing and must not count as an intermediate.
        untrusted = [c for c in intermediates if c != self._root and c != leaf]
        builder = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(at)
            .max_chain_depth(_SEARCH_DEPTH)
            .extension_policies(
                ca_policy=_CA_POLICY,
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
        )
        try:
            verified = builder.build_client_verifier().verify(leaf, untrusted)
        except verification.VerificationError as exc:
            raise VerificationError(self._explain(leaf, untrusted, at, role, str(exc))) from None
        chain = verified.chain
        depth = len(chain) - 2
        if depth > self.max_intermediates:
            raise VerificationError(
                f"{role} certificate chain has too many intermediate CAs: {depth}, at most "
                f"{self.max_intermediates} are allowed between the leaf and the root CA"
            )
        return VerifiedPeer(leaf, chain)

    def _explain(
        self,
        leaf: x509.Certificate,
        untrusted: Sequence[x509.Certificate],
        at: datetime,
        role: str,
        detail: str,
    ) -> str:
        for cert in untrusted:
            if cert.not_valid_after_utc < at or cert.not_valid_before_utc > at:
                try:
                    check_validity(cert, at)
                except VerificationError as exc:
                    return f"{role} certificate chain is not valid: intermediate {exc.reason}"
        if "depth" in detail:
            return (
                f"{role} certificate chain has too many intermediate CAs: more than "
                f"{_SEARCH_DEPTH - 1}, at most {self.max_intermediates} are allowed ({detail})"
            )
        if "invalid extension" in detail or "keyCertSign" in detail:
            return (
                f"{role} certificate chain to the root CA {describe(self._root)} contains an "
                f"unusable CA certificate ({detail})"
            )
        return (
            f"{role} certificate {describe(leaf)} (issuer {leaf.issuer.rfc4514_string()}) does "
            f"not chain to the trusted root CA {describe(self._root)}: unknown CA ({detail})"
        )
