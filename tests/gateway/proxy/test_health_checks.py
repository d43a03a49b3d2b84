"""Active health checks: probe scheduling (mock clock) and real probes against tiny servers."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.proxy._balancer import Balancer, Balancers, TargetAddress
from gateway.proxy._health import HealthPolicy, Outcome, probe_target, run_health_checks


def checks(
    *,
    type: str = "http",
    healthy_interval: float = 0,
    unhealthy_interval: float = 0,
    successes: int = 1,
    failures: int = 1,
    concurrency: int = 10,
    timeout: float = 1,
    **active: Any,
) -> dict[str, Any]:
    return {
        "active": {
            "type": type,
            "http_path": "/",
            "timeout": timeout,
            "concurrency": concurrency,
            "https_verify_certificate": True,
            "https_sni": None,
            "headers": None,
            "healthy": {
                "interval": healthy_interval,
                "http_statuses": [200, 302],
                "successes": successes,
            },
            "unhealthy": {
                "interval": unhealthy_interval,
                "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
                "tcp_failures": failures,
                "timeouts": failures,
                "http_failures": failures,
            },
            **active,
        },
        "passive": {"healthy": {"successes": 0}, "unhealthy": {}},
        "threshold": 0,
    }


def build(targets: list[str], healthchecks: dict[str, Any], **upstream: Any) -> Balancers:
    up = {"id": "u1", "name": "up", "algorithm": "round-robin", "healthchecks": healthchecks}
    up.update(upstream)
    return Balancers.build(
        {
            "upstreams": [up],
            "targets": [{"upstream": {"id": "u1"}, "target": t, "weight": 100} for t in targets],
        }
    )


def only(bs: Balancers) -> Balancer:
    b = bs.get("up")
    assert b is not None
    return b


def health(bs: Balancers) -> dict[str, str]:
    return {t["target"]: t["health"] for t in only(bs).health_snapshot()}


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        # Health changes are not events one can wait on: poll, bounded by the deadline.
        while not predicate():
            await trio.sleep(0.01)


# --- pure scheduling -----------------------------------------------------------------------------


def test_plan_probes_uses_interval_of_current_health() -> None:
    b = only(build(["a:1", "b:1"], checks(healthy_interval=10, unhealthy_interval=2)))
    assert b.next_probe_at() == float("-inf")  # never probed: due now
    assert [t.name for t in b.plan_probes(100.0)] == ["a:1", "b:1"]
    assert b.plan_probes(105.0) == []
    assert b.next_probe_at() == 110.0
    b.report_probe(b.targets[0], ("http", 500))
    assert b.next_probe_at() == 102.0
    assert [t.name for t in b.plan_probes(102.0)] == ["a:1"]


def test_interval_zero_disables_that_half() -> None:
    b = only(build(["a:1"], checks(healthy_interval=0, unhealthy_interval=5)))
    assert b.plan_probes(0.0) == []  # healthy targets are not probed
    assert b.set_healthy("a:1", False)
    assert [t.name for t in b.plan_probes(0.0)] == ["a:1"]
    off = only(build(["a:1"], checks()))
    assert off.plan_probes(0.0) == []
    assert off.next_probe_at() is None


def test_policy_defaults_are_kongs() -> None:
    policy = HealthPolicy.from_upstream({"name": "up"})
    assert not policy.enabled
    assert policy.active.type == "http"
    assert policy.active.timeout == 1
    assert policy.active.concurrency == 10
    assert policy.active.http_path == "/"
    assert policy.active.https_verify_certificate
    assert policy.active.rules.healthy_statuses == {200, 302}
    assert policy.passive.unhealthy_statuses == {429, 500, 503}
    assert 226 in policy.passive.healthy_statuses
    assert policy.threshold == 0


def test_active_probe_results_follow_counters() -> None:
    b = only(build(["a:1"], checks(successes=2, failures=3, unhealthy_interval=1)))
    a = b.targets[0]
    b.report_probe(a, ("http", 500))
    b.report_probe(a, ("http", 500))
    b.report_probe(a, ("http", 418))  # in neither list: ignored, counters kept
    assert b.select(None) == a
    b.report_probe(a, ("http", 0))  # unparsable status line counts as an HTTP failure
    assert b.select(None) is None
    b.report_probe(a, ("http", 200))
    assert b.select(None) is None
    b.report_probe(a, ("http", 302))
    assert b.select(None) == a


# --- the checker task under a mock clock ---------------------------------------------------------


async def test_checker_schedule_and_transitions(autojump_clock: Any, nursery: trio.Nursery) -> None:
    status = {"a:1": 200, "b:1": 200}
    calls: list[tuple[float, str]] = []

    async def probe(balancer: Balancer, target: TargetAddress) -> Outcome:
        calls.append((trio.current_time(), target.name))
        await trio.sleep(0.5)
        return ("http", status[target.name])

    current = [build(["a:1", "b:1"], checks(healthy_interval=10, unhealthy_interval=2))]
    t0 = trio.current_time()
    await nursery.start(partial(run_health_checks, lambda: current[0], probe=probe))
    await trio.sleep(25)
    assert [(round(t - t0, 3), n) for t, n in calls if n == "a:1"] == [
        (0, "a:1"),
        (10, "a:1"),
        (20, "a:1"),
    ]
    status["a:1"] = 500
    await trio.sleep(6)  # probe at 30 fails
    assert health(current[0])["a:1"] == "UNHEALTHY"
    assert health(current[0])["b:1"] == "HEALTHY"
    status["a:1"] = 200
    await trio.sleep(2)  # unhealthy targets are probed every 2 s: back at 32
    assert health(current[0])["a:1"] == "HEALTHY"
    a_times = [round(t - t0, 3) for t, n in calls if n == "a:1"]
    assert a_times == [0, 10, 20, 30, 32]

    # A new config version is picked up; health of kept targets carries over.
    status["c:1"] = 503
    current[0] = Balancers.build(
        {
            "upstreams": [only(current[0]).upstream],
            "targets": [
                {"upstream": {"id": "u1"}, "target": t, "weight": 100} for t in ("a:1", "c:1")
            ],
        },
        current[0],
    )
    calls.clear()
    await trio.sleep(3)
    assert {n for _, n in calls} == {"c:1"}  # a:1 is not due yet, b:1 is gone
    assert health(current[0]) == {"a:1": "HEALTHY", "c:1": "UNHEALTHY"}


async def test_checker_respects_concurrency(autojump_clock: Any, nursery: trio.Nursery) -> None:
    running = 0
    peak = 0
    seen: list[str] = []

    async def probe(balancer: Balancer, target: TargetAddress) -> Outcome:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1
        seen.append(target.name)
        return "success"

    bs = build([f"t{i}:1" for i in range(5)], checks(healthy_interval=30, concurrency=2))
    await nursery.start(partial(run_health_checks, lambda: bs, probe=probe))
    await trio.sleep(10)
    assert peak == 2
    assert sorted(seen) == [f"t{i}:1" for i in range(5)]


async def test_checker_survives_a_failing_probe(
    autojump_clock: Any, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    count = 0

    async def probe(balancer: Balancer, target: TargetAddress) -> Outcome:
        nonlocal count
        count += 1
        raise RuntimeError("bug")

    bs = build(["a:1"], checks(healthy_interval=1, unhealthy_interval=1))
    await nursery.start(partial(run_health_checks, lambda: bs, probe=probe))
    await trio.sleep(5.5)
    assert count >= 5
    assert health(bs) == {"a:1": "UNHEALTHY"}
    assert "health check of a:1 failed unexpectedly" in caplog.text


# --- real probes ---------------------------------------------------------------------------------


class Backend:
    """A tiny HTTP server whose behaviour the test switches."""

    def __init__(self) -> None:
        self.mode = "status"  # status | close | garbage | hang
        self.status = 200
        self.requests: list[bytes] = []

    async def handle(self, stream: trio.abc.Stream) -> None:
        try:
            if self.mode == "close":
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            self.requests.append(data)
            if self.mode == "hang":
                await trio.sleep_forever()
            if self.mode == "garbage":
                await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
                return
            await stream.send_all(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def serve(nursery: trio.Nursery, backend: Backend) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, backend.handle, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def active(**overrides: Any) -> Any:
    policy = HealthPolicy.from_upstream({"name": "up", "healthchecks": checks(**overrides)})
    return policy.active


async def test_probe_http_status_and_request(nursery: trio.Nursery) -> None:
    backend = Backend()
    backend.status = 503
    port = await serve(nursery, backend)
    check = active(http_path="/status?x=1", headers={"X-Probe": ["one", "two"]})
    target = TargetAddress("127.0.0.1", port)
    assert await probe_target(target, check) == ("http", 503)
    assert await probe_target(target, check, host_header="api.test") == ("http", 503)
    # a balancer names its targets by the upstream's host_header: the probe's Host, no port
    named = TargetAddress("127.0.0.1", port, 100, hostname="named.test")
    assert await probe_target(named, check) == ("http", 503)
    first, second, third = backend.requests
    assert first.startswith(b"GET /status?x=1 HTTP/1.1\r\n")
    assert b"host: 127.0.0.1\r\n" in first.lower()
    assert b"x-probe: one\r\n" in first.lower()
    assert b"x-probe: two\r\n" in first.lower()
    assert b"host: api.test\r\n" in second.lower()
    assert b"host: named.test\r\n" in third.lower()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("close", "tcp_failure"), ("garbage", ("http", 0)), ("hang", "timeout")],
)
async def test_probe_bad_servers(nursery: trio.Nursery, mode: str, expected: Outcome) -> None:
    backend = Backend()
    backend.mode = mode
    port = await serve(nursery, backend)
    check = active(timeout=0.3)
    assert await probe_target(TargetAddress("127.0.0.1", port), check) == expected


async def test_probe_refused_and_unresolvable() -> None:
    check = active(timeout=2)
    assert await probe_target(TargetAddress("127.0.0.1", closed_port()), check) == "tcp_failure"
    assert await probe_target(TargetAddress("does-not-exist.invalid", 80), check) == "tcp_failure"


async def test_probe_tcp(nursery: trio.Nursery) -> None:
    port = await serve(nursery, Backend())
    check = active(type="tcp")
    assert await probe_target(TargetAddress("127.0.0.1", port), check) == "success"
    assert await probe_target(TargetAddress("127.0.0.1", closed_port()), check) == "tcp_failure"


async def test_active_checks_follow_a_real_backend(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await serve(nursery, backend)
    dead = closed_port()
    bs = build(
        [f"127.0.0.1:{port}", f"127.0.0.1:{dead}"],
        checks(healthy_interval=0.05, unhealthy_interval=0.05, successes=2, failures=2),
    )
    live, gone = f"127.0.0.1:{port}", f"127.0.0.1:{dead}"
    await nursery.start(partial(run_health_checks, lambda: bs))
    await wait_until(lambda: health(bs)[gone] == "UNHEALTHY")
    assert health(bs)[live] == "HEALTHY"
    assert only(bs).select(None) == TargetAddress("127.0.0.1", port)

    backend.status = 500
    await wait_until(lambda: health(bs)[live] == "UNHEALTHY")
    assert only(bs).select(None) is None
    backend.status = 200
    await wait_until(lambda: health(bs)[live] == "HEALTHY")
    backend.mode = "close"
    await wait_until(lambda: health(bs)[live] == "UNHEALTHY")
    backend.mode = "status"
    await wait_until(lambda: health(bs)[live] == "HEALTHY")


async def test_active_checks_reopen_a_passive_circuit(nursery: trio.Nursery) -> None:
    backend = Backend()
    port = await serve(nursery, backend)
    hc = checks(unhealthy_interval=0.05, successes=1)
    hc["passive"] = {"unhealthy": {"tcp_failures": 1}}
    bs = build([f"127.0.0.1:{port}"], hc)
    b = only(bs)
    target = b.targets[0]
    await nursery.start(partial(run_health_checks, lambda: bs))
    b.report(target, "tcp_failure")
    assert b.select(None) is None
    await wait_until(lambda: b.select(None) == target)
    assert backend.requests  # it came back through an active probe


# --- https ---------------------------------------------------------------------------------------


def _pki(tmp_path: Path) -> tuple[bytes, ssl.SSLContext]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backend")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("backend.test"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return ca.public_bytes(serialization.Encoding.PEM), server


async def serve_tls(nursery: trio.Nursery, backend: Backend, context: ssl.SSLContext) -> int:
    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, backend.handle, 0, context, host="127.0.0.1")
    )
    port: int = listeners[0].transport_listener.socket.getsockname()[1]
    return port


async def test_probe_https_verification(nursery: trio.Nursery, tmp_path: Path) -> None:
    ca_pem, server_context = _pki(tmp_path)
    port = await serve_tls(nursery, Backend(), server_context)
    target = TargetAddress("127.0.0.1", port)
    trust = ssl.create_default_context(cadata=ca_pem.decode())
    probe: Callable[..., Awaitable[Outcome]] = probe_target

    # Verified against the configured trust store, by IP address or by SNI name.
    assert await probe(target, active(type="https"), ssl_context=trust) == ("http", 200)
    by_sni = active(type="https", https_sni="backend.test")
    assert await probe(target, by_sni, ssl_context=trust) == ("http", 200)
    # Wrong name, or a CA the system store does not know: the handshake fails.
    wrong = active(type="https", https_sni="other.test")
    assert await probe(target, wrong, ssl_context=trust) == "tcp_failure"
    assert await probe(target, active(type="https")) == "tcp_failure"
    # https_verify_certificate = false accepts any certificate.
    lax = active(type="https", https_verify_certificate=False)
    assert await probe(target, lax) == ("http", 200)
    # Plain HTTP to a TLS port is not healthy either.
    assert await probe(target, active(timeout=0.5)) != ("http", 200)
