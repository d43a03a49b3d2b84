"""Admission of data planes on the control plane after mutual TLS: revocation, refusals.

Theory of operation: :func:`gateway.cluster._tls.accept_cluster_peer` proves that the peer
holds a key for a certificate the cluster trusts. In PKI mode with ``cluster_ocsp`` other
than ``off``, :meth:`Admission.admit` then asks the shared :class:`RevocationChecker`
(one per control plane, so its cache of ``good`` answers is shared by every connection)
whether that certificate is still good. Only a peer it admits reaches the websocket upgrade
and the sync protocol; a refused one is closed without a byte of websocket.

Every refusal (a TLS or certificate-policy refusal, a revocation verdict at connect, a
revocation found by a re-check) is logged on ``gateway.cluster`` with the peer address and
the reason, and kept in a bounded list for ``GET /clustering/refusals``: a data plane
refused before its hello has no node id, hence no ``/clustering/data-planes`` row.

Re-checks: :meth:`Admission.watch` runs beside each connection. It sleeps until the
verdict's ``next_check_at`` (at the latest ``cluster_ocsp_recheck_interval``), asks the
responder again (cache bypassed) and returns the reason once the certificate is revoked;
the caller then closes the link with a policy-violation code. A re-check without a verdict
(responder down, bad answer) keeps the link in both modes and is logged: dropping every
connected data plane because the responder blinked would turn a responder outage into a
cluster outage. New connections still follow the mode (``on`` refuses them).
NOTE: deliberate; pinned by tests/integration/test_revocation.py.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Literal

import attrs
import trio
from cryptography import x509

import certs
from gateway.cluster._ocsp import RevocationChecker, RevocationResult
from gateway.cluster._tls import ClusterPeer

__all__ = ["Admission", "Refusal"]

log = logging.getLogger("gateway.cluster")

Stage = Literal["handshake", "revocation", "recheck"]

#: Refusals kept for ``GET /clustering/refusals``.
DEFAULT_KEEP = 100


@attrs.frozen(kw_only=True)
class Refusal:
    """One refused (or, for ``recheck``, disconnected) data plane connection."""

    at: float
    address: str
    stage: Stage
    reason: str
    subject: str | None = None
    serial: str | None = None
    issuer: str | None = None
    expiry_timestamp: int | None = None

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def certificate_label(cert: x509.Certificate) -> str:
    return f"certificate {certs.describe(cert)}, serial {_serial(cert)}"


class Admission:
    """What a control plane checks after mTLS, and what it refused."""

    def __init__(
        self,
        checker: RevocationChecker | None,
        *,
        recheck_interval: float,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self.checker = checker
        self.recheck_interval = recheck_interval
        self.refusals: deque[Refusal] = deque(maxlen=keep)

    def record(
        self,
        address: str,
        stage: Stage,
        reason: str,
        certificate: x509.Certificate | None = None,
    ) -> Refusal:
        refusal = Refusal(
            at=time.time(),
            address=address,
            stage=stage,
            reason=reason,
            subject=None if certificate is None else certificate.subject.rfc4514_string(),
            serial=None if certificate is None else _serial(certificate),
            issuer=None if certificate is None else certificate.issuer.rfc4514_string(),
            expiry_timestamp=None
            if certificate is None
            else int(certificate.not_valid_after_utc.timestamp()),
        )
        self.refusals.append(refusal)
        return refusal

    def recent(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [r.as_json() for r in reversed(self.refusals)]

    async def admit(self, peer: ClusterPeer) -> RevocationResult | None:
        """The verdict for an authenticated peer; None when refused (logged and recorded).

        The caller closes a refused peer's stream. Without a checker (shared mode or
        ``cluster_ocsp = off``) every authenticated peer is admitted.
        """
        if self.checker is None:
            return RevocationResult(allowed=True, status="unchecked", reason="no OCSP check")
        result = await self.checker.check(peer.certificate, peer.issuer, now=time.time())
        if not result.allowed:
            log.warning(
                "data plane %s rejected: %s (%s)",
                peer.address,
                result.reason,
                certificate_label(peer.certificate),
            )
            self.record(peer.address, "revocation", result.reason, peer.certificate)
            return None
        if result.status == "no_verdict":
            log.warning(
                "data plane %s allowed without a revocation verdict (cluster_ocsp = optional): "
                "%s (%s)",
                peer.address,
                result.reason,
                certificate_label(peer.certificate),
            )
        return result

    async def watch(self, peer: ClusterPeer, first: RevocationResult) -> str:
        """Re-check ``peer`` until its certificate is revoked; the reason (never returns
        otherwise)."""
        checker = self.checker
        if checker is None or self.recheck_interval <= 0:
            await trio.sleep_forever()
            raise AssertionError("unreachable")
        result = first
        while True:
            now = time.time()
            due = now + self.recheck_interval
            if result.next_check_at is not None:
                due = min(due, result.next_check_at)
            await trio.sleep(max(0.0, due - now))
            result = await checker.check(
                peer.certificate, peer.issuer, now=time.time(), use_cache=False
            )
            if result.status == "revoked":
                self.record(peer.address, "recheck", result.reason, peer.certificate)
                return result.reason
            if result.status == "no_verdict":
                log.warning(
                    "data plane %s: revocation re-check without a verdict, keeping the "
                    "connection: %s (%s)",
                    peer.address,
                    result.reason,
                    certificate_label(peer.certificate),
                )
