"""TLS for the proxy: certificates per SNI for clients, contexts per service for upstreams.

Theory of operation: every ``ssl`` proxy listener wraps connections with one *listening*
``ssl.SSLContext`` holding the default certificate (``ssl_cert``/``ssl_cert_key``, or a
self-signed one generated at start). Its SNI callback looks the server name up in the
``CertificateStore`` of the config running *at handshake time* (exact name, then a leading
wildcard ``*.example.com``, then a trailing one ``example.*``, as Kong) and switches the
connection to that certificate's context. A config swap thus changes certificates without
touching the listeners.

Then, in the same callback, the certificate phase: the config's global plugins with a
``certificate`` hook run by priority (``run_certificate_phase``). The stdlib callback is
synchronous, and so is the hook. A plugin may pick another of the config's certificates or
reject the handshake; the callback then returns a fatal alert (``handshake_failure``, or
``internal_error`` when a plugin raised, as Kong aborts the handshake on an error). The
callback keeps a plugin's exception in: the ``ssl`` module would only print it. Without
such plugins the phase is one empty-tuple check.

Upstream contexts (``tls_verify``, ``ca_certificates``, ``client_certificate``) are built on
first use and cached per config version. ``tls_verify_depth`` is enforced right after the
handshake on the verified chain (``gateway.proxy._pool.connect_upstream``): the stdlib
``ssl`` module has no verify-depth knob, but it exposes the verified chain.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway._errors import ConfigError
from gateway.plugins import Handshake, Plugin
from gateway.plugins._handshake import HandshakeRejected

__all__ = [
    "CertificateStore",
    "UpstreamTLS",
    "context_from_pem",
    "listening_context",
    "run_certificate_phase",
    "self_signed_pem",
]

log = logging.getLogger("gateway.proxy")


def self_signed_pem(common_name: str = "localhost") -> tuple[str, str]:
    """A fresh self-signed ECDSA certificate and key (PEM), for the default certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


def _load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    # the stdlib only loads chains from files: write them to a private temp dir briefly
    with tempfile.TemporaryDirectory() as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key_pem)
        with open(cert_path, "w") as f:
            f.write(cert_pem)
        ctx.load_cert_chain(cert_path, key_path)


def _read_pem(value: str) -> str:
    if "-----BEGIN" in value:
        return value
    with open(value) as f:
        return f.read()


def context_from_pem(pairs: Sequence[tuple[str, str]]) -> ssl.SSLContext:
    """A server context with one or more (cert, key) pairs (RSA and ECDSA may coexist)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    for cert, key in pairs:
        _load_chain(ctx, _read_pem(cert), _read_pem(key))
    return ctx


class CertificateStore:
    """Server certificates of one config version, by SNI."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        contexts: dict[str, ssl.SSLContext] = {}
        errors: list[str] = []
        for cert in config.get("certificates") or ():
            pairs = [(cert["cert"], cert["key"])]
            if cert.get("cert_alt") and cert.get("key_alt"):
                pairs.append((cert["cert_alt"], cert["key_alt"]))
            try:
                contexts[cert["id"]] = context_from_pem(pairs)
            except (ssl.SSLError, OSError, ValueError) as exc:
                errors.append(f"certificate {cert.get('id')}: {exc}")
        if errors:
            raise ConfigError("; ".join(errors), key="certificates")
        self._exact: dict[str, ssl.SSLContext] = {}
        self._prefix: dict[str, ssl.SSLContext] = {}  # "*.example.com" keyed ".example.com"
        self._suffix: dict[str, ssl.SSLContext] = {}  # "example.*" keyed "example."
        for sni in config.get("snis") or ():
            ref = sni.get("certificate")
            cert_id = ref.get("id") if isinstance(ref, Mapping) else ref
            ctx = contexts.get(cert_id) if isinstance(cert_id, str) else None
            if ctx is None:
                continue
            name = str(sni["name"]).lower()
            if name.startswith("*."):
                self._prefix[name[1:]] = ctx
            elif name.endswith(".*"):
                self._suffix[name[:-1]] = ctx
            else:
                self._exact[name] = ctx
        self._certificates = contexts

    def __len__(self) -> int:
        return len(self._certificates)

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        name = server_name.lower().rstrip(".")
        ctx = self._exact.get(name)
        if ctx is not None:
            return ctx
        if self._prefix:
            dot = name.find(".")
            if dot > 0:
                ctx = self._prefix.get(name[dot:])
                if ctx is not None:
                    return ctx
        if self._suffix:
            dot = name.rfind(".")
            if dot > 0:
                ctx = self._suffix.get(name[: dot + 1])
                if ctx is not None:
                    return ctx
        return None

    def by_id(self, cert_id: str) -> ssl.SSLContext | None:
        return self._certificates.get(cert_id)


def run_certificate_phase(plugins: Sequence[Plugin], handshake: Handshake) -> int | None:
    """Run each plugin's ``certificate`` hook in order; ``None`` lets the handshake go on,
    else the TLS alert that ends it (a rejection or an exception stops the plugins after)."""
    for plugin in plugins:
        try:
            plugin.certificate(handshake)
        except HandshakeRejected as exc:
            log.info(
                "TLS handshake rejected by plugin %s: %s (server name %r, client %s)",
                plugin.name,
                exc.reason,
                handshake.server_name,
                _address(handshake.client_address),
            )
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        except Exception:
            log.exception(
                "plugin %s failed in the certificate phase; TLS handshake aborted "
                "(server name %r, client %s)",
                plugin.name,
                handshake.server_name,
                _address(handshake.client_address),
            )
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
    return None


def _address(address: tuple[str, int] | None) -> str:
    return "unknown" if address is None else f"{address[0]}:{address[1]}"


def listening_context(
    default_pairs: Sequence[tuple[str, str]],
    store: Callable[[], CertificateStore | None],
    certificate_plugins: Callable[[], Sequence[Plugin]] = tuple,
) -> ssl.SSLContext:
    """The context of ``ssl`` listeners: the default certificate plus SNI selection, then
    the certificate phase of ``certificate_plugins()`` (read at each handshake).

    The client's address reaches the plugins when the connection's ``SSLObject`` carries
    it as ``gateway_peer`` (``gateway.proxy._serve`` sets it).
    """
    if not default_pairs:
        default_pairs = [self_signed_pem()]
    ctx = context_from_pem(default_pairs)

    def on_sni(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        current: CertificateStore | None = None
        if server_name:
            try:
                sslobj.gateway_sni = server_name  # type: ignore[attr-defined]
            except AttributeError:
                pass
            current = store()
            chosen = current.context_for(server_name) if current is not None else None
            if chosen is not None:
                sslobj.context = chosen
        plugins = certificate_plugins()
        if plugins:
            if current is None:
                current = store()
            peer = getattr(sslobj, "gateway_peer", None)
            handshake = Handshake(server_name, peer, current)
            alert = run_certificate_phase(plugins, handshake)
            if alert is not None:
                return alert
            if handshake.chosen is not None:
                sslobj.context = handshake.chosen
        return None

    ctx.sni_callback = on_sni
    return ctx


class UpstreamTLS:
    """Client contexts for https services of one config version, built on first use."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._cas = {c["id"]: c["cert"] for c in config.get("ca_certificates") or ()}
        self._certs = {c["id"]: c for c in config.get("certificates") or ()}
        self._cache: dict[tuple[Any, ...], ssl.SSLContext] = {}

    @staticmethod
    def key_of(service: Mapping[str, Any]) -> tuple[Any, ...]:
        client = service.get("client_certificate")
        client_id = client.get("id") if isinstance(client, Mapping) else client
        return (
            bool(service.get("tls_verify")),
            service.get("tls_verify_depth"),
            tuple(service.get("ca_certificates") or ()),
            client_id,
        )

    def context(self, service: Mapping[str, Any]) -> tuple[tuple[Any, ...], ssl.SSLContext]:
        key = self.key_of(service)
        ctx = self._cache.get(key)
        if ctx is None:
            ctx = self._cache[key] = self._build(*key)
        return key, ctx

    def _build(
        self, verify: bool, _depth: object, ca_ids: tuple[str, ...], client_id: object
    ) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.set_alpn_protocols(["http/1.1"])
        if verify:
            ctx.check_hostname = True
            ctx.verify_mode = ssl.CERT_REQUIRED
            cas = [self._cas[i] for i in ca_ids if i in self._cas]
            if cas:
                ctx.load_verify_locations(cadata="\n".join(cas))
            else:
                ctx.load_default_certs()
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if isinstance(client_id, str) and client_id in self._certs:
            cert = self._certs[client_id]
            _load_chain(ctx, cert["cert"], cert["key"])
        return ctx
