"""The proxy as a client sees it: real sockets, real (tiny) upstreams, both parser backends."""

from __future__ import annotations

import ipaddress
import json
import select
import socket as stdlib_socket
from typing import Any

import h11
import pytest
import trio
from proxy_support import (
    Client,
    Reply,
    Upstream,
    config,
    echo,
    plugin,
    raw_exchange,
    request,
    route,
    service,
    simple_config,
    start_proxy,
    status_of,
)

from gateway.declarative import validate_config
from gateway.http import BACKENDS as ALL_BACKENDS
from gateway.proxy import CompiledConfig, compile_config

HeaderPairs = list[tuple[bytes, bytes]]

BACKENDS = pytest.mark.parametrize("backend", ALL_BACKENDS)


async def start_echo(nursery: trio.Nursery) -> Upstream:
    up = Upstream()
    await nursery.start(up.serve)
    return up


@BACKENDS
async def test_proxies_and_adds_kong_headers(nursery: trio.Nursery, backend: str) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port), backend=backend)
    reply = await request(
        port, "GET", "/a/b?x=1&y", headers=[("Host", "api.test:8000"), ("X-Custom", "v")]
    )
    assert reply.status == 200
    seen = dict(reply.json()["headers"])
    assert reply.json()["target"] == "/a/b?x=1&y"
    assert seen["host"] == f"127.0.0.1:{up.port}"
    assert seen["x-custom"] == "v"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "api.test"
    assert seen["x-forwarded-port"] == str(port)
    assert seen["x-forwarded-path"] == "/a/b"
    assert seen["via"].startswith("1.1 gateway/")
    assert reply.header(
        "via",
    ).startswith("1.1 gateway/")  # type: ignore[union-attr]
    assert reply.header("x-gateway-upstream-latency") is not None
    assert reply.header("x-gateway-proxy-latency") is not None


@BACKENDS
async def test_any_token_method_is_proxied_and_routed(nursery: trio.Nursery, backend: str) -> None:
    """As Kong (nginx takes any method): llhttp knows a fixed list of methods, so the
    default backend reads heads with other methods with the strict regex grammar."""
    up = await start_echo(nursery)
    svc = service(up.port)
    cfg = config(services=[svc], routes=[route(svc, methods=["FOO", "PURGE"])])
    port, _ = await start_proxy(nursery, cfg, backend=backend)
    for method in ("FOO", "PURGE"):
        reply = await request(port, method, "/x")
        assert reply.status == 200, method
        assert reply.json()["method"] == method
    assert (await request(port, "GET", "/x")).status == 404
    # still one token, one SP each
    assert b" 400 " in (await raw_exchange(port, b"FO O /x HTTP/1.1\r\nHost: a\r\n\r\n"))


async def test_forwarded_headers_from_untrusted_clients_are_replaced(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    reply = await request(
        port,
        headers=[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil"),
        ],
    )
    seen = reply.json()["headers"]
    assert ["x-real-ip", "127.0.0.1"] in seen
    assert ["x-forwarded-for", "1.2.3.4, 127.0.0.1"] in seen  # appended, as nginx does
    assert ["x-forwarded-proto", "http"] in seen
    assert ["x-forwarded-host", "example.test"] in seen
    assert sum(1 for k, _ in seen if k == "x-real-ip") == 1


async def test_trusted_ips_and_real_ip_header(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(
        nursery,
        simple_config(up.port),
        trusted_ips=[ipaddress.ip_network("127.0.0.0/8")],
        real_ip_header="X-Forwarded-For",
    )
    reply = await request(
        port, headers=[("X-Forwarded-For", "10.0.0.1, 1.2.3.4"), ("X-Forwarded-Proto", "https")]
    )
    seen = reply.json()["headers"]
    assert ["x-real-ip", "1.2.3.4"] in seen
    assert ["x-forwarded-for", "10.0.0.1, 1.2.3.4, 127.0.0.1"] in seen
    assert ["x-forwarded-proto", "https"] in seen


async def test_hop_by_hop_and_connection_named_headers_are_stripped(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    reply = await request(
        port,
        headers=[
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "s"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
        ],
    )
    names = {k for k, _ in reply.json()["headers"]}
    assert not names & {"x-secret", "keep-alive", "te", "proxy-connection", "connection"}


@BACKENDS
async def test_no_route_is_404_with_kong_body(nursery: trio.Nursery, backend: str) -> None:
    svc = service(1)
    cfg = config(services=[svc], routes=[route(svc, paths=["/only"])])
    port, _ = await start_proxy(nursery, cfg, backend=backend)
    reply = await request(port, target="/other")
    assert reply.status == 404
    assert reply.json() == {"message": "no Route matched with those values"}
    assert reply.header("content-type") == "application/json; charset=utf-8"


async def test_route_without_service_is_503(nursery: trio.Nursery) -> None:
    port, _ = await start_proxy(nursery, config(routes=[route(None)]))
    reply = await request(port)
    assert reply.status == 503


async def test_https_only_route_426_and_redirect(nursery: trio.Nursery) -> None:
    svc = service(1)
    cfg = config(
        services=[svc],
        routes=[
            route(svc, paths=["/a"], protocols=["https"]),
            route(svc, paths=["/b"], protocols=["https"], https_redirect_status_code=301),
        ],
    )
    port, _ = await start_proxy(nursery, cfg)
    reply = await request(port, target="/a")
    assert reply.status == 426
    assert reply.json() == {"message": "Please use HTTPS protocol"}
    reply = await request(port, target="/b?q=1", headers=[("Host", "api.test")])
    assert reply.status == 301
    assert reply.header("location") == "https://api.test/b?q=1"


async def test_connect_failure_is_502(nursery: trio.Nursery) -> None:
    # a port that was just free: nothing listens there
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    dead = listener.socket.getsockname()[1]
    await listener.aclose()
    port, _ = await start_proxy(nursery, simple_config(dead, retries=1))
    reply = await request(port)
    assert reply.status == 502
    assert reply.json() == {"message": "An invalid response was received from the upstream server"}


async def test_read_timeout_is_504(nursery: trio.Nursery) -> None:
    async def slow(req: h11.Request, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await trio.sleep(2)
        return 200, [], b"late"

    up = Upstream(slow)
    await nursery.start(up.serve)
    port, _ = await start_proxy(nursery, simple_config(up.port, read_timeout=100))
    with trio.fail_after(2):
        reply = await request(port)
    assert reply.status == 504
    assert reply.json() == {"message": "The upstream server is timing out"}


async def test_upstream_closing_without_response_is_502_and_not_retried_for_post(
    nursery: trio.Nursery,
) -> None:
    async def hang_up(req: h11.Request, body: bytes) -> None:
        return None

    up = Upstream(hang_up)
    await nursery.start(up.serve)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    reply = await request(port, "POST", "/", body=b"data")
    assert reply.status == 502
    assert up.requests == 1


async def test_no_healthy_target_is_503(nursery: trio.Nursery) -> None:
    upstream = {"id": "u1", "name": "backend.upstream", "algorithm": "round-robin", "slots": 10000}
    svc = service(80, host="backend.upstream")
    cfg = config(services=[svc], routes=[route(svc)], upstreams=[upstream], targets=[])
    port, _ = await start_proxy(nursery, cfg)
    reply = await request(port)
    assert reply.status == 503
    assert reply.json() == {"message": "failure to get a peer from the ring-balancer"}


async def test_balancer_retries_next_target_on_connect_failure(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    dead = listener.socket.getsockname()[1]
    await listener.aclose()
    upstream = {"id": "u1", "name": "lb", "algorithm": "round-robin", "slots": 10000}
    targets = [
        {"id": "t1", "upstream": {"id": "u1"}, "target": f"127.0.0.1:{dead}", "weight": 100},
        {"id": "t2", "upstream": {"id": "u1"}, "target": f"127.0.0.1:{up.port}", "weight": 100},
    ]
    svc = service(80, host="lb")
    cfg = config(services=[svc], routes=[route(svc)], upstreams=[upstream], targets=targets)
    port, _ = await start_proxy(nursery, cfg)
    for _ in range(4):
        assert (await request(port)).status == 200


@BACKENDS
async def test_keep_alive_to_client_and_pooled_upstream(
    nursery: trio.Nursery, backend: str
) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port), backend=backend)
    client = await Client.open(port)
    for i in range(20):
        reply = await client.request("GET", f"/{i}")
        assert reply.status == 200
    await client.aclose()
    assert up.requests == 20
    assert up.connections == 1


async def test_stale_pooled_connection_is_retried_for_idempotent_requests(
    nursery: trio.Nursery,
) -> None:
    # the upstream promises keep-alive but closes right after each response
    up = Upstream(close_after_response=True)
    await nursery.start(up.serve)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    client = await Client.open(port)
    for _ in range(5):
        assert (await client.request("GET", "/")).status == 200
    await client.aclose()
    assert up.requests == 5


async def test_pool_max_requests_limits_reuse(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port), pool_max_requests=5)
    client = await Client.open(port)
    for _ in range(10):
        assert (await client.request()).status == 200
    await client.aclose()
    assert up.connections == 2


async def test_pool_size_zero_disables_keepalive(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port), pool_size=0)
    client = await Client.open(port)
    for _ in range(3):
        assert (await client.request()).status == 200
    await client.aclose()
    assert up.connections == 3


@BACKENDS
async def test_pipelined_requests(nursery: trio.Nursery, backend: str) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port), backend=backend)
    raw = await raw_exchange(
        port,
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    assert raw.index(b'"/1"') < raw.index(b'"/2"') < raw.index(b'"/3"')


@BACKENDS
async def test_chunked_upload_and_large_bodies_stream(nursery: trio.Nursery, backend: str) -> None:
    async def sized(req: h11.Request, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 200, [(b"x-received", b"%d" % len(body))], b"z" * 3_000_000

    up = Upstream(sized)
    await nursery.start(up.serve)
    port, _ = await start_proxy(nursery, simple_config(up.port), backend=backend)
    client = await Client.open(port)
    payload = b"y" * 2_000_000
    reply = await client.request(
        "POST", "/", headers=[("Transfer-Encoding", "chunked")], body=payload
    )
    assert reply.status == 200
    assert reply.header("x-received") == str(len(payload))
    assert len(reply.body) == 3_000_000
    await client.aclose()


async def test_chunked_response_passes_as_chunked(nursery: trio.Nursery) -> None:
    async def chunky(req: h11.Request, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 200, [(b"transfer-encoding", b"chunked")], b"hello chunks"

    up = Upstream(chunky)
    await nursery.start(up.serve)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    raw = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert b"transfer-encoding: chunked" in raw.lower()
    assert b"hello chunks" in raw
    raw10 = await raw_exchange(port, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
    assert raw10.endswith(b"\r\n\r\nhello chunks")  # close-delimited for HTTP/1.0


@BACKENDS
async def test_expect_100_continue(nursery: trio.Nursery, backend: str) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port), backend=backend)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    with trio.fail_after(5):
        got = await stream.receive_some(1000)
    assert got == b"HTTP/1.1 100 Continue\r\n\r\n"
    await stream.send_all(b"hello")
    data = b""
    with trio.fail_after(5):
        while b'"body": "hello"' not in data:
            data += await stream.receive_some(65536)
    assert data.startswith(b"HTTP/1.1 200 OK")
    await stream.aclose()


@BACKENDS
@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(101))
            + b"\r\n",
            431,
        ),
    ],
    ids=["cl-te", "http2", "absolute", "obs-fold", "bare-lf", "dup-cl", "431", "414", "headers"],
)
async def test_bad_requests_are_refused_and_never_reach_upstream(
    nursery: trio.Nursery, backend: str, raw: bytes, status: int
) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port), backend=backend)
    answer = await raw_exchange(port, raw)
    assert status_of(answer) == status
    assert b"connection: close" in answer.lower()
    assert up.requests == 0


async def test_client_max_body_size_413(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port), client_max_body_size=10)
    reply = await request(port, "POST", "/", body=b"x" * 11)
    assert reply.status == 413
    raw = await raw_exchange(
        port,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"b\r\nxxxxxxxxxxx\r\n0\r\n\r\n",
    )
    assert status_of(raw) == 413


async def test_head_request_keeps_content_length(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    raw = await raw_exchange(port, b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-length:" in head.lower()
    assert body == b""


async def test_curl_sees_the_proxy_like_a_client(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    result = await trio.run_process(
        [
            "curl",
            "-sS",
            "-i",
            "--data-binary",
            "@-",
            "-H",
            "Expect:",
            f"http://127.0.0.1:{port}/curl",
        ],
        stdin=b"from curl",
        capture_stdout=True,
        check=True,
    )
    out = result.stdout
    assert out.startswith(b"HTTP/1.1 200 OK")
    body = json.loads(out.partition(b"\r\n\r\n")[2])
    assert body["body"] == "from curl"
    assert body["target"] == "/curl"


async def test_curl_with_100_continue_and_chunked(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    port, _ = await start_proxy(nursery, simple_config(up.port))
    result = await trio.run_process(
        [
            "curl",
            "-sS",
            "--data-binary",
            "@-",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect: 100-continue",
            f"http://127.0.0.1:{port}/",
        ],
        stdin=b"q" * 100_000,
        capture_stdout=True,
        check=True,
    )
    assert len(json.loads(result.stdout)["body"]) == 100_000


async def test_websocket_upgrade_passthrough(nursery: trio.Nursery) -> None:
    async def ws_upstream(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(4096)
        assert b"upgrade: websocket" in data.lower()
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        while True:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            await stream.send_all(b"echo:" + chunk)
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    up_port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, ws_upstream, listeners)
    svc = service(up_port, protocol="http")
    cfg = config(services=[svc], routes=[route(svc, protocols=["ws", "wss"], paths=["/ws"])])
    port, _ = await start_proxy(nursery, cfg)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(4096)
    assert data.startswith(b"HTTP/1.1 101")
    await stream.send_all(b"frame-1")
    with trio.fail_after(5):
        got = await stream.receive_some(4096)
    assert got == b"echo:frame-1"
    await stream.aclose()
    # a plain http request does not match the ws-only route
    assert (await request(port, target="/ws")).status == 404


def tagged(name: str) -> Upstream:
    """An echo upstream that signs its answers (``x-upstream: <name>``)."""

    async def handler(req: h11.Request, body: bytes) -> tuple[int, HeaderPairs, bytes]:
        status, headers, content = await echo(req, body)
        return status, [*headers, (b"x-upstream", name.encode())], content

    return Upstream(handler)


def versioned_config(version: int, a: Upstream, b: Upstream) -> dict[str, Any]:
    """Version ``version``: odd versions go to ``a``, even ones to ``b``, under ``/v<n>``;
    the response carries ``x-config: <n>`` (a plugin of that version adds it)."""
    svc = service((a if version % 2 else b).port, path=f"/v{version}")
    tag = plugin("response-transformer", {"add": {"headers": [f"x-config:{version}"]}})
    return validate_config(config(services=[svc], routes=[route(svc)], plugins=[tag]))


def compiled_version(version: int, a: Upstream, b: Upstream) -> CompiledConfig:
    return compile_config(versioned_config(version, a, b), version=version)


@pytest.mark.slow
async def test_config_swaps_under_load_fail_no_request(nursery: trio.Nursery) -> None:
    a, b = tagged("a"), tagged("b")
    await nursery.start(a.serve)
    await nursery.start(b.serve)
    port, state = await start_proxy(nursery, versioned_config(1, a, b))
    last = 40
    failures: list[Any] = []
    seen: set[int] = set()
    per_client: list[int] = []
    swapping_done = trio.Event()

    async def client_loop() -> None:
        client = await Client.open(port)
        count = 0
        previous = 0
        while not swapping_done.is_set() or count < 10:
            reply = await client.request("GET", "/x")
            count += 1
            if reply.status != 200:
                failures.append(reply.status)
                continue
            # each answer is wholly one version: its upstream, its path, its plugin
            target = reply.json()["target"]
            version = int(target.split("/")[1][1:])
            expected = ("a" if version % 2 else "b", f"/v{version}/x", str(version))
            got = (reply.header("x-upstream"), target, reply.header("x-config"))
            if got != expected or version < previous:
                failures.append((previous, got))
            previous = version
            seen.add(version)
        per_client.append(count)
        await client.aclose()

    async def swapper() -> None:
        for version in range(2, last + 1):
            compiled = await trio.to_thread.run_sync(compiled_version, version, a, b)
            state.swap(compiled)
            # the next version only once a request has run on this one
            with trio.fail_after(5):
                while version not in seen:
                    await trio.sleep(0.001)
        swapping_done.set()

    async with trio.open_nursery() as load:
        for _ in range(8):
            load.start_soon(client_loop)
        load.start_soon(swapper)
    assert failures == []
    assert seen == set(range(1, last + 1)) or seen == set(range(2, last + 1))
    assert len(per_client) == 8
    assert min(per_client) >= 10
    assert a.requests + b.requests == sum(per_client)
    assert a.requests > 0
    assert b.requests > 0
    assert state.current.version == last


async def test_a_request_in_flight_finishes_on_its_config(nursery: trio.Nursery) -> None:
    arrived, release = trio.Event(), trio.Event()

    async def slow(req: h11.Request, body: bytes) -> tuple[int, HeaderPairs, bytes]:
        arrived.set()
        await release.wait()
        status, headers, content = await echo(req, body)
        return status, [*headers, (b"x-upstream", b"a")], content

    a, b = Upstream(slow), tagged("b")
    await nursery.start(a.serve)
    await nursery.start(b.serve)
    port, state = await start_proxy(nursery, versioned_config(1, a, b))
    first = await Client.open(port)
    replies: list[Reply] = []

    async def in_flight() -> None:
        replies.append(await first.request("GET", "/slow"))

    async with trio.open_nursery() as inner:
        inner.start_soon(in_flight)
        with trio.fail_after(5):
            await arrived.wait()
        state.swap(compiled_version(2, a, b))
        # the new config serves new requests while the first one is still waiting
        now = await request(port, "GET", "/fast")
        assert (now.header("x-upstream"), now.json()["target"]) == ("b", "/v2/fast")
        assert now.header("x-config") == "2"
        assert replies == []
        release.set()
    # the first request ran on version 1 to its end: upstream, path, and the plugins of
    # its response (header_filter ran after the swap)
    (old,) = replies
    assert old.status == 200
    assert (old.header("x-upstream"), old.json()["target"]) == ("a", "/v1/slow")
    assert old.header("x-config") == "1"
    # the next request on the same connection is on version 2
    after = await first.request("GET", "/next")
    assert (after.header("x-upstream"), after.json()["target"]) == ("b", "/v2/next")
    assert after.header("x-config") == "2"
    await first.aclose()
    assert (a.requests, b.requests) == (1, 2)


async def test_connect_timeout_is_504() -> None:
    """An upstream whose accept queue is full drops new SYNs: the connect never completes
    (deterministic on loopback, unlike an unroutable address), so the service's
    ``connect_timeout`` fires."""
    full = stdlib_socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    up_port = full.getsockname()[1]
    fillers: list[stdlib_socket.socket] = []
    try:
        # Fill the accept queue until a connection attempt stays pending.
        for _ in range(16):
            s = stdlib_socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", up_port))
            fillers.append(s)
            _, writable, _ = select.select([], [s], [], 0.2)
            if not writable:
                break
        else:
            pytest.skip("the kernel accepted every connection (no SYN drop on overflow)")
        async with trio.open_nursery() as nursery:
            port, _ = await start_proxy(
                nursery, simple_config(up_port, connect_timeout=200, retries=0)
            )
            with trio.fail_after(5):
                reply = await request(port)
            assert reply.status == 504
            assert reply.json() == {"message": "The upstream server is timing out"}
            nursery.cancel_scope.cancel()
    finally:
        for s in fillers:
            s.close()
        full.close()


async def test_write_timeout_is_504(nursery: trio.Nursery) -> None:
    """An upstream that stops reading: once the socket buffers are full, the proxy's writes
    stall and the service's ``write_timeout`` fires."""
    stalled: list[trio.SocketStream] = []

    async def never_read(stream: trio.SocketStream) -> None:
        stalled.append(stream)  # keep it open, read nothing
        await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, never_read, listeners)
    up_port = listeners[0].socket.getsockname()[1]
    port, _ = await start_proxy(
        nursery, simple_config(up_port, write_timeout=200, read_timeout=60000, retries=0)
    )
    size = 256 * 1024 * 1024  # far more than loopback socket buffers hold
    client = await trio.open_tcp_stream("127.0.0.1", port)
    head = f"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n".encode()
    received = bytearray()

    async def upload() -> None:
        chunk = b"x" * 65536
        try:
            await client.send_all(head)
            for _ in range(size // len(chunk)):
                await client.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the proxy answered and closed

    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            inner.start_soon(upload)
            # The proxy answers 504 and closes (the request body was not read to its end).
            while data := await client.receive_some(65536):
                received += data
            inner.cancel_scope.cancel()
    await client.aclose()
    assert status_of(bytes(received)) == 504
    assert b"The upstream server is timing out" in received
