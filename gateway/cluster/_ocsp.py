"""Revocation checks of data plane certificates (``cluster_ocsp``), on the control plane.

Theory of operation: once the mutual TLS handshake and the PKI policy accepted a data
plane, and before the websocket upgrade is answered, the control plane asks the OCSP
responder named in the DP leaf's Authority Information Access extension. The request is
built by ``certs.build_ocsp_request`` (leaf + issuer from the verified chain) and POSTed
with ``Content-Type: application/ocsp-request`` under ``cluster_ocsp_timeout``; the answer
is judged by ``certs.check_ocsp_response`` (signature by the issuer or a delegated
OCSPSigning responder, matching CertID, current thisUpdate/nextUpdate).

Modes:

* ``on``: only a verified ``good`` answer lets the DP in. No AIA URI, an unreachable
  responder, a non-200 answer, an empty or malformed body, a response that fails its checks
  (bad signature, wrong responder, stale), or ``unknown``: refused, reason logged.
* ``optional``: ``revoked`` is refused. When no verdict could be obtained (no URI,
  responder down, HTTP error, a response that fails its checks, or ``unknown``) the DP is
  allowed and a warning is logged. A response that fails its checks is *never* treated as
  ``good``: in ``optional`` it counts as "no verdict", exactly like an unreachable
  responder (an attacker able to forge it could as well block the responder).
  NOTE: Kong counts it as revoked in both modes; pinned by tests/integration/
  test_revocation.py::test_optional_refuses_revoked_and_allows_without_a_verdict.
* ``off``: no check.

``good`` verdicts are cached per certificate (issuer key hash, serial) until ``nextUpdate``,
at most ``max_cache_seconds``, so a reconnect storm does not hammer the responder; other
verdicts are not cached, and a ``revoked`` verdict drops the cached ``good`` one (the DP it
disconnects cannot come back through the cache). Connected DPs are re-checked by the
control plane (see ``next_check_at``; ``recheck_interval <= 0`` disables re-checks): a DP
revoked meanwhile is disconnected and cannot reconnect.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

import attrs
import h11
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import certs
from certs import OcspStatus, VerificationError

log = logging.getLogger("gateway.cluster.ocsp")

Mode = Literal["off", "on", "optional"]
_MAX_RESPONSE = 1024 * 1024


class OcspTransportError(Exception):
    """The responder could not be asked or did not answer usefully (no verdict)."""


@attrs.frozen(kw_only=True)
class RevocationResult:
    """``allowed``: may the DP connect. ``status``: good | revoked | unknown | no_verdict |
    unchecked. ``reason`` is for the log and the status endpoint."""

    allowed: bool
    status: str
    reason: str
    next_check_at: float | None = None  # epoch seconds; None = no periodic re-check needed


async def fetch_ocsp(url: str, request_der: bytes, timeout: float) -> bytes:
    """POST ``request_der`` to ``url``; the DER body of a 200 answer, else OcspTransportError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OcspTransportError(f"unsupported OCSP responder URL {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    try:
        with trio.fail_after(timeout):
            stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
            if parts.scheme == "https":
                stream = trio.SSLStream(
                    stream, ssl.create_default_context(), server_hostname=parts.hostname
                )
            async with stream:
                return await _exchange(stream, host_header, path, request_der)
    except trio.TooSlowError:
        raise OcspTransportError(f"OCSP responder {url} did not answer within {timeout}s") from None
    except OSError as exc:
        raise OcspTransportError(f"OCSP responder {url} unreachable: {exc}") from exc
    except (trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise OcspTransportError(f"OCSP responder {url} broke the exchange: {exc}") from exc


async def _exchange(stream: trio.abc.Stream, host: str, path: str, body: bytes) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="POST",
        target=path,
        headers=[
            ("host", host),
            ("content-type", "application/ocsp-request"),
            ("accept", "application/ocsp-response"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ],
    )
    await stream.send_all(
        conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    )
    status = 0
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > _MAX_RESPONSE:
                raise OcspTransportError("OCSP response too large")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    if status != 200:
        raise OcspTransportError(f"OCSP responder returns bad HTTP status code: {status}")
    data = b"".join(chunks)
    if not data:
        raise OcspTransportError("OCSP responder returned an empty body")
    return data


def _cache_key(leaf: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, int]:
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest(), leaf.serial_number


class RevocationChecker:
    """Decides, per ``cluster_ocsp`` mode, whether a DP certificate may connect."""

    def __init__(
        self,
        mode: Mode,
        *,
        timeout: float = 5.0,
        recheck_interval: float = 300.0,
        skew: timedelta = timedelta(minutes=5),
        max_cache_seconds: float = 3600.0,
        max_cache_entries: int = 10_000,
    ) -> None:
        self.mode = mode
        self.timeout = timeout
        self.recheck_interval = recheck_interval
        self.skew = skew
        self.max_cache_seconds = max_cache_seconds
        self.max_cache_entries = max_cache_entries
        #: (issuer key hash, serial) -> (cache expiry, next re-check or None)
        self._cache: OrderedDict[tuple[bytes, int], tuple[float, float | None]] = OrderedDict()
        self.responder_requests = 0

    def _cached(self, key: tuple[bytes, int], now: float) -> tuple[float, float | None] | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._cache[key]
            return None
        return entry

    def _recheck_at(self, now: float) -> float | None:
        return now + self.recheck_interval if self.recheck_interval > 0 else None

    async def check(
        self,
        leaf: x509.Certificate,
        issuer: x509.Certificate | None,
        *,
        now: float,
        use_cache: bool = True,
    ) -> RevocationResult:
        """The verdict for ``leaf``; ``use_cache=False`` always asks the responder."""
        if self.mode == "off":
            return RevocationResult(allowed=True, status="unchecked", reason="cluster_ocsp = off")
        if issuer is None:
            return self._no_verdict(now, "no issuer certificate in the verified chain")
        key = _cache_key(leaf, issuer)
        cached = self._cached(key, now) if use_cache else None
        if cached is not None:
            return RevocationResult(
                allowed=True, status="good", reason="good (cached)", next_check_at=cached[1]
            )
        url = certs.ocsp_responder_url(leaf)
        if url is None:
            return self._no_verdict(now, "the certificate has no OCSP responder URL (AIA)")
        try:
            self.responder_requests += 1
            der = await fetch_ocsp(url, certs.build_ocsp_request(leaf, issuer), self.timeout)
        except OcspTransportError as exc:
            return self._no_verdict(now, str(exc))
        try:
            verdict = certs.check_ocsp_response(
                der, leaf, issuer, datetime.fromtimestamp(now, UTC), self.skew
            )
        except VerificationError as exc:
            return self._no_verdict(now, f"failed to validate OCSP response: {exc.reason}")
        if verdict.status is OcspStatus.REVOKED:
            self._cache.pop(key, None)
            when = verdict.revocation_time.isoformat() if verdict.revocation_time else "?"
            reason = verdict.revocation_reason or "unspecified"
            return RevocationResult(
                allowed=False,
                status="revoked",
                # Kong's text (kong-behaviour.md 11.3 #32), then the details.
                reason=(
                    "data plane client certificate was revoked: failed to validate OCSP "
                    'response: certificate status "revoked" in the OCSP response '
                    f"(since {when}, reason {reason})"
                ),
            )
        if verdict.status is not OcspStatus.GOOD:
            return self._no_verdict(now, 'certificate status "unknown" in the OCSP response')
        next_check = self._recheck_at(now)
        expires = now + self.max_cache_seconds
        if verdict.next_update is not None:
            nu = verdict.next_update.timestamp()
            if next_check is not None:
                next_check = min(next_check, nu)
            expires = min(expires, nu)
        if expires > now:
            self._cache[key] = (expires, next_check)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_cache_entries:
                self._cache.popitem(last=False)
        return RevocationResult(
            allowed=True, status="good", reason="good", next_check_at=next_check
        )

    def _no_verdict(self, now: float, why: str) -> RevocationResult:
        if self.mode == "on":
            return RevocationResult(
                allowed=False,
                status="no_verdict",
                reason=f"data plane client certificate revocation check failed: {why}",
            )
        return RevocationResult(
            allowed=True,
            status="no_verdict",
            reason=f"data plane client certificate revocation check failed: {why}",
            # No verdict now: ask again later, a revocation may show up then.
            next_check_at=self._recheck_at(now),
        )

    def forget(self, leaf: x509.Certificate, issuer: x509.Certificate) -> None:
        """Drop a cached verdict (the periodic re-check must ask the responder)."""
        self._cache.pop(_cache_key(leaf, issuer), None)
