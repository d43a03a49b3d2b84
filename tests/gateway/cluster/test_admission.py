"""Admission after mTLS: refusal records, the optional-mode warning, periodic re-checks."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import trio
from cryptography import x509

from certs import build_dev_pki
from gateway.cluster._admission import Admission
from gateway.cluster._ocsp import RevocationChecker, RevocationResult
from gateway.cluster._tls import ClusterPeer


class ScriptedChecker(RevocationChecker):
    """Answers from a list; records whether the cache was allowed."""

    def __init__(self, answers: list[RevocationResult]) -> None:
        super().__init__("on")
        self.answers = answers
        self.calls: list[bool] = []

    async def check(
        self,
        leaf: x509.Certificate,
        issuer: x509.Certificate | None,
        *,
        now: float,
        use_cache: bool = True,
    ) -> RevocationResult:
        self.calls.append(use_cache)
        return self.answers.pop(0)


def _peer() -> ClusterPeer:
    pki = build_dev_pki(datetime.now(UTC) - timedelta(minutes=1), intermediates=1)
    dp = pki.data_planes[0]
    return ClusterPeer(
        stream=None,  # type: ignore[arg-type]  # never used by Admission
        certificate=dp.certificate,
        chain=(dp.certificate, *dp.chain),
        address="127.0.0.1:5000",
    )


GOOD = RevocationResult(allowed=True, status="good", reason="good", next_check_at=None)
REVOKED = RevocationResult(allowed=False, status="revoked", reason="data plane client ... revoked")
NO_VERDICT_ON = RevocationResult(allowed=False, status="no_verdict", reason="responder down")
NO_VERDICT_OPTIONAL = RevocationResult(allowed=True, status="no_verdict", reason="responder down")


async def test_refused_peer_is_recorded_with_its_certificate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admission = Admission(ScriptedChecker([REVOKED]), recheck_interval=60)
    peer = _peer()
    with caplog.at_level(logging.WARNING, logger="gateway.cluster"):
        assert await admission.admit(peer) is None
    assert "data plane 127.0.0.1:5000 rejected: data plane client ... revoked" in caplog.text
    [refusal] = admission.recent()
    assert refusal["stage"] == "revocation"
    assert refusal["subject"] == "CN=dp-1"
    assert refusal["serial"] == format(peer.certificate.serial_number, "x")
    admission.record("127.0.0.1:5001", "handshake", "unknown CA")
    assert [r["address"] for r in admission.recent()] == ["127.0.0.1:5001", "127.0.0.1:5000"]


async def test_optional_without_verdict_is_admitted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admission = Admission(ScriptedChecker([NO_VERDICT_OPTIONAL]), recheck_interval=60)
    with caplog.at_level(logging.WARNING, logger="gateway.cluster"):
        assert await admission.admit(_peer()) is not None
    assert "allowed without a revocation verdict (cluster_ocsp = optional)" in caplog.text
    assert admission.recent() == []


async def test_no_checker_admits_every_authenticated_peer() -> None:
    admission = Admission(None, recheck_interval=60)
    result = await admission.admit(_peer())
    assert result is not None
    assert result.allowed


async def test_recheck_returns_on_revocation_and_tolerates_no_verdict(
    autojump_clock: trio.abc.Clock,
) -> None:
    checker = ScriptedChecker([GOOD, NO_VERDICT_ON, REVOKED])
    admission = Admission(checker, recheck_interval=30)
    start = trio.current_time()
    reason = await admission.watch(_peer(), GOOD)
    assert reason == REVOKED.reason
    assert checker.calls == [False, False, False]  # re-checks bypass the cache
    assert 89 <= trio.current_time() - start <= 91  # three intervals of 30 s
    assert admission.recent()[0]["stage"] == "recheck"


async def test_recheck_disabled_never_returns(autojump_clock: trio.abc.Clock) -> None:
    admission = Admission(ScriptedChecker([]), recheck_interval=0)
    with trio.move_on_after(10_000) as scope:
        await admission.watch(_peer(), GOOD)
    assert scope.cancelled_caught
