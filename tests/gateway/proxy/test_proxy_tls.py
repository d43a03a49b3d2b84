"""TLS termination with SNI selection, and TLS to upstreams (verify on/off, client certs)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from typing import Any

import h11
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from proxy_support import (
    FakeSettings,
    Upstream,
    config,
    reset_connections,
    route,
    service,
    start_proxy,
    uid,
)

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
