"""The plugin pipeline: phases, priorities, Kong's scoping precedence, exits and failures."""

from __future__ import annotations

import gc
from typing import Any, ClassVar

import pytest
import trio
from proxy_support import (
    Upstream,
    config,
    plugin,
    request,
    route,
    service,
    start_proxy,
    uid,
)

import gateway.proxy._pipeline as pipeline
from gateway import ConfigError
from gateway.declarative import validate_config
from gateway.http import RequestHead
from gateway.plugins import Context, Headers, Plugin, ServiceRequest, get_plugin
from gateway.proxy import compile_config
from gateway.schema import Record

EVENTS: list[str] = []


class Recorder(Plugin):
    name = "test-recorder"
    version = "1.0.0"
    priority = 10
    config_schema: ClassVar[Record] = Record([])

    async def rewrite(self, ctx: Context) -> None:
        EVENTS.append("rewrite")
        ctx.service_request.headers.set("x-rewritten", "yes")

    async def access(self, ctx: Context) -> None:
        EVENTS.append("access")
        ctx.service_request.headers.set("x-accessed", "yes")

    def header_filter(self, ctx: Context) -> None:
        EVENTS.append("header_filter")
        assert ctx.response is not None
        ctx.response.headers.set("x-filtered", str(ctx.response.status))

    def body_filter(self, ctx: Context, chunk: bytes, eof: bool) -> bytes:
        if eof:
            EVENTS.append("body_filter-eof")
        return chunk.upper()

    def log(self, ctx: Context) -> None:
        EVENTS.append("log")


class Tag(Plugin):
    """Says which instance ran (precedence tests)."""

    name = "test-tag"
    version = "1.0.0"
    priority = 5
    config_schema: ClassVar[Record] = Record([])

    def header_filter(self, ctx: Context) -> None:
        assert ctx.response is not None
        ctx.response.headers.set("x-tag", self.config["tag"])


class Auth(Plugin):
    """A toy authentication plugin: ``apikey: <username>``."""

    name = "test-auth"
    version = "1.0.0"
    priority = 1250
    config_schema: ClassVar[Record] = Record([])

    async def access(self, ctx: Context) -> None:
        key = ctx.request.headers.get("apikey")
        consumer = ctx.entities.by_field("consumers", "username", key) if key else None
        if consumer is None:
            ctx.exit(401, {"message": "No API key found in request"}, {"www-authenticate": "Key"})
        ctx.authenticate(consumer, None)


class Boom(Plugin):
    name = "test-boom"
    version = "1.0.0"
    priority = 100
    config_schema: ClassVar[Record] = Record([])

    async def access(self, ctx: Context) -> None:
        if ctx.request.path == "/boom":
            raise RuntimeError("plugin bug")

    def header_filter(self, ctx: Context) -> None:
        if ctx.request.path == "/boom-late":
            raise RuntimeError("late plugin bug")


class ReadsBody(Plugin):
    name = "test-body"
    version = "1.0.0"
    priority = 900
    config_schema: ClassVar[Record] = Record([])

    async def access(self, ctx: Context) -> None:
        body = await ctx.read_body(int(self.config.get("limit", 10)))
        ctx.service_request.body = body[::-1]


class Inject(Plugin):
    """Tries to smuggle a header (CRLF in a value) into each message a plugin can change."""

    name = "test-inject"
    version = "1.0.0"
    priority = 50
    config_schema: ClassVar[Record] = Record([])

    async def access(self, ctx: Context) -> None:
        if ctx.request.path == "/request":
            ctx.service_request.headers.set("x-a", "1\r\nx-injected: yes")
        elif ctx.request.path == "/exit":
            ctx.exit(200, "hi", {"x-a": "1\r\nx-injected: yes"})

    def header_filter(self, ctx: Context) -> None:
        assert ctx.response is not None
        if ctx.request.path == "/response":
            ctx.response.headers.set("x-a", "1\r\nx-injected: yes")


TEST_PLUGINS: dict[str, type[Plugin]] = {
    cls.name: cls for cls in (Recorder, Tag, Auth, Boom, ReadsBody, Inject)
}


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    EVENTS.clear()
    monkeypatch.setattr(
        pipeline, "get_plugin", lambda name: TEST_PLUGINS.get(name) or get_plugin(name)
    )


async def start_echo(nursery: trio.Nursery) -> Upstream:
    up = Upstream()
    await nursery.start(up.serve)
    return up


async def test_phases_run_in_order(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    cfg = config(services=[svc], routes=[route(svc)], plugins=[plugin("test-recorder")])
    port, _ = await start_proxy(nursery, cfg)
    reply = await request(port)
    assert reply.status == 200
    assert reply.header("x-filtered") == "200"
    assert b'"X-REWRITTEN", "YES"' in reply.body  # body_filter upper-cased the echo
    assert b'"X-ACCESSED", "YES"' in reply.body
    assert reply.header("content-length") is None  # body filters force chunked framing
    assert EVENTS == ["rewrite", "access", "header_filter", "body_filter-eof", "log"]


async def test_rewrite_runs_only_for_global_plugins(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    r = route(svc)
    cfg = config(services=[svc], routes=[r], plugins=[plugin("test-recorder", route=r)])
    port, _ = await start_proxy(nursery, cfg)
    await request(port)
    assert EVENTS == ["access", "header_filter", "body_filter-eof", "log"]


async def test_exit_short_circuits_later_plugins(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    cfg = config(
        services=[svc],
        routes=[route(svc)],
        plugins=[plugin("test-auth"), plugin("test-recorder")],
        consumers=[],
    )
    port, _ = await start_proxy(nursery, cfg)
    reply = await request(port)
    assert reply.status == 401
    assert reply.json() == {"message": "No API key found in request"}
    assert reply.header("www-authenticate") == "Key"
    assert up.requests == 0
    # as Kong: plugins below the exiting one were never reached in access, so none of
    # their later phases run either (only the global rewrite had run)
    assert EVENTS == ["rewrite"]


async def test_plugin_exception_is_500_and_the_worker_survives(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    cfg = config(services=[svc], routes=[route(svc)], plugins=[plugin("test-boom")])
    port, _ = await start_proxy(nursery, cfg)
    reply = await request(port, target="/boom")
    assert reply.status == 500
    assert reply.json() == {"message": "An unexpected error occurred"}
    reply = await request(port, target="/boom-late")
    assert reply.status == 500
    assert (await request(port, target="/fine")).status == 200


async def test_a_plugin_cannot_inject_a_header(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    cfg = config(services=[svc], routes=[route(svc)], plugins=[plugin("test-inject")])
    port, _ = await start_proxy(nursery, cfg)
    for target in ("/request", "/exit", "/response"):
        reply = await request(port, target=target)
        assert reply.status == 500, target
        assert reply.header("x-injected") is None
        assert reply.json() == {"message": "An unexpected error occurred"}
    # only /response reached the upstream, without anything injected
    assert up.requests == 1
    reply = await request(port, target="/fine")
    assert reply.status == 200
    assert "x-injected" not in reply.json()["headers"]


async def test_plugin_reads_and_replaces_body_with_413_limit(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    cfg = config(services=[svc], routes=[route(svc)], plugins=[plugin("test-body", {"limit": 10})])
    port, _ = await start_proxy(nursery, cfg)
    reply = await request(port, "POST", "/", body=b"abc")
    assert reply.json()["body"] == "cba"
    reply = await request(port, "POST", "/", body=b"x" * 11)
    assert reply.status == 413


def _precedence_config(scopes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    svc = service(1)
    r = route(svc)
    alice = {"id": uid(), "username": "alice", "custom_id": None}
    entities = {"route": r, "service": svc, "consumer": alice}
    plugins = [plugin("test-auth")]
    for scope in scopes:
        parts = scope.split("+") if scope != "global" else []
        plugins.append(plugin("test-tag", {"tag": scope}, **{p: entities[p] for p in parts}))
    return config(services=[svc], routes=[r], plugins=plugins, consumers=[alice]), r


ORDER = [
    "route+service+consumer",
    "route+consumer",
    "service+consumer",
    "route+service",
    "consumer",
    "route",
    "service",
    "global",
]


@pytest.mark.parametrize("winner", range(len(ORDER)))
def test_precedence_follows_kong(winner: int) -> None:
    cfg, r = _precedence_config(ORDER[winner:])
    table = compile_config(cfg).plugins
    svc_id = r["service"]["id"]
    consumer_id = cfg["consumers"][0]["id"]
    found = table.resolve("test-tag", r["id"], svc_id, consumer_id)
    assert found is not None
    assert found.config["tag"] == ORDER[winner]


async def test_consumer_scoped_plugin_applies_after_authentication(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    cfg, _r = _precedence_config(["consumer", "route"])
    cfg["services"][0]["port"] = up.port
    port, _ = await start_proxy(nursery, cfg)
    assert (await request(port, headers=[("apikey", "alice")])).header("x-tag") == "consumer"
    assert (await request(port, headers=[("apikey", "nobody")])).status == 401


async def test_unknown_plugin_refuses_the_config() -> None:
    with pytest.raises(ConfigError, match="not-there"):
        compile_config(config(plugins=[plugin("not-there")]))


async def test_requests_with_plugins_leave_no_reference_cycles(nursery: trio.Nursery) -> None:
    # Objects of a proxied request must be freed by reference counting when it ends: a cycle
    # per request (the body reader closure once held the context) fills the collector's
    # young generation and costs ~7 % of the throughput plus multi-millisecond pauses.
    up = await start_echo(nursery)
    svc = service(up.port)
    cfg = config(
        services=[svc],
        routes=[route(svc)],
        plugins=[plugin("test-recorder"), plugin("test-body", {"limit": 100})],
    )
    port, _ = await start_proxy(nursery, cfg)
    assert (await request(port, "POST", "/", body=b"warm-up")).status == 200
    per_request = (Context, ServiceRequest, Headers, RequestHead)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            assert (await request(port, "POST", "/", body=b"abc")).status == 200
        gc.collect()
        leaked = [type(o).__name__ for o in gc.garbage if isinstance(o, per_request)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert leaked == []


async def test_a_config_swap_keeps_the_rate_limiting_counters(nursery: trio.Nursery) -> None:
    # the plugin's counters are keyed by the plugin entity's id: a new config version (any
    # change, as every sync brings) must not give clients a fresh allowance
    up = await start_echo(nursery)
    svc = service(up.port)
    r = route(svc)
    limiter = plugin("rate-limiting", {"minute": 2, "policy": "local"})
    cfg = config(services=[svc], routes=[r], plugins=[limiter])
    port, state = await start_proxy(nursery, validate_config(cfg))
    assert [(await request(port)).status for _ in range(2)] == [200, 200]
    other = service(up.port)
    state.swap(
        compile_config(
            validate_config(config(services=[svc, other], routes=[r], plugins=[limiter])),
            version=2,
        )
    )
    reply = await request(port)
    assert reply.status == 429
    assert reply.header("x-ratelimit-remaining-minute") == "0"
    # another instance (another id) with the same settings counts on its own
    fresh = plugin("rate-limiting", {"minute": 2, "policy": "local"})
    cfg = validate_config(config(services=[svc], routes=[r], plugins=[fresh]))
    state.swap(compile_config(cfg, version=3))
    assert (await request(port)).status == 200
