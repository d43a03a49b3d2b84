"""Load balancing through a real proxy: consistent hashing on each input, the hash cookie, and
passive health checks (the circuit breaker) fed by proxied traffic.

Every target is a real upstream on 127.0.0.1 that names itself in its responses, so a test
sees which target served each request. The ring depends on the targets' ports, which change
from run to run: the tests assert what holds for any ring (the same input always lands on the
same target; 60 different inputs reach each of 3 targets, which fails with probability about
3 * (2/3)^60 per test).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any

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

from gateway.plugins import get_plugin
from gateway.proxy import ProxyState
from gateway.schema.entities import ENTITIES

UPSTREAM = "lb.test"
SPREAD = 60  # distinct inputs per "spreads over the targets" check


class Target(Upstream):
    """An upstream that answers ``status`` with its own name in the body and a header."""

    def __init__(self, name: str, status: int = 200) -> None:
        super().__init__(self._answer)
        self.name = name
        self.status = status

    async def _answer(
        self, req: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        payload = {
            "target": self.name,
            "path": req.target.decode(),
            "headers": {k.decode(): v.decode() for k, v in req.headers},
        }
        headers = [(b"content-type", b"application/json"), (b"x-target", self.name.encode())]
        return self.status, headers, json.dumps(payload).encode()


async def start_targets(nursery: trio.Nursery, count: int = 3) -> list[Target]:
    targets = [Target(f"t{i}") for i in range(count)]
    for target in targets:
        await nursery.start(target.serve)
    return targets


async def dead_port() -> int:
    """A port that was just free: connecting to it is refused."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port: int = listener.socket.getsockname()[1]
    await listener.aclose()
    return port


def upstream_entity(**fields: Any) -> dict[str, Any]:
    return {**ENTITIES["upstreams"].defaults(), "id": uid(), "name": UPSTREAM, **fields}


def balanced_config(
    ports: Iterable[int],
    upstream: dict[str, Any],
    *,
    route_fields: dict[str, Any] | None = None,
    **lists: Any,
) -> dict[str, Any]:
    targets = [
        {
            **ENTITIES["targets"].defaults(),
            "id": uid(),
            "upstream": {"id": upstream["id"]},
            "target": f"127.0.0.1:{port}",
        }
        for port in ports
    ]
    svc = service(80, host=UPSTREAM, retries=0)
    return config(
        services=[svc],
        routes=[route(svc, **(route_fields or {}))],
        upstreams=[upstream],
        targets=targets,
        **lists,
    )


def hashing(hash_on: str, **fields: Any) -> dict[str, Any]:
    return upstream_entity(algorithm="consistent-hashing", hash_on=hash_on, **fields)


def served_by(reply: Reply) -> str:
    assert reply.status == 200, reply.body
    name = reply.header("x-target")
    assert name is not None
    return name


async def check_hashing(
    port: int,
    targets: list[Target],
    inputs: list[dict[str, Any]],
    *,
    repeat: int = 3,
) -> None:
    """Each input (keyword arguments of ``request``) lands on one target every time, on new
    and on kept-alive connections; the inputs together reach every target."""
    seen: dict[int, str] = {}
    for i, kw in enumerate(inputs):
        first = served_by(await request(port, **kw))
        client = await Client.open(port)
        try:
            for _ in range(repeat):
                assert served_by(await client.request(**kw)) == first, kw
        finally:
            await client.aclose()
        seen[i] = first
    assert set(seen.values()) == {t.name for t in targets}


# -- consistent hashing on each input ----------------------------------------------------------


async def test_hash_on_header(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    upstream = hashing("header", hash_on_header="X-Tenant")
    port, _ = await start_proxy(nursery, balanced_config((t.port for t in targets), upstream))
    inputs = [{"headers": [("X-Tenant", f"tenant-{i}")]} for i in range(SPREAD)]
    await check_hashing(port, targets, inputs)
    # the header name is matched whatever its case in the request
    a = served_by(await request(port, headers=[("x-tenant", "tenant-7")]))
    assert a == served_by(await request(port, headers=[("X-TENANT", "tenant-7")]))


async def test_hash_on_header_falls_back_to_query_arg(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    upstream = hashing(
        "header",
        hash_on_header="X-Tenant",
        hash_fallback="query_arg",
        hash_fallback_query_arg="tenant",
    )
    port, _ = await start_proxy(nursery, balanced_config((t.port for t in targets), upstream))
    inputs = [{"target": f"/?tenant={i}"} for i in range(SPREAD)]
    await check_hashing(port, targets, inputs)
    # the header, when present, wins over the fallback
    by_header = [served_by(await request(port, headers=[("X-Tenant", "x")])) for _ in range(3)]
    assert len(set(by_header)) == 1


async def test_hash_on_ip(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    port, _ = await start_proxy(nursery, balanced_config((t.port for t in targets), hashing("ip")))

    async def from_ip(ip: str) -> str:
        # a real client address: Linux routes all of 127.0.0.0/8 to the loopback interface
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=ip)
        client = Client(stream)
        try:
            reply = await client.request(headers=[("X-Real-IP", "10.9.9.9")])
            assert json.loads(reply.body)["headers"]["x-real-ip"] == ip
            return served_by(reply)
        finally:
            await client.aclose()

    seen: dict[str, str] = {}
    for i in range(SPREAD):
        ip = f"127.0.{i // 200}.{2 + i % 200}"
        seen[ip] = await from_ip(ip)
        # an untrusted client's X-Real-IP (sent above) is not its address
        for _ in range(2):
            assert await from_ip(ip) == seen[ip]
    assert set(seen.values()) == {t.name for t in targets}


async def test_hash_on_ip_uses_the_real_ip_of_trusted_proxies(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    port, _ = await start_proxy(
        nursery,
        balanced_config((t.port for t in targets), hashing("ip")),
        trusted_ips=[ipaddress.ip_network("127.0.0.0/8")],
    )
    inputs = [{"headers": [("X-Real-IP", f"10.0.0.{i}")]} for i in range(SPREAD)]
    await check_hashing(port, targets, inputs)


async def test_hash_on_path(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    port, _ = await start_proxy(
        nursery, balanced_config((t.port for t in targets), hashing("path"))
    )
    inputs = [{"target": f"/items/{i}"} for i in range(SPREAD)]
    await check_hashing(port, targets, inputs)
    # the query string is not part of the path
    a = served_by(await request(port, target="/items/3?x=1"))
    assert a == served_by(await request(port, target="/items/3?x=2"))


async def test_hash_on_query_arg(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    upstream = hashing("query_arg", hash_on_query_arg="user")
    port, _ = await start_proxy(nursery, balanced_config((t.port for t in targets), upstream))
    inputs = [{"target": f"/search?q=z&user=u{i}"} for i in range(SPREAD)]
    await check_hashing(port, targets, inputs)
    # a multi-valued argument is sorted before hashing: the order does not matter
    a = served_by(await request(port, target="/?user=b&user=a"))
    assert a == served_by(await request(port, target="/?user=a&user=b"))


async def same_target(client: Client, spellings: list[str]) -> str:
    """The target every spelling of one request lands on (asserted the same for all)."""
    first = served_by(await client.request(target=spellings[0]))
    for spelled in spellings[1:]:
        assert served_by(await client.request(target=spelled)) == first, spelled
    return first


async def test_hash_on_path_hashes_the_path_as_nginx_uri(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    port, _ = await start_proxy(
        nursery, balanced_config((t.port for t in targets), hashing("path"))
    )
    client = await Client.open(port)
    try:
        landed = {
            await same_target(
                client,
                [
                    f"/items/b{i}",
                    f"/items/%62{i}",  # an encoded unreserved character
                    f"/items//./x/../b{i}",  # dot segments, merged slashes
                    f"/items%2Fb{i}",  # every triplet is decoded, "/" too (nginx's $uri)
                    f"/items/b{i}?q=1",
                ],
            )
            for i in range(SPREAD)
        }
    finally:
        await client.aclose()
    assert landed == {t.name for t in targets}


async def test_hash_on_query_arg_hashes_the_decoded_value(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    upstream = hashing("query_arg", hash_on_query_arg="user id")
    port, _ = await start_proxy(nursery, balanced_config((t.port for t in targets), upstream))
    client = await Client.open(port)
    try:
        # as ngx.req.get_uri_args: names and values percent-decoded, "+" is a space
        landed = {
            await same_target(
                client,
                [
                    f"/?user+id=a+b{i}",
                    f"/?user%20id=a%20b{i}",
                    f"/?x=1&us%65r+id=%61+b{i}",
                ],
            )
            for i in range(SPREAD)
        }
        # an argument without "=" is hashed as "true"
        assert served_by(await client.request(target="/?user+id")) == served_by(
            await client.request(target="/?user+id=true")
        )
    finally:
        await client.aclose()
    assert landed == {t.name for t in targets}


@pytest.mark.parametrize(
    ("hash_on", "rename", "spelled"),
    [
        ("query_arg", {"querystring": ["uid:user"]}, ("/?user={}", "/?uid={}")),
        ("header", {"headers": ["x-uid:x-user"]}, ("x-user", "x-uid")),
    ],
)
async def test_hash_inputs_are_read_after_the_access_phase(
    nursery: trio.Nursery,
    hash_on: str,
    rename: dict[str, list[str]],
    spelled: tuple[str, str],
) -> None:
    targets = await start_targets(nursery)
    transformer = get_plugin("request-transformer")
    assert transformer is not None
    conf, errors = transformer.config_schema.validate({"rename": rename})
    assert errors is None
    upstream = hashing(hash_on, hash_on_query_arg="user", hash_on_header="x-user")
    cfg = balanced_config(
        (t.port for t in targets), upstream, plugins=[plugin("request-transformer", conf)]
    )
    port, _ = await start_proxy(nursery, cfg)

    def request_kw(spelling: str, value: str) -> dict[str, Any]:
        if hash_on == "header":
            return {"headers": [(spelling, value)]}
        return {"target": spelling.format(value)}

    # as Kong, which hashes nginx's request as the plugins left it: an input a plugin
    # renamed into place is hashed like the same input sent in place
    landed = set()
    for i in range(SPREAD):
        direct = served_by(await request(port, **request_kw(spelled[0], f"u{i}")))
        assert served_by(await request(port, **request_kw(spelled[1], f"u{i}"))) == direct
        landed.add(direct)
    assert landed == {t.name for t in targets}


async def test_hash_on_uri_capture(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    upstream = hashing("uri_capture", hash_on_uri_capture="account")
    cfg = balanced_config(
        (t.port for t in targets),
        upstream,
        route_fields={"paths": [r"~/accounts/(?<account>\w+)"], "strip_path": False},
    )
    port, _ = await start_proxy(nursery, cfg)
    inputs = [{"target": f"/accounts/a{i}/x"} for i in range(SPREAD)]
    await check_hashing(port, targets, inputs)
    # only the capture is hashed: the rest of the path does not move the request
    a = served_by(await request(port, target="/accounts/a5/one"))
    assert a == served_by(await request(port, target="/accounts/a5/two"))


async def test_hash_on_consumer_with_key_auth(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    consumers = [
        {**ENTITIES["consumers"].defaults(), "id": uid(), "username": f"user{i}"}
        for i in range(SPREAD)
    ]
    plugin_class = get_plugin("key-auth")
    assert plugin_class is not None
    key_auth_config, errors = plugin_class.config_schema.validate({})
    assert errors is None
    credentials = [
        {
            **ENTITIES["keyauth_credentials"].defaults(),
            "id": uid(),
            "key": f"key-{i}",
            "consumer": {"id": c["id"]},
        }
        for i, c in enumerate(consumers)
    ]
    cfg = balanced_config(
        (t.port for t in targets),
        hashing("consumer"),
        consumers=consumers,
        keyauth_credentials=credentials,
        plugins=[plugin("key-auth", key_auth_config)],
    )
    port, _ = await start_proxy(nursery, cfg)
    inputs = [{"headers": [("apikey", f"key-{i}")]} for i in range(SPREAD)]
    await check_hashing(port, targets, inputs)
    # the consumer is hashed, not the key: its key in the query lands on the same target
    a = served_by(await request(port, headers=[("apikey", "key-4")]))
    assert a == served_by(await request(port, target="/?apikey=key-4"))
    # the plugin still answers for requests without a key, before any target is chosen
    assert (await request(port)).status == 401


# -- the hash cookie ---------------------------------------------------------------------------


def cookie_pair(reply: Reply) -> tuple[str, str]:
    set_cookie = reply.header("set-cookie")
    assert set_cookie is not None
    pair = set_cookie.split(";", 1)[0]
    name, _, value = pair.partition("=")
    return name, value


@pytest.mark.parametrize("fallback", [False, True])
async def test_hash_cookie_is_set_then_sticks(nursery: trio.Nursery, fallback: bool) -> None:
    targets = await start_targets(nursery)
    if fallback:
        # Kong applies the cookie for hash_fallback = cookie too
        upstream = hashing(
            "header",
            hash_on_header="X-Tenant",
            hash_fallback="cookie",
            hash_on_cookie="sticky",
            hash_on_cookie_path="/app",
        )
    else:
        upstream = hashing("cookie", hash_on_cookie="sticky", hash_on_cookie_path="/app")
    port, _ = await start_proxy(nursery, balanced_config((t.port for t in targets), upstream))

    first = await request(port, target="/app/x")
    owner = served_by(first)
    set_cookie = first.header("set-cookie")
    assert set_cookie is not None
    name, value = cookie_pair(first)
    assert name == "sticky"
    assert len(value) == 36  # a UUID, as Kong
    assert set_cookie == f"sticky={value}; Path=/app; Same-Site=Lax; HttpOnly"
    # the upstream never sees the cookie the proxy made up
    assert "cookie" not in json.loads(first.body)["headers"]

    client = await Client.open(port)
    try:
        for i in range(10):
            reply = await client.request(
                target=f"/app/{i}", headers=[("Cookie", f"other=1; sticky={value}")]
            )
            assert served_by(reply) == owner
            assert reply.header("set-cookie") is None  # the client has it: none is sent
    finally:
        await client.aclose()

    # every new client gets its own cookie, and the cookies spread over the targets
    owners: dict[str, str] = {}
    for _ in range(SPREAD):
        reply = await request(port)
        owners[cookie_pair(reply)[1]] = served_by(reply)
    assert len(owners) == SPREAD
    assert set(owners.values()) == {t.name for t in targets}
    for cookie, target in list(owners.items())[:10]:
        reply = await request(port, headers=[("Cookie", f"sticky={cookie}")])
        assert served_by(reply) == target


async def test_hash_cookie_not_sent_when_the_header_is_the_input(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    upstream = hashing(
        "header", hash_on_header="X-Tenant", hash_fallback="cookie", hash_on_cookie="sticky"
    )
    port, _ = await start_proxy(nursery, balanced_config((t.port for t in targets), upstream))
    reply = await request(port, headers=[("X-Tenant", "a")])
    assert reply.status == 200
    assert reply.header("set-cookie") is None


async def test_hash_cookie_replaces_the_upstreams_cookie_of_that_name(
    nursery: trio.Nursery,
) -> None:
    async def sets_cookies(
        req: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = [(b"set-cookie", b"session=abc; Path=/"), (b"set-cookie", b"sticky=upstream")]
        return 200, headers, b"ok"

    up = Upstream(sets_cookies)
    await nursery.start(up.serve)
    upstream = hashing("cookie", hash_on_cookie="sticky")
    port, _ = await start_proxy(nursery, balanced_config([up.port], upstream))
    reply = await request(port)
    cookies = [v.decode() for k, v in reply.headers if k.lower() == b"set-cookie"]
    assert len(cookies) == 2
    assert cookies[0] == "session=abc; Path=/"
    assert cookies[1].startswith("sticky=")
    assert cookies[1] != "sticky=upstream"
    assert cookies[1].endswith("; Path=/; Same-Site=Lax; HttpOnly")


async def test_no_hash_cookie_on_a_response_the_proxy_made(nursery: trio.Nursery) -> None:
    # the only target refuses connections: the client gets our 502, without a cookie
    upstream = hashing("cookie", hash_on_cookie="sticky")
    port, _ = await start_proxy(nursery, balanced_config([await dead_port()], upstream))
    reply = await request(port)
    assert reply.status == 502
    assert reply.header("set-cookie") is None


# -- passive health checks ---------------------------------------------------------------------


def passive(**unhealthy: int) -> dict[str, Any]:
    checks = ENTITIES["upstreams"].defaults()["healthchecks"]
    checks["passive"]["unhealthy"].update(unhealthy)
    return checks


def health_of(state: ProxyState) -> dict[str, str]:
    balancer = state.current.balancers.get(UPSTREAM)
    assert balancer is not None
    return {item["target"]: item["health"] for item in balancer.health_snapshot()}


async def test_passive_checks_take_a_failing_target_out(nursery: trio.Nursery) -> None:
    good, bad = Target("good"), Target("bad", status=500)
    for target in (good, bad):
        await nursery.start(target.serve)
    upstream = upstream_entity(healthchecks=passive(http_failures=3))
    port, state = await start_proxy(nursery, balanced_config([bad.port, good.port], upstream))

    statuses = [(await request(port)).status for _ in range(6)]
    # round-robin alternates until the third 500: the client sees each 500 (no retry on an
    # HTTP status), then the circuit is open
    assert statuses.count(500) == 3
    assert bad.requests == 3
    assert health_of(state)[f"127.0.0.1:{bad.port}"] == "UNHEALTHY"
    assert health_of(state)[f"127.0.0.1:{good.port}"] == "HEALTHY"
    for _ in range(20):
        assert served_by(await request(port)) == "good"
    assert bad.requests == 3


async def test_passive_checks_count_consecutive_failures_only(nursery: trio.Nursery) -> None:
    # the bad target alternates 500 and 200: a success resets the failure counter, so a
    # threshold of 2 is never reached
    flaky = Target("flaky")
    answers = iter([500, 200] * 20)

    async def alternate(
        req: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return next(answers), [(b"x-target", b"flaky")], b""

    flaky.handler = alternate
    good = Target("good")
    for target in (flaky, good):
        await nursery.start(target.serve)
    upstream = upstream_entity(healthchecks=passive(http_failures=2))
    port, state = await start_proxy(nursery, balanced_config([flaky.port, good.port], upstream))
    for _ in range(16):
        await request(port)
    assert flaky.requests == 8
    assert health_of(state)[f"127.0.0.1:{flaky.port}"] == "HEALTHY"


async def test_passive_checks_take_a_refusing_target_out(nursery: trio.Nursery) -> None:
    good = Target("good")
    await nursery.start(good.serve)
    dead = await dead_port()
    upstream = upstream_entity(healthchecks=passive(tcp_failures=2))
    port, state = await start_proxy(nursery, balanced_config([dead, good.port], upstream))

    # retries = 0: each refused connection is the client's 502
    statuses = [(await request(port)).status for _ in range(4)]
    assert statuses.count(502) == 2
    assert health_of(state)[f"127.0.0.1:{dead}"] == "UNHEALTHY"
    for _ in range(20):
        assert served_by(await request(port)) == "good"


async def test_passive_checks_with_retries_hide_the_failures(nursery: trio.Nursery) -> None:
    good = Target("good")
    await nursery.start(good.serve)
    dead = await dead_port()
    upstream = upstream_entity(healthchecks=passive(tcp_failures=2))
    cfg = balanced_config([dead, good.port], upstream)
    cfg["services"][0]["retries"] = 5
    port, state = await start_proxy(nursery, cfg)
    for _ in range(10):
        assert served_by(await request(port)) == "good"
    assert health_of(state)[f"127.0.0.1:{dead}"] == "UNHEALTHY"


async def test_every_target_failing_is_503(nursery: trio.Nursery) -> None:
    bad = Target("bad", status=503)
    await nursery.start(bad.serve)
    upstream = upstream_entity(healthchecks=passive(http_failures=1))
    port, _ = await start_proxy(nursery, balanced_config([bad.port], upstream))
    assert (await request(port)).status == 503  # the target's own 503
    reply = await request(port)
    assert reply.status == 503
    assert reply.json() == {"message": "failure to get a peer from the ring-balancer"}
    assert bad.requests == 1


async def test_hashing_skips_a_target_the_circuit_breaker_opened(nursery: trio.Nursery) -> None:
    targets = await start_targets(nursery)
    upstream = hashing("header", hash_on_header="X-Tenant", healthchecks=passive(http_failures=1))
    port, state = await start_proxy(nursery, balanced_config((t.port for t in targets), upstream))
    owners = {
        i: served_by(await request(port, headers=[("X-Tenant", str(i))])) for i in range(SPREAD)
    }
    victim = next(t for t in targets if t.name == owners[0])
    victim.status = 500
    assert (await request(port, headers=[("X-Tenant", "0")])).status == 500
    assert health_of(state)[f"127.0.0.1:{victim.port}"] == "UNHEALTHY"
    for i, owner in owners.items():
        now = served_by(await request(port, headers=[("X-Tenant", str(i))]))
        if owner == victim.name:
            assert now != victim.name
        else:
            assert now == owner  # the others keep their target
