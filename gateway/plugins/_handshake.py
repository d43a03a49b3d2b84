"""What a plugin's ``certificate`` phase sees of one TLS handshake (Kong's certificate phase).

Theory of operation: an ``ssl`` proxy listener chooses its certificate in the stdlib's SNI
callback, which runs synchronously inside the handshake (``gateway.proxy._tls``). It first
selects the certificate by SNI from the running config, then, when that config has global
plugins with a ``certificate`` phase, builds one ``Handshake`` and runs them by priority.
A plugin may pick another certificate of the configuration (by id or by SNI name; the
last pick wins) or reject the handshake: ``reject`` raises, the plugins after it do not
run, and the client gets a fatal ``handshake_failure`` alert.

Plain Python, off the compiled hot path: it exists only for handshakes with certificate
plugins.
"""

from __future__ import annotations

import ssl
from typing import NoReturn, Protocol

__all__ = ["CertificateSource", "Handshake", "HandshakeRejected"]


class CertificateSource(Protocol):
    """The running config's server certificates (``gateway.proxy.CertificateStore``)."""

    def by_id(self, cert_id: str) -> ssl.SSLContext | None: ...

    def context_for(self, server_name: str) -> ssl.SSLContext | None: ...


class HandshakeRejected(Exception):
    """Raised by ``Handshake.reject``: the listener ends the handshake with an alert."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Handshake:
    """One TLS handshake of a proxy listener, as certificate-phase plugins see it.

    ``server_name``: the SNI the client sent (``None`` without SNI). ``client_address``:
    the client's ``(ip, port)``, ``None`` when unknown. ``chosen``: the certificate a
    plugin picked so far (``None``: the one SNI selection made stays).
    """

    __slots__ = ("_certificates", "_chosen", "client_address", "server_name")

    def __init__(
        self,
        server_name: str | None,
        client_address: tuple[str, int] | None,
        certificates: CertificateSource | None,
    ) -> None:
        self.server_name = server_name
        self.client_address = client_address
        self._certificates = certificates
        self._chosen: ssl.SSLContext | None = None

    @property
    def chosen(self) -> ssl.SSLContext | None:
        return self._chosen

    def use_certificate(self, certificate_id: str) -> bool:
        """Serve the ``certificates`` entity ``certificate_id``; False (and no change) when
        the running config has no such certificate."""
        return self._use(self._certificates.by_id(certificate_id) if self._certificates else None)

    def use_certificate_for(self, server_name: str) -> bool:
        """Serve the certificate the config's ``snis`` select for ``server_name`` (exact,
        then wildcard names); False (and no change) when none matches."""
        certificates = self._certificates
        return self._use(certificates.context_for(server_name) if certificates else None)

    def _use(self, found: ssl.SSLContext | None) -> bool:
        if found is None:
            return False
        self._chosen = found
        return True

    def reject(self, reason: str) -> NoReturn:
        """End the handshake: the client gets a fatal alert, ``reason`` goes to the log."""
        raise HandshakeRejected(reason)
