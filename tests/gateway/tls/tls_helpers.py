"""Helpers for the TLS adapter tests: plain pyOpenSSL contexts over a dev PKI."""

from __future__ import annotations

from datetime import UTC, datetime

from OpenSSL import SSL, crypto

import certs

NOW = datetime.now(UTC)


def make_context(
    pki: certs.DevPki,
    *,
    server: bool,
    leaf: certs.IssuedCertificate | None = None,
    max_version: int | None = None,
    verify: bool = True,
) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server else SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    issued = leaf or (pki.control_plane if server else pki.data_planes[0])
    ctx.use_certificate(issued.certificate)
    ctx.use_privatekey(issued.key)
    for extra in issued.chain:
        ctx.add_extra_chain_cert(extra)
    ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(pki.root.certificate))  # type: ignore[union-attr]
    if server:
        ctx.set_session_id(b"test")
    if verify:
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: bool(a[-1]))
        ctx.set_verify_depth(3)
    return ctx


def make_connection(ctx: SSL.Context, *, server: bool, sni: bytes = b"cp.test") -> SSL.Connection:
    conn = SSL.Connection(ctx, None)
    if server:
        conn.set_accept_state()
    else:
        conn.set_connect_state()
        conn.set_tlsext_host_name(sni)
    return conn
