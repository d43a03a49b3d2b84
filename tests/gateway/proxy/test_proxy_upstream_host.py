"""The Host header and the TLS server name a balanced service sends, through a real proxy.

As Kong (``set_host_header`` and nginx's ``proxy_ssl_name $upstream_host``): without
``preserve_host`` the Host is the chosen target's host (``upstream.host_header`` when set), with
``:port`` unless the port is the scheme's default; a retry on another target names that target;
``preserve_host`` sends the client's Host. Over TLS the server name sent and verified is that
Host without its port (none for an IP address), and pooled connections are never reused for
another server name.

A Host a plugin sets (``kong.service.request.set_header("Host", ...)``, request-transformer's
``replace``) wins over all of these, on every target, and names the TLS server too.
"""

from __future__ import annotations

import json
import logging
import ssl
from typing import Any, ClassVar

import h11
import pytest
import trio
from proxy_support import (
    Client,
    Reply,
    Upstream,
    config,
    plugin,
    request,
    route,
    service,
    start_proxy,
    uid,
)
from test_proxy_tls import Pki, _server_context

import gateway.proxy._pipeline as pipeline
from gateway.plugins import Context, Plugin, get_plugin
from gateway.schema import Record
from gateway.schema.entities import ENTITIES

UPSTREAM = "lb.test"


class HostEcho(Upstream):
    """An upstream that answers with its own name and the Host it received."""

    def __init__(self, name: str) -> None:
        super().__init__(self._answer)
        self.name = name

    async def _answer(
        self, req: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        host = next(v.decode() for k, v in req.headers if k == b"host")
        payload = {"target": self.name, "host": host}
        return 200, [(b"content-type", b"application/json")], json.dumps(payload).encode()


class TlsHostEcho:
    """A TLS upstream answering with its name, the Host and the server name (SNI) it got.

    ``connections`` counts TLS connections, ``server_names`` lists their SNI (None: none sent).
    """

    def __init__(
        self, pki: Pki, name: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()
    ):
        self.name = name
        self.ctx = _server_context(*pki.leaf(name, dns=dns, ips=ips))
        self.ctx.sni_callback = self._on_sni
        self.port = 0
        self.server_names: list[str | None] = []

    @property
    def connections(self) -> int:
        return len(self.server_names)

    @staticmethod
    def _on_sni(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.test_sni = server_name  # type: ignore[attr-defined]

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, self.ctx, server_side=True)
        conn = h11.Connection(h11.SERVER)
        try:
            await tls.do_handshake()
            sni = getattr(tls._ssl_object, "test_sni", None)
            self.server_names.append(sni)
            host = ""
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(bytes(await tls.receive_some(65536)))
                elif isinstance(ev, h11.Request):
                    host = next(v.decode() for k, v in ev.headers if k == b"host")
                elif isinstance(ev, h11.EndOfMessage):
                    body = json.dumps({"target": self.name, "host": host, "sni": sni}).encode()
                    head = h11.Response(
                        status_code=200, headers=[("content-length", str(len(body)))]
                    )
                    await tls.send_all(
                        conn.send(head)
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


async def dead_port() -> int:
    """A port that was just free: connecting to it is refused."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port: int = listener.socket.getsockname()[1]
    await listener.aclose()
    return port


class SetsHost(Plugin):
    """Sets the service request's Host to the client's ``x-set-host`` (in the phase named by
    ``x-set-host-in``, ``access`` by default); ``x-remove-host`` then removes the header."""

    name = "test-sets-host"
    version = "1.0.0"
    priority = 10
    config_schema: ClassVar[Record] = Record([])

    def _apply(self, ctx: Context, phase: str) -> None:
        headers = ctx.request.headers
        if (headers.get("x-set-host-in") or "access") != phase:
            return
        value = headers.get("x-set-host")
        if value is not None:
            ctx.service_request.headers.set("Host", value)
        if headers.get("x-remove-host"):
            ctx.service_request.headers.remove("host")

    async def rewrite(self, ctx: Context) -> None:
        self._apply(ctx, "rewrite")

    async def access(self, ctx: Context) -> None:
        self._apply(ctx, "access")


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        pipeline,
        "get_plugin",
        lambda name: SetsHost if name == SetsHost.name else get_plugin(name),
    )


def balanced(
    targets: list[str],
    *,
    upstream: dict[str, Any] | None = None,
    route_fields: dict[str, Any] | None = None,
    plugins: list[dict[str, Any]] | None = None,
    **service_fields: Any,
) -> dict[str, Any]:
    """One service on the upstream ``lb.test`` (round-robin over ``targets``), one route,
    ``plugins`` (global)."""
    up = {**ENTITIES["upstreams"].defaults(), "id": uid(), "name": UPSTREAM, **(upstream or {})}
    entities = [
        {
            **ENTITIES["targets"].defaults(),
            "id": uid(),
            "upstream": {"id": up["id"]},
            "target": target,
        }
        for target in targets
    ]
    svc = service(80, host=UPSTREAM, **service_fields)
    lists: dict[str, Any] = {}
    if "ca_certificates" in service_fields:
        lists["ca_certificates"] = service_fields.pop("ca_certificates")
        svc["ca_certificates"] = [ca["id"] for ca in lists["ca_certificates"]]
    return config(
        services=[svc],
        routes=[route(svc, **(route_fields or {}))],
        upstreams=[up],
        targets=entities,
        plugins=plugins or [],
        **lists,
    )


def seen(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, reply.body
    payload: dict[str, Any] = reply.json()
    return payload


async def hosts_by_target(
    port: int, count: int = 4, headers: list[tuple[str, str]] | None = None
) -> dict[str, set[str]]:
    """The Host values each target received, over ``count`` requests on new connections and
    as many on one kept-alive connection."""
    out: dict[str, set[str]] = {}
    for _ in range(count):
        payload = seen(await request(port, headers=headers))
        out.setdefault(payload["target"], set()).add(payload["host"])
    client = await Client.open(port)
    try:
        for _ in range(count):
            payload = seen(await client.request(headers=headers))
            out.setdefault(payload["target"], set()).add(payload["host"])
    finally:
        await client.aclose()
    return out


async def start_echoes(nursery: trio.Nursery, count: int = 2) -> list[HostEcho]:
    echoes = [HostEcho(f"t{i}") for i in range(count)]
    for echo in echoes:
        await nursery.start(echo.serve)
    return echoes


# -- plain HTTP ----------------------------------------------------------------------------------


async def test_host_is_the_chosen_targets_host_and_port(nursery: trio.Nursery) -> None:
    t0, t1 = await start_echoes(nursery)
    cfg = balanced([f"127.0.0.1:{t0.port}", f"localhost:{t1.port}"])
    port, _ = await start_proxy(nursery, cfg)
    # not the upstream's name (the service host "lb.test"): each target's own host:port
    assert await hosts_by_target(port) == {
        "t0": {f"127.0.0.1:{t0.port}"},
        "t1": {f"localhost:{t1.port}"},
    }


async def test_host_is_the_upstream_host_header_with_the_targets_port(
    nursery: trio.Nursery,
) -> None:
    t0, t1 = await start_echoes(nursery)
    cfg = balanced(
        [f"127.0.0.1:{t0.port}", f"localhost:{t1.port}"],
        upstream={"host_header": "backend.internal"},
    )
    port, _ = await start_proxy(nursery, cfg)
    # as Kong: host_header replaces the target's host; the port is the target's
    assert await hosts_by_target(port) == {
        "t0": {f"backend.internal:{t0.port}"},
        "t1": {f"backend.internal:{t1.port}"},
    }


@pytest.mark.parametrize("host_header", [None, "backend.internal"])
async def test_preserve_host_wins_on_every_target(
    nursery: trio.Nursery, host_header: str | None
) -> None:
    t0, t1 = await start_echoes(nursery)
    cfg = balanced(
        [f"127.0.0.1:{t0.port}", f"localhost:{t1.port}"],
        upstream={"host_header": host_header},
        route_fields={"preserve_host": True},
    )
    port, _ = await start_proxy(nursery, cfg)
    client_host = [("Host", "Client.Example.test:8000")]
    assert await hosts_by_target(port, headers=client_host) == {
        "t0": {"Client.Example.test:8000"},
        "t1": {"Client.Example.test:8000"},
    }


@pytest.mark.parametrize("host_header", [None, "backend.internal"])
async def test_a_retry_names_the_next_target(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, host_header: str | None
) -> None:
    (live,) = await start_echoes(nursery, 1)
    dead = await dead_port()
    cfg = balanced(
        [f"localhost:{dead}", f"127.0.0.1:{live.port}"],
        upstream={"host_header": host_header},
        retries=2,
    )
    port, _ = await start_proxy(nursery, cfg)
    expected = f"{host_header or '127.0.0.1'}:{live.port}"
    with caplog.at_level(logging.INFO, logger="gateway.proxy"):
        # round-robin: about every other request tries the refused target first
        assert await hosts_by_target(port) == {"t0": {expected}}
    assert any(f"connect to localhost:{dead} failed" in r.getMessage() for r in caplog.records)
    assert live.requests == 8


# -- TLS: the server name follows the Host ------------------------------------------------------


def https_service(pki: Pki) -> dict[str, Any]:
    ca = {"id": uid(), "cert": pki.ca_pem, "cert_digest": "x"}
    return {"protocol": "https", "tls_verify": True, "ca_certificates": [ca], "retries": 0}


async def start_tls(nursery: trio.Nursery, echo: TlsHostEcho) -> TlsHostEcho:
    await nursery.start(echo.serve)
    return echo


async def test_https_server_name_is_the_targets_host(nursery: trio.Nursery) -> None:
    pki = Pki()
    by_name = await start_tls(nursery, TlsHostEcho(pki, "t0", dns=("localhost",)))
    by_ip = await start_tls(nursery, TlsHostEcho(pki, "t1", ips=("127.0.0.1",)))
    cfg = balanced([f"localhost:{by_name.port}", f"127.0.0.1:{by_ip.port}"], **https_service(pki))
    port, _ = await start_proxy(nursery, cfg)
    replies = [seen(await request(port)) for _ in range(4)]
    # each certificate is verified against its target's host (neither names "lb.test")
    assert {(r["target"], r["host"], r["sni"]) for r in replies} == {
        ("t0", f"localhost:{by_name.port}", "localhost"),
        ("t1", f"127.0.0.1:{by_ip.port}", None),  # no SNI for an IP address (RFC 6066)
    }


async def test_https_server_name_is_the_upstream_host_header(nursery: trio.Nursery) -> None:
    pki = Pki()
    echoes = [
        await start_tls(nursery, TlsHostEcho(pki, f"t{i}", dns=("backend.internal",)))
        for i in range(2)
    ]
    cfg = balanced(
        [f"localhost:{echoes[0].port}", f"127.0.0.1:{echoes[1].port}"],
        upstream={"host_header": "backend.internal"},
        **https_service(pki),
    )
    port, _ = await start_proxy(nursery, cfg)
    replies = [seen(await request(port)) for _ in range(4)]
    assert {(r["target"], r["host"], r["sni"]) for r in replies} == {
        ("t0", f"backend.internal:{echoes[0].port}", "backend.internal"),
        ("t1", f"backend.internal:{echoes[1].port}", "backend.internal"),
    }


# -- a Host set by a plugin ---------------------------------------------------------------------


def transformer(**headers: list[str]) -> dict[str, Any]:
    """request-transformer with these header operations (its config with the defaults the
    schema would fill, the test plugin above being unknown to the schema)."""
    ops = ("remove", "rename", "replace", "add", "append")
    conf: dict[str, Any] = {
        op: {"headers": headers.get(op, []), "querystring": [], "body": []} for op in ops
    }
    return plugin("request-transformer", conf)


async def test_request_transformer_replace_sets_the_host_on_every_target(
    nursery: trio.Nursery,
) -> None:
    t0, t1 = await start_echoes(nursery)
    cfg = balanced(
        [f"127.0.0.1:{t0.port}", f"localhost:{t1.port}"],
        upstream={"host_header": "backend.internal"},
        plugins=[transformer(replace=["host:backend.example"])],
    )
    port, _ = await start_proxy(nursery, cfg)
    # as Kong: request-transformer's replace of host sets ngx.var.upstream_host, which
    # wins over the target's host and the upstream's host_header
    assert await hosts_by_target(port) == {"t0": {"backend.example"}, "t1": {"backend.example"}}


async def test_request_transformer_add_remove_rename_leave_the_host_alone(
    nursery: trio.Nursery,
) -> None:
    (echo,) = await start_echoes(nursery, 1)
    cfg = balanced(
        [f"127.0.0.1:{echo.port}"],
        plugins=[
            transformer(remove=["host"], rename=["host:x-was-host"], add=["host:backend.example"])
        ],
    )
    port, _ = await start_proxy(nursery, cfg)
    assert await hosts_by_target(port, count=2) == {"t0": {f"127.0.0.1:{echo.port}"}}


@pytest.mark.parametrize("phase", ["rewrite", "access"])
async def test_a_plugin_set_host_wins_over_preserve_host_and_survives_a_retry(
    nursery: trio.Nursery, phase: str
) -> None:
    (live,) = await start_echoes(nursery, 1)
    dead = await dead_port()
    cfg = balanced(
        [f"localhost:{dead}", f"127.0.0.1:{live.port}"],
        route_fields={"preserve_host": True},
        plugins=[plugin(SetsHost.name)],
        retries=2,
    )
    port, _ = await start_proxy(nursery, cfg)
    headers = [("Host", "client.test"), ("X-Set-Host", "set.test:9"), ("X-Set-Host-In", phase)]
    assert await hosts_by_target(port, headers=headers) == {"t0": {"set.test:9"}}
    # removing the header afterwards does not unset it (Kong's clear_header keeps
    # upstream_host); removing it alone changes nothing (preserve_host: the client's)
    removed = [*headers, ("X-Remove-Host", "1")]
    assert seen(await request(port, headers=removed))["host"] == "set.test:9"
    only_removed = [("Host", "client.test"), ("X-Remove-Host", "1")]
    assert seen(await request(port, headers=only_removed))["host"] == "client.test"
    # an empty Host is no Host, as Kong's `upstream_host ~= ""`: the client's again
    empty = [("Host", "client.test"), ("X-Set-Host", "")]
    assert seen(await request(port, headers=empty))["host"] == "client.test"


@pytest.mark.parametrize("source", ["preserve_host", "plugin"])
async def test_https_server_name_follows_the_host_and_pools_per_name(
    nursery: trio.Nursery, source: str
) -> None:
    # the client's Host (preserve_host) or a Host set by a plugin: either names the server
    pki = Pki()
    echo = await start_tls(nursery, TlsHostEcho(pki, "t0", dns=("a.test", "b.test")))
    if source == "preserve_host":
        settings: dict[str, Any] = {"route_fields": {"preserve_host": True}}
        header = "Host"
    else:
        settings = {"plugins": [plugin(SetsHost.name)]}
        header = "X-Set-Host"
    cfg = balanced(
        [f"127.0.0.1:{echo.port}"],
        upstream={"host_header": "backend.internal"},
        **settings,
        **https_service(pki),
    )
    port, _ = await start_proxy(nursery, cfg)

    async def via(host: str) -> tuple[str, str]:
        payload = seen(await request(port, headers=[(header, host)]))
        return payload["host"], payload["sni"]

    # the name sent and verified is the Host without its port (proxy_ssl_name $upstream_host)
    assert await via("a.test:8443") == ("a.test:8443", "a.test")
    assert await via("b.test") == ("b.test", "b.test")
    # the pool keeps one connection per server name: each is reused for its own name only
    assert await via("a.test") == ("a.test", "a.test")
    assert await via("b.test:1") == ("b.test:1", "b.test")
    assert echo.server_names == ["a.test", "b.test"]
    # the certificate is verified against that name, as Kong (nginx verifies proxy_ssl_name):
    # a host it does not name fails the handshake
    assert (await request(port, headers=[(header, "c.test")])).status == 502
    if source == "plugin":
        # and so does the upstream's host_header when no plugin sets the Host
        assert (await request(port)).status == 502
    assert echo.server_names == ["a.test", "b.test"]


async def test_https_request_transformer_host_names_the_server(nursery: trio.Nursery) -> None:
    pki = Pki()
    echo = await start_tls(nursery, TlsHostEcho(pki, "t0", dns=("backend.example",)))
    cfg = balanced(
        [f"127.0.0.1:{echo.port}"],
        plugins=[transformer(replace=["host:backend.example"])],
        **https_service(pki),
    )
    port, _ = await start_proxy(nursery, cfg)
    for _ in range(3):
        payload = seen(await request(port))
        assert (payload["host"], payload["sni"]) == ("backend.example", "backend.example")
    assert echo.server_names == ["backend.example"]  # one pooled connection
