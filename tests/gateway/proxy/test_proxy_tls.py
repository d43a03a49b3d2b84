"""TLS termination with SNI selection, and TLS to upstreams (verify on/off, client certs)."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from typing import Any, ClassVar

import h11
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from proxy_support import (
    FakeSettings,
    Upstream,
    config,
    plugin,
    reset_connections,
    route,
    service,
    start_proxy,
    uid,
)

import gateway.proxy._pipeline as pipeline
from gateway.plugins import Handshake, Plugin, get_plugin
from gateway.proxy import compile_config
from gateway.schema import Record
from gateway.settings import ListenAddress


class Pki:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def leaf(
        self, cn: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), client: bool = False
    ) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return (
            cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        )


def cert_entity(pair: tuple[str, str]) -> dict[str, Any]:
    return {"id": uid(), "cert": pair[0], "key": pair[1], "cert_alt": None, "key_alt": None}


async def tls_get(port: int, server_name: str, ca_pem: str | None) -> tuple[str, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=server_name)
    await stream.do_handshake()
    der = stream.getpeercert(binary_form=True)
    assert der is not None
    cn = (
        x509.load_der_x509_certificate(der)
        .subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0]
        .value
    )
    await stream.send_all(
        f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode()
    )
    data = b""
    with trio.fail_after(5):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    await trio.aclose_forcefully(stream)
    return str(cn), data


async def test_tls_termination_selects_certificate_by_sni(nursery: trio.Nursery) -> None:
    pki = Pki()
    exact = cert_entity(pki.leaf("exact", dns=("a.test",)))
    wild = cert_entity(pki.leaf("wildcard", dns=("*.wild.test",)))
    suffix = cert_entity(pki.leaf("suffix", dns=("shop.test",)))
    default = pki.leaf("default-from-settings", dns=("default.test",))
    up = Upstream()
    await nursery.start(up.serve)
    svc = service(up.port)
    cfg = config(
        services=[svc],
        routes=[route(svc)],
        certificates=[exact, wild, suffix],
        snis=[
            {"id": uid(), "name": "a.test", "certificate": {"id": exact["id"]}},
            {"id": uid(), "name": "*.wild.test", "certificate": {"id": wild["id"]}},
            {"id": uid(), "name": "shop.*", "certificate": {"id": suffix["id"]}},
        ],
    )
    settings = FakeSettings(
        proxy_listen=(ListenAddress(host="127.0.0.1", port=0, ssl=True),),
        ssl_cert=(default[0],),
        ssl_cert_key=(default[1],),
    )
    port, _ = await start_proxy(nursery, cfg, settings=settings)
    assert (await tls_get(port, "a.test", None))[0] == "exact"
    assert (await tls_get(port, "x.wild.test", None))[0] == "wildcard"
    assert (await tls_get(port, "shop.anything", None))[0] == "suffix"
    cn, data = await tls_get(port, "unknown.test", None)
    assert cn == "default-from-settings"
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b'"x-forwarded-proto", "https"' in data


async def start_tls_proxy(nursery: trio.Nursery) -> int:
    """A proxy with one TLS listener (no certificate configured: the generated default) in
    front of an upstream; returns the port."""
    up = Upstream()
    await nursery.start(up.serve)
    svc = service(up.port)
    settings = FakeSettings(proxy_listen=(ListenAddress(host="127.0.0.1", port=0, ssl=True),))
    port, _ = await start_proxy(
        nursery, config(services=[svc], routes=[route(svc)]), settings=settings
    )
    return port


async def test_tls_client_leaving_while_the_upstream_is_silent_closes_the_upstream(
    nursery: trio.Nursery,
) -> None:
    """The watchdog peeks the TCP socket under the TLS stream (as nginx peeks the fd): a
    client gone without close_notify is seen within 1-2 s. (One that sent close_notify
    leaves bytes there, which reads as alive, as in nginx.)"""
    requested, closed = trio.Event(), trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        try:
            await stream.receive_some(65536)  # the request
            requested.set()
            await stream.receive_some(65536)  # never answered: until the proxy closes
        except trio.BrokenResourceError:
            pass
        finally:
            closed.set()
            await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    up_port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, silent, listeners)
    svc = service(up_port)
    settings = FakeSettings(proxy_listen=(ListenAddress(host="127.0.0.1", port=0, ssl=True),))
    port, _ = await start_proxy(
        nursery, config(services=[svc], routes=[route(svc)]), settings=settings
    )
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="whatever.test")
    with trio.fail_after(5):
        await stream.do_handshake()
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: whatever.test\r\n\r\n")
        await requested.wait()
    await tcp.aclose()  # no close_notify
    with trio.fail_after(2.5):
        await closed.wait()


async def test_generated_default_certificate(nursery: trio.Nursery) -> None:
    port = await start_tls_proxy(nursery)
    cn, data = await tls_get(port, "whatever.test", None)
    assert cn == "localhost"
    assert data.startswith(b"HTTP/1.1 200 OK")


async def test_clients_that_reset_at_once_never_kill_a_tls_listener(
    nursery: trio.Nursery,
) -> None:
    port = await start_tls_proxy(nursery)
    reset_connections(port, 20)  # blocks this thread: the server has not accepted yet
    await trio.sleep(0.2)
    _, data = await tls_get(port, "whatever.test", None)
    assert data.startswith(b"HTTP/1.1 200 OK")


def _server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as tmp:
        cp, kp = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        with open(cp, "w") as f:
            f.write(cert)
        with open(kp, "w") as f:
            f.write(key)
        ctx.load_cert_chain(cp, kp)
    return ctx


async def serve_tls_upstream(
    nursery: trio.Nursery, pki: Pki, *, require_client_cert: bool = False
) -> int:
    ctx = _server_context(*pki.leaf("upstream", ips=("127.0.0.1",)))
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=pki.ca_pem)

    async def handle(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, ctx, server_side=True)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(bytes(await tls.receive_some(65536)))
                elif isinstance(ev, h11.EndOfMessage):
                    body = b"secure hello"
                    await tls.send_all(
                        conn.send(
                            h11.Response(
                                status_code=200, headers=[("content-length", str(len(body)))]
                            )
                        )
                        + conn.send(h11.Data(data=body))
                        + conn.send(h11.EndOfMessage())
                    )
                    conn.start_next_cycle()
                elif isinstance(ev, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, ssl.SSLError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(tls)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handle, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def test_upstream_tls_verify_on_and_off(nursery: trio.Nursery) -> None:
    from proxy_support import request

    pki = Pki()
    up_port = await serve_tls_upstream(nursery, pki)
    ca = {"id": uid(), "cert": pki.ca_pem, "cert_digest": "x"}
    trusting = service(up_port, protocol="https", tls_verify=True, ca_certificates=[ca["id"]])
    untrusting = service(up_port, protocol="https", tls_verify=True, retries=0)
    lax = service(up_port, protocol="https", tls_verify=False)
    cfg = config(
        services=[trusting, untrusting, lax],
        routes=[
            route(trusting, paths=["/trust"]),
            route(untrusting, paths=["/no-ca"]),
            route(lax, paths=["/lax"]),
        ],
        ca_certificates=[ca],
    )
    port, _ = await start_proxy(nursery, cfg)
    ok = await request(port, target="/trust")
    assert (ok.status, ok.body) == (200, b"secure hello")
    assert (await request(port, target="/no-ca")).status == 502
    assert (await request(port, target="/lax")).status == 200


async def test_upstream_tls_verify_depth(nursery: trio.Nursery) -> None:
    from proxy_support import request

    pki = Pki()  # the upstream's certificate is issued by the CA directly: chain depth 1
    up_port = await serve_tls_upstream(nursery, pki)
    ca = {"id": uid(), "cert": pki.ca_pem, "cert_digest": "x"}
    shallow = service(
        up_port,
        protocol="https",
        tls_verify=True,
        ca_certificates=[ca["id"]],
        tls_verify_depth=0,
        retries=0,
    )
    enough = service(
        up_port,
        protocol="https",
        tls_verify=True,
        ca_certificates=[ca["id"]],
        tls_verify_depth=1,
    )
    cfg = config(
        services=[shallow, enough],
        routes=[route(shallow, paths=["/shallow"]), route(enough, paths=["/enough"])],
        ca_certificates=[ca],
    )
    port, _ = await start_proxy(nursery, cfg)
    assert (await request(port, target="/shallow")).status == 502
    assert (await request(port, target="/enough")).status == 200


async def test_upstream_client_certificate(nursery: trio.Nursery) -> None:
    from proxy_support import request

    pki = Pki()
    up_port = await serve_tls_upstream(nursery, pki, require_client_cert=True)
    client = cert_entity(pki.leaf("gateway-client", dns=("gateway",), client=True))
    with_cert = service(up_port, protocol="https", client_certificate={"id": client["id"]})
    without = service(up_port, protocol="https", retries=0)
    cfg = config(
        services=[with_cert, without],
        routes=[route(with_cert, paths=["/with"]), route(without, paths=["/without"])],
        certificates=[client],
    )
    port, _ = await start_proxy(nursery, cfg)
    assert (await request(port, target="/with")).status == 200
    assert (await request(port, target="/without")).status == 502


# -- the certificate phase ------------------------------------------------------------------

HANDSHAKES: list[tuple[str, str | None, tuple[str, int] | None]] = []


class HandshakePolicy(Plugin):
    """Rejects the names of ``deny``, serves ``pick[name]`` (a certificate id), raises for
    ``boom``; records each call."""

    name = "test-handshake"
    version = "1.0.0"
    priority = 500
    config_schema: ClassVar[Record] = Record([])

    def certificate(self, handshake: Handshake) -> None:
        HANDSHAKES.append(
            (self.config.get("tag", ""), handshake.server_name, handshake.client_address)
        )
        name = handshake.server_name or ""
        if name in self.config.get("deny", ()):
            handshake.reject(f"{name} is not served here")
        if name == self.config.get("boom"):
            raise RuntimeError("certificate plugin bug")
        pick = self.config.get("pick", {}).get(name)
        if pick is not None:
            handshake.use_certificate(pick)


@pytest.fixture
def handshake_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    HANDSHAKES.clear()
    monkeypatch.setattr(
        pipeline,
        "get_plugin",
        lambda name: HandshakePolicy if name == HandshakePolicy.name else get_plugin(name),
    )


async def handshake_cn(port: int, server_name: str | None) -> tuple[str, tuple[str, int]]:
    """Only the handshake: the served certificate's CN and the client's address."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    local = tcp.socket.getsockname()
    stream = trio.SSLStream(tcp, ctx, server_hostname=server_name)
    try:
        with trio.fail_after(5):
            await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        assert der is not None
    finally:
        await trio.aclose_forcefully(stream)
    subject = x509.load_der_x509_certificate(der).subject
    return str(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value), (
        str(local[0]),
        int(local[1]),
    )


async def handshake_alert(port: int, server_name: str | None) -> str:
    """The handshake must fail: the client's reason (names the alert it received)."""
    with pytest.raises(trio.BrokenResourceError) as failed:
        await handshake_cn(port, server_name)
    cause = failed.value.__cause__
    assert isinstance(cause, ssl.SSLError)
    return str(cause.reason)


async def start_tls_plugin_proxy(
    nursery: trio.Nursery, **lists: Any
) -> tuple[int, Any, dict[str, Any]]:
    """A TLS proxy with ``lists`` added to a one-route config; the port, the state and the
    config."""
    up = Upstream()
    await nursery.start(up.serve)
    svc = service(up.port)
    cfg = config(services=[svc], routes=[route(svc)], **lists)
    settings = FakeSettings(proxy_listen=(ListenAddress(host="127.0.0.1", port=0, ssl=True),))
    port, state = await start_proxy(nursery, cfg, settings=settings)
    return port, state, cfg


async def test_certificate_phase_rejects_a_server_name(
    nursery: trio.Nursery, handshake_plugin: None, caplog: pytest.LogCaptureFixture
) -> None:
    port, _, _ = await start_tls_plugin_proxy(
        nursery, plugins=[plugin("test-handshake", {"deny": ["blocked.test"]})]
    )
    with caplog.at_level(logging.INFO, logger="gateway.proxy"):
        assert "HANDSHAKE_FAILURE" in await handshake_alert(port, "blocked.test")
    assert "blocked.test is not served here" in caplog.text
    cn, client = await handshake_cn(port, "other.test")
    assert cn == "localhost"
    # the plugin saw the name and the client's address; without SNI, None
    assert HANDSHAKES[-1] == ("", "other.test", client)
    assert (await handshake_cn(port, None))[0] == "localhost"
    assert HANDSHAKES[-1][1] is None
    _, data = await tls_get(port, "fine.test", None)
    assert data.startswith(b"HTTP/1.1 200 OK")


async def test_certificate_phase_chooses_a_certificate(
    nursery: trio.Nursery, handshake_plugin: None
) -> None:
    pki = Pki()
    by_sni = cert_entity(pki.leaf("by-sni", dns=("a.test",)))
    chosen = cert_entity(pki.leaf("chosen-by-plugin", dns=("b.test",)))
    port, _, _ = await start_tls_plugin_proxy(
        nursery,
        certificates=[by_sni, chosen],
        snis=[{"id": uid(), "name": "a.test", "certificate": {"id": by_sni["id"]}}],
        plugins=[
            plugin(
                "test-handshake",
                {"pick": {"a.test": chosen["id"], "b.test": chosen["id"], "c.test": uid()}},
            )
        ],
    )
    # the plugin's pick overrides SNI selection, and the default certificate
    assert (await handshake_cn(port, "a.test"))[0] == "chosen-by-plugin"
    assert (await handshake_cn(port, "b.test"))[0] == "chosen-by-plugin"
    # a certificate the config does not hold: SNI selection stands (here the default)
    assert (await handshake_cn(port, "c.test"))[0] == "localhost"
    cn, data = await tls_get(port, "b.test", None)
    assert cn == "chosen-by-plugin"
    assert data.startswith(b"HTTP/1.1 200 OK")


async def test_certificate_phase_exception_fails_only_that_handshake(
    nursery: trio.Nursery, handshake_plugin: None, caplog: pytest.LogCaptureFixture
) -> None:
    port, _, _ = await start_tls_plugin_proxy(
        nursery, plugins=[plugin("test-handshake", {"boom": "boom.test"})]
    )
    for _ in range(3):
        assert "INTERNAL_ERROR" in await handshake_alert(port, "boom.test")
    assert "certificate plugin bug" in caplog.text
    _, data = await tls_get(port, "fine.test", None)
    assert data.startswith(b"HTTP/1.1 200 OK")


async def test_certificate_phase_runs_global_plugins_only(
    nursery: trio.Nursery, handshake_plugin: None
) -> None:
    up = Upstream()
    await nursery.start(up.serve)
    svc = service(up.port)
    r = route(svc)
    cfg = config(
        services=[svc],
        routes=[r],
        plugins=[
            plugin("test-handshake", {"tag": "route", "deny": ["a.test"]}, route=r),
        ],
    )
    settings = FakeSettings(proxy_listen=(ListenAddress(host="127.0.0.1", port=0, ssl=True),))
    port, _ = await start_proxy(nursery, cfg, settings=settings)
    cn, data = await tls_get(port, "a.test", None)
    assert (cn, data[:15]) == ("localhost", b"HTTP/1.1 200 OK")
    assert HANDSHAKES == []


async def test_config_swap_changes_the_certificate_plugins(
    nursery: trio.Nursery, handshake_plugin: None
) -> None:
    port, state, cfg = await start_tls_plugin_proxy(nursery)
    assert (await handshake_cn(port, "a.test"))[0] == "localhost"
    state.swap(
        compile_config(
            {**cfg, "plugins": [plugin("test-handshake", {"deny": ["a.test"]})]}, version=2
        )
    )
    assert "HANDSHAKE_FAILURE" in await handshake_alert(port, "a.test")
    state.swap(compile_config(cfg, version=3))
    assert (await handshake_cn(port, "a.test"))[0] == "localhost"
