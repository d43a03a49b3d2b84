"""Revocation checks against a real OCSP responder (``openssl ocsp``) and broken ones."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h11
import pytest
import trio
from ocsp_helpers import free_port, make_pki, openssl_ocsp_responder, unrelated_responder

from certs import issue_certificate
from certs._generate import DevPki
from gateway.cluster._ocsp import RevocationChecker

pytestmark = pytest.mark.slow


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def pki(port: int) -> DevPki:
    return make_pki(port)


@pytest.fixture
def responder(tmp_path: Path, pki: DevPki, port: int) -> Iterator[None]:
    # data plane 0: good; data plane 1: revoked
    with openssl_ocsp_responder(tmp_path, pki, port, revoked=(1,)):
        yield


def _leaf(pki: DevPki, i: int) -> tuple[object, object]:
    return pki.data_planes[i].certificate, pki.leaf_issuer.certificate


@pytest.mark.usefixtures("responder")
async def test_good_certificate_connects_and_is_cached(pki: DevPki) -> None:
    checker = RevocationChecker("on", timeout=5, recheck_interval=60)
    leaf, issuer = pki.data_planes[0].certificate, pki.leaf_issuer.certificate
    now = time.time()
    result = await checker.check(leaf, issuer, now=now)
    assert (result.allowed, result.status) == (True, "good")
    assert result.next_check_at is not None
    assert result.next_check_at <= now + 60
    again = await checker.check(leaf, issuer, now=now + 1)
    assert again.allowed
    assert checker.responder_requests == 1  # served from the cache
    fresh = await checker.check(leaf, issuer, now=now + 2, use_cache=False)
    assert fresh.allowed
    assert checker.responder_requests == 2


@pytest.mark.usefixtures("responder")
@pytest.mark.parametrize("mode", ["on", "optional"])
async def test_revoked_certificate_is_refused(pki: DevPki, mode: str) -> None:
    checker = RevocationChecker(mode, timeout=5)  # type: ignore[arg-type]
    leaf, issuer = pki.data_planes[1].certificate, pki.leaf_issuer.certificate
    result = await checker.check(leaf, issuer, now=time.time())
    assert not result.allowed
    assert result.status == "revoked"
    assert 'certificate status "revoked" in the OCSP response' in result.reason
    # Never cached as good: asking again goes to the responder again.
    await checker.check(leaf, issuer, now=time.time())
    assert checker.responder_requests == 2


@pytest.mark.usefixtures("responder")
async def test_off_does_not_check(pki: DevPki) -> None:
    checker = RevocationChecker("off")
    leaf, issuer = pki.data_planes[1].certificate, pki.leaf_issuer.certificate
    result = await checker.check(leaf, issuer, now=time.time())
    assert result.allowed
    assert checker.responder_requests == 0


@pytest.mark.parametrize(("mode", "allowed"), [("on", False), ("optional", True)])
async def test_responder_down(pki: DevPki, mode: str, allowed: bool) -> None:
    # Nothing listens on the fixture's port: connection refused.
    checker = RevocationChecker(mode, timeout=2)  # type: ignore[arg-type]
    leaf, issuer = pki.data_planes[0].certificate, pki.leaf_issuer.certificate
    result = await checker.check(leaf, issuer, now=time.time())
    assert result.allowed is allowed
    assert result.status == "no_verdict"
    assert "revocation check failed" in result.reason
    assert "unreachable" in result.reason


async def _serve_status(
    status: int, port_box: list[int], *, task_status: trio.TaskStatus[None]
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port_box.append(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.EndOfMessage):
                break
        await stream.send_all(
            conn.send(h11.Response(status_code=status, headers=[("content-length", "0")]))
            + conn.send(h11.EndOfMessage())
        )
        await stream.aclose()

    task_status.started()
    await trio.serve_listeners(handle, listeners)


@pytest.mark.parametrize(("mode", "allowed"), [("on", False), ("optional", True)])
@pytest.mark.parametrize("status", [500, 200])
async def test_responder_http_error_or_empty_body(
    nursery: trio.Nursery, mode: str, allowed: bool, status: int
) -> None:
    box: list[int] = []
    await nursery.start(_serve_status, status, box)
    pki = make_pki(box[0])
    checker = RevocationChecker(mode, timeout=2)  # type: ignore[arg-type]
    leaf, issuer = pki.data_planes[0].certificate, pki.leaf_issuer.certificate
    result = await checker.check(leaf, issuer, now=time.time())
    assert result.allowed is allowed
    if status == 500:
        assert "OCSP responder returns bad HTTP status code: 500" in result.reason
    else:
        assert "empty body" in result.reason


@pytest.mark.parametrize(("mode", "allowed"), [("on", False), ("optional", True)])
async def test_certificate_without_aia(pki: DevPki, mode: str, allowed: bool) -> None:
    now = datetime.now(UTC) - timedelta(minutes=1)
    leaf = issue_certificate(
        common_name="dp-no-aia",
        issuer=pki.leaf_issuer,
        not_before=now,
        not_after=now + timedelta(days=1),
    )
    checker = RevocationChecker(mode)  # type: ignore[arg-type]
    result = await checker.check(leaf.certificate, pki.leaf_issuer.certificate, now=time.time())
    assert result.allowed is allowed
    assert "no OCSP responder URL" in result.reason
    assert checker.responder_requests == 0


async def test_response_signed_by_unrelated_key_is_refused(
    tmp_path: Path, pki: DevPki, port: int
) -> None:
    with openssl_ocsp_responder(tmp_path, pki, port, signer=unrelated_responder()):
        checker = RevocationChecker("on", timeout=5)
        leaf, issuer = pki.data_planes[0].certificate, pki.leaf_issuer.certificate
        result = await checker.check(leaf, issuer, now=time.time())
    assert not result.allowed
    assert result.status == "no_verdict"
    assert "failed to validate OCSP response" in result.reason


async def test_revocation_seen_by_a_fresh_check(tmp_path: Path, pki: DevPki, port: int) -> None:
    leaf, issuer = pki.data_planes[0].certificate, pki.leaf_issuer.certificate
    checker = RevocationChecker("on", timeout=5)
    with openssl_ocsp_responder(tmp_path, pki, port):
        assert (await checker.check(leaf, issuer, now=time.time())).allowed
    with openssl_ocsp_responder(tmp_path, pki, port, revoked=(0,)):
        result = await checker.check(leaf, issuer, now=time.time(), use_cache=False)
    assert not result.allowed
    assert result.status == "revoked"


async def test_revoked_verdict_drops_the_cached_good_one(
    tmp_path: Path, pki: DevPki, port: int
) -> None:
    """A DP disconnected by a re-check cannot come back through the cached good answer."""
    leaf, issuer = pki.data_planes[0].certificate, pki.leaf_issuer.certificate
    checker = RevocationChecker("on", timeout=5, recheck_interval=0)
    with openssl_ocsp_responder(tmp_path, pki, port):
        good = await checker.check(leaf, issuer, now=time.time())
    assert good.allowed
    assert good.next_check_at is None  # recheck_interval 0: no periodic re-check
    with openssl_ocsp_responder(tmp_path, pki, port, revoked=(0,)):
        revoked = await checker.check(leaf, issuer, now=time.time(), use_cache=False)
        assert revoked.status == "revoked"
        assert revoked.reason.startswith(
            "data plane client certificate was revoked: failed to validate OCSP response: "
            'certificate status "revoked" in the OCSP response'
        )
        again = await checker.check(leaf, issuer, now=time.time())  # cache allowed
    assert again.status == "revoked"
    assert checker.responder_requests == 3
