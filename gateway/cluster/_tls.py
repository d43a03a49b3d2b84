"""Mutual TLS for the CP <-> DP cluster link.

Theory of operation
-------------------
:class:`ClusterTLS` is the loaded material (mode, our chain and key, the root CA in PKI
mode) and builds the two pyOpenSSL contexts. A context cannot be changed once a
connection used it, so a material change (rotation) means a new ``ClusterTLS``; each
instance builds its contexts once, on first use, and hands out the same objects after.

Two independent checks guard every link:

1. **During the handshake, OpenSSL.** Both sides verify the peer (``VERIFY_PEER``; the
   server also ``FAIL_IF_NO_PEER_CERT``) against a trust store holding only what the mode
   trusts: our own cluster certificate (shared mode) or the root CA (PKI mode). The verify
   depth allows at most three intermediates. The verify callback only ever *tightens*: it
   returns the OpenSSL verdict unless it wants to refuse more (a leaf without the required
   EKU, which OpenSSL lets through; a shared-mode peer whose certificate is not ours). It
   records the first refusal reason on the connection for the log.
2. **After the handshake, the pure policy** (:class:`certs.SharedModePolicy` or
   :class:`certs.PkiPolicy`) re-checks the certificates the handshake produced at the time
   the caller passes: digest match; chain, depth, validity, EKU and (DP side) the server
   name. This catches anything (1) let through and gives readable reasons.

The server disables session resumption (session cache off, no tickets, a fixed session id
context): a resumed session skips the verify callback, and cluster links are long-lived
anyway.

Shared mode uses the fixed SNI ``kong_clustering`` (as Kong; the certificate from
``hybrid gen_cert`` has that CN) unless ``cluster_server_name`` is set. Do not put a
TLS-aware proxy between CP and DP in shared mode; use PKI mode there.

TLS 1.3 pitfall: a client whose certificate the server refuses completes its handshake and
learns of the refusal only on its first read. :func:`connect_cluster_peer` returns a stream
that reports a failure on that first read as :class:`LikelyAuthenticationFailure` and logs
it as such. Timeouts belong to the caller (``trio.fail_after`` around these functions).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Literal, TypeAlias

import attrs
import trio
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL, crypto

import certs
from gateway._errors import GatewayError
from gateway.tls import OpenSSLStream

__all__ = [
    "SHARED_MODE_SNI",
    "ClusterMode",
    "ClusterPeer",
    "ClusterPeerRejected",
    "ClusterTLS",
    "LikelyAuthenticationFailure",
    "accept_cluster_peer",
    "connect_cluster_peer",
]

logger = logging.getLogger("gateway.cluster")

ClusterMode = Literal["shared", "pki"]

#: The SNI a data plane sends in shared mode when ``cluster_server_name`` is not set.
SHARED_MODE_SNI = "kong_clustering"
_SESSION_ID_CONTEXT = b"gateway-cluster"

_VerifyCallback: TypeAlias = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]

# X509_V_ERR_* codes the cluster link can meet, for readable log lines.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate that is not trusted",
    19: "self-signed certificate in the chain is not trusted",
    20: "unable to get local issuer certificate (unknown CA)",
    21: "unable to verify the first certificate (unknown CA)",
    22: "certificate chain too long (more than 3 intermediate CAs)",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose (extended key usage)",
    79: "CA certificate key too weak",
}


class ClusterPeerRejected(GatewayError):
    """The cluster peer failed the TLS handshake or the certificate policy."""

    def __init__(self, reason: str, *, peer: str) -> None:
        super().__init__(f"cluster peer {peer} rejected: {reason}")
        self.reason = reason
        self.peer = peer


class LikelyAuthenticationFailure(trio.BrokenResourceError):
    """The control plane dropped the link on our first read after the handshake.

    With TLS 1.3 that is how a refused client certificate shows up on the client.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _HandshakeNotes:
    """Per-connection scratchpad for the verify callback (first refusal reason)."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None

    def refuse(self, reason: str) -> bool:
        if self.reason is None:
            self.reason = reason
        return False


def _has_usage(cert: x509.Certificate, usage: x509.ObjectIdentifier) -> bool:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return usage in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages


def _to_chain(value: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class ClusterTLS:
    """Cluster-link TLS material and the contexts built from it.

    ``cert_chain`` is our leaf followed by its intermediates; ``ca_root`` is required in PKI
    mode and must be a self-signed root; ``server_name`` is ``cluster_server_name`` (the name
    a DP dials and checks; shared mode defaults to ``kong_clustering``).
    """

    mode: ClusterMode
    cert_chain: tuple[x509.Certificate, ...] = attrs.field(converter=_to_chain)
    key: certs.PrivateKey
    ca_root: x509.Certificate | None = None
    server_name: str | None = None
    max_intermediates: int = 3
    _contexts: dict[str, SSL.Context] = attrs.field(
        factory=dict, init=False, eq=False, repr=False, hash=False
    )

    def __attrs_post_init__(self) -> None:
        if self.mode not in ("shared", "pki"):
            raise ValueError(f"unknown cluster_mtls mode {self.mode!r}")
        if not self.cert_chain:
            raise certs.CertificateError("cluster_cert: no certificate")
        certs.check_key_matches(self.leaf, self.key, setting="cluster_cert_key")
        if self.mode == "pki":
            if self.ca_root is None:
                raise certs.CertificateError(
                    'cluster_ca_cert must be specified when cluster_mtls = "pki"'
                )
            certs.check_ca_root(self.ca_root)

    @classmethod
    def load(
        cls,
        *,
        mode: ClusterMode,
        cluster_cert: str,
        cluster_cert_key: str,
        cluster_ca_cert: str | None = None,
        server_name: str | None = None,
    ) -> ClusterTLS:
        """Load from setting values (path, inline PEM or base64 PEM each)."""
        chain = certs.load_certificates(cluster_cert, setting="cluster_cert")
        key = certs.load_private_key(cluster_cert_key, setting="cluster_cert_key")
        root = None
        if cluster_ca_cert is not None and mode == "pki":
            root = certs.load_certificates(cluster_ca_cert, setting="cluster_ca_cert")[0]
        return cls(mode=mode, cert_chain=chain, key=key, ca_root=root, server_name=server_name)

    @property
    def leaf(self) -> x509.Certificate:
        return self.cert_chain[0]

    @property
    def expires_at(self) -> datetime:
        """notAfter of our own cluster certificate (for metrics and expiry warnings)."""
        return self.leaf.not_valid_after_utc

    @property
    def policy(self) -> certs.SharedModePolicy | certs.PkiPolicy:
        if self.mode == "shared":
            return certs.SharedModePolicy(self.leaf)
        assert self.ca_root is not None
        return certs.PkiPolicy(self.ca_root, max_intermediates=self.max_intermediates)

    # -- contexts ------------------------------------------------------------------------

    def server_context(self) -> SSL.Context:
        """The control plane's context (built once per instance)."""
        if "server" not in self._contexts:
            self._contexts["server"] = self.build_context(server=True)
        return self._contexts["server"]

    def client_context(self) -> SSL.Context:
        """The data plane's context (built once per instance)."""
        if "client" not in self._contexts:
            self._contexts["client"] = self.build_context(server=False)
        return self._contexts["client"]

    def build_context(self, *, server: bool) -> SSL.Context:
        """A fresh context; prefer :meth:`server_context` / :meth:`client_context`."""
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server else SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
        ctx.use_certificate(self.leaf)
        ctx.use_privatekey(self.key)
        for intermediate in self.cert_chain[1:]:
            ctx.add_extra_chain_cert(intermediate)
        ctx.check_privatekey()
        anchor = self.leaf if self.mode == "shared" else self.ca_root
        assert anchor is not None
        store = ctx.get_cert_store()
        assert store is not None
        store.add_cert(crypto.X509.from_cryptography(anchor))
        if server:
            ctx.add_client_ca(anchor)
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            ctx.set_options(SSL.OP_NO_TICKET)
            ctx.set_session_id(_SESSION_ID_CONTEXT)
            mode = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        else:
            mode = SSL.VERIFY_PEER
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if server else ExtendedKeyUsageOID.SERVER_AUTH
        ctx.set_verify(mode, self._verify_callback(usage))
        ctx.set_verify_depth(self.max_intermediates)
        return ctx

    def _verify_callback(self, usage: x509.ObjectIdentifier) -> _VerifyCallback:
        own_digest = certs.fingerprint_sha256(self.leaf)
        shared = self.mode == "shared"
        usage_name = "clientAuth" if usage == ExtendedKeyUsageOID.CLIENT_AUTH else "serverAuth"

        def verify(
            conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
        ) -> bool:
            notes = conn.get_app_data()
            if not isinstance(notes, _HandshakeNotes):
                notes = _HandshakeNotes()  # a connection not made by us: still enforce
            if not ok:
                detail = _VERIFY_ERRORS.get(errno, f"verify error {errno}")
                subject = certs.describe(cert.to_cryptography())
                return notes.refuse(f"{detail} (certificate {subject}, depth {depth})")
            if depth != 0:
                return True
            leaf = cert.to_cryptography()
            if shared:
                if certs.fingerprint_sha256(leaf) != own_digest:
                    return notes.refuse(
                        f"certificate {certs.describe(leaf)} is not the shared cluster certificate"
                    )
            elif not _has_usage(leaf, usage):
                return notes.refuse(
                    f"certificate {certs.describe(leaf)} lacks extended key usage {usage_name}"
                )
            return True

        return verify

    def effective_server_name(self, server_name: str | None = None) -> str:
        """The name a DP sends as SNI and (PKI mode) checks on the CP certificate."""
        name = server_name or self.server_name
        if name:
            return name
        if self.mode == "shared":
            return SHARED_MODE_SNI
        raise ValueError("PKI mode needs a server name (cluster_server_name or the CP host)")


@attrs.frozen(kw_only=True)
class ClusterPeer:
    """An authenticated cluster link: the stream and who is on the other end."""

    stream: OpenSSLStream
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    address: str

    @property
    def expires_at(self) -> datetime:
        """notAfter of the peer's certificate (``cert_details.expiry_timestamp``)."""
        return self.certificate.not_valid_after_utc

    @property
    def issuer(self) -> x509.Certificate | None:
        """The CA that issued the peer certificate (PKI mode; input for OCSP)."""
        return self.chain[1] if len(self.chain) > 1 else None


class _DataPlaneStream(OpenSSLStream):
    """The DP's end: a failure on the first read is reported as a likely auth failure."""

    def __init__(self, transport: trio.abc.Stream, conn: SSL.Connection, address: str) -> None:
        super().__init__(transport, conn)
        self._address = address
        self._first_read = True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._first_read:
            return await super().receive_some(max_bytes)
        try:
            data = await super().receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            self._first_read = False
            reason = (
                f"the control plane {self._address} broke the link on the first read after "
                f"the TLS handshake ({exc}); it most likely refused this data plane's "
                "certificate (check cluster_cert, cluster_ca_cert and the CP log)"
            )
            logger.warning("cluster link to %s: %s", self._address, reason)
            raise LikelyAuthenticationFailure(reason) from exc
        self._first_read = False
        if not data:
            # A clean close_notify is not how a CP refuses a certificate (OpenSSL sends an
            # alert; our policy check drops the link without close_notify), so only note it.
            logger.info(
                "cluster link to %s: the control plane closed the connection right after "
                "the TLS handshake",
                self._address,
            )
        return data


def _handshake_reason(notes: _HandshakeNotes, exc: BaseException) -> str:
    if notes.reason is not None:
        return notes.reason
    if "alert" in str(exc):
        return (
            f"the peer aborted the TLS handshake ({exc}): it refused our certificate or parameters"
        )
    return f"TLS handshake failed: {exc}"


async def accept_cluster_peer(
    transport: trio.abc.Stream, tls: ClusterTLS, *, peer: str, now: datetime
) -> ClusterPeer:
    """Control plane side: TLS handshake with a DP, then the policy check at ``now``.

    Raises :class:`ClusterPeerRejected` (after closing the transport and logging a warning
    naming ``peer`` and the reason).
    """
    conn = SSL.Connection(tls.server_context(), None)
    conn.set_accept_state()
    notes = _HandshakeNotes()
    conn.set_app_data(notes)
    stream = OpenSSLStream(transport, conn)
    return await _handshake_and_check(
        stream, notes, tls, side="data plane", address=peer, now=now, server_name=None
    )


async def connect_cluster_peer(
    transport: trio.abc.Stream,
    tls: ClusterTLS,
    *,
    now: datetime,
    server_name: str | None = None,
    peer: str | None = None,
) -> ClusterPeer:
    """Data plane side: TLS handshake with the CP, then the policy check at ``now``.

    ``server_name`` is the SNI and (PKI mode) the name checked on the CP certificate; it
    defaults to ``tls.server_name``, then to ``kong_clustering`` in shared mode. ``peer``
    is the CP address for log lines. Raises :class:`ClusterPeerRejected`.
    """
    name = tls.effective_server_name(server_name)
    address = peer or name
    conn = SSL.Connection(tls.client_context(), None)
    conn.set_connect_state()
    if not _is_ip_literal(name):  # RFC 6066: no IP addresses in SNI
        conn.set_tlsext_host_name(name.encode("idna"))
    notes = _HandshakeNotes()
    conn.set_app_data(notes)
    stream = _DataPlaneStream(transport, conn, address)
    return await _handshake_and_check(
        stream, notes, tls, side="control plane", address=address, now=now, server_name=name
    )


async def _handshake_and_check(
    stream: OpenSSLStream,
    notes: _HandshakeNotes,
    tls: ClusterTLS,
    *,
    side: str,
    address: str,
    now: datetime,
    server_name: str | None,
) -> ClusterPeer:
    """Both sides: OpenSSL's handshake, then the pure policy re-check; a refusal closes the
    stream, logs ``"<side> <address> rejected: <reason>"`` and raises ClusterPeerRejected."""
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        reason = _handshake_reason(notes, exc)
        await trio.aclose_forcefully(stream)
        logger.warning("%s %s rejected: %s", side, address, reason)
        raise ClusterPeerRejected(reason, peer=address) from exc
    leaf = stream.peer_certificate()
    try:
        chain = _check_policy(tls, stream, leaf, now=now, server_name=server_name)
    except certs.VerificationError as exc:
        # No close_notify: the peer then sees a truncated stream on its first read, which a
        # DP reports as a likely authentication failure.
        await trio.aclose_forcefully(stream)
        logger.warning("%s %s rejected: %s", side, address, exc.reason)
        raise ClusterPeerRejected(exc.reason, peer=address) from exc
    assert leaf is not None
    return ClusterPeer(stream=stream, certificate=leaf, chain=chain, address=address)


def _check_policy(
    tls: ClusterTLS,
    stream: OpenSSLStream,
    leaf: x509.Certificate | None,
    *,
    now: datetime,
    server_name: str | None,
) -> tuple[x509.Certificate, ...]:
    policy = tls.policy
    if isinstance(policy, certs.SharedModePolicy):
        policy.verify(leaf)
        assert leaf is not None
        return (leaf,)
    # Server side OpenSSL omits the client's leaf from the peer chain; client side has it.
    intermediates = [c for c in stream.peer_cert_chain() if c != leaf]
    if server_name is None:
        verified = policy.verify_data_plane(leaf, intermediates, now)
    else:
        verified = policy.verify_control_plane(leaf, intermediates, server_name, now)
    return verified.chain


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
