"""What the upstream receives and what a route without service answers, through a real proxy:
``preserve_host``, ``X-Forwarded-Prefix`` (Kong's rule: the prefix ``strip_path`` removed,
unless it is ``/``; a trusted client's own value is kept), and the serviceless 503."""

from __future__ import annotations

import ipaddress
from typing import Any

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

from gateway.plugins import get_plugin
from gateway.schema.entities import ENTITIES


async def start_echo(nursery: trio.Nursery) -> Upstream:
    up = Upstream()
    await nursery.start(up.serve)
    return up


async def upstream_view(
    port: int, target: str = "/", headers: list[tuple[str, str]] | None = None
) -> tuple[str, dict[str, str]]:
    """The request line's target and the headers the upstream (an echo) received."""
    reply = await request(port, target=target, headers=headers)
    assert reply.status == 200, reply.body
    seen = reply.json()
    return seen["target"], {k: v for k, v in seen["headers"]}


# -- preserve_host -----------------------------------------------------------------------------


@pytest.mark.parametrize("preserve", [True, False])
async def test_preserve_host(nursery: trio.Nursery, preserve: bool) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    cfg = config(services=[svc], routes=[route(svc, preserve_host=preserve)])
    port, _ = await start_proxy(nursery, cfg)
    _, headers = await upstream_view(port, headers=[("Host", "Api.Example.test:8000")])
    if preserve:
        assert headers["host"] == "Api.Example.test:8000"  # as the client sent it
    else:
        assert headers["host"] == f"127.0.0.1:{up.port}"
    # either way the client's host is in X-Forwarded-Host, without its port
    assert headers["x-forwarded-host"] == "Api.Example.test"


async def test_preserve_host_wins_over_the_upstream_host_header(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    upstream = {
        **ENTITIES["upstreams"].defaults(),
        "id": uid(),
        "name": "lb.test",
        "host_header": "backend.internal",
    }
    target = {
        **ENTITIES["targets"].defaults(),
        "id": uid(),
        "upstream": {"id": upstream["id"]},
        "target": f"127.0.0.1:{up.port}",
    }
    svc = service(80, host="lb.test")
    routes = [
        route(svc, paths=["/kept"], preserve_host=True),
        route(svc, paths=["/set"], preserve_host=False),
    ]
    cfg = config(services=[svc], routes=routes, upstreams=[upstream], targets=[target])
    port, _ = await start_proxy(nursery, cfg)
    _, headers = await upstream_view(port, "/kept", headers=[("Host", "client.test")])
    assert headers["host"] == "client.test"
    _, headers = await upstream_view(port, "/set", headers=[("Host", "client.test")])
    assert headers["host"] == f"backend.internal:{up.port}"


# -- X-Forwarded-Prefix --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "strip_path", "target", "upstream_target", "prefix"),
    [
        (["/api"], True, "/api/users?x=1", "/users?x=1", "/api"),
        (["/api/"], True, "/api/users", "/users", "/api/"),
        (["/api"], True, "/api", "/", "/api"),
        (["/api"], False, "/api/users", "/api/users", None),
        (["/"], True, "/users", "/users", None),  # the prefix "/" is not sent
        ([r"~/v\d+"], True, "/v2/items", "/items", "/v2"),  # a regex: what it matched
    ],
)
async def test_x_forwarded_prefix(
    nursery: trio.Nursery,
    paths: list[str],
    strip_path: bool,
    target: str,
    upstream_target: str,
    prefix: str | None,
) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    cfg = config(services=[svc], routes=[route(svc, paths=paths, strip_path=strip_path)])
    port, _ = await start_proxy(nursery, cfg)
    seen_target, headers = await upstream_view(port, target)
    assert seen_target == upstream_target
    assert headers.get("x-forwarded-prefix") == prefix
    assert headers["x-forwarded-path"] == target.partition("?")[0]  # the client's path


@pytest.mark.parametrize("trusted", [True, False])
async def test_x_forwarded_prefix_from_the_client(nursery: trio.Nursery, trusted: bool) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    routes = [
        route(svc, paths=["/api"], strip_path=True),
        route(svc, paths=["/plain"], strip_path=False),
    ]
    trusted_ips = [ipaddress.ip_network("127.0.0.0/8")] if trusted else []
    port, _ = await start_proxy(
        nursery, config(services=[svc], routes=routes), trusted_ips=trusted_ips
    )
    given = [("X-Forwarded-Prefix", "/edge")]
    _, headers = await upstream_view(port, "/api/x", headers=given)
    assert headers["x-forwarded-prefix"] == ("/edge" if trusted else "/api")
    _, headers = await upstream_view(port, "/plain/x", headers=given)
    assert headers.get("x-forwarded-prefix") == ("/edge" if trusted else None)


# -- a route without service ---------------------------------------------------------------------


async def test_route_without_service_is_503_with_kongs_body(nursery: trio.Nursery) -> None:
    port, _ = await start_proxy(nursery, config(routes=[route(None)]))
    for method in ("GET", "POST"):
        reply = await request(port, method, "/anything")
        assert reply.status == 503
        assert reply.json() == {"message": "no Service found with those values"}
        assert reply.header("content-type") == "application/json; charset=utf-8"
        assert reply.header("server") is not None
    head = await request(port, "HEAD", "/")
    assert head.status == 503
    assert head.body == b""


async def test_route_without_service_runs_its_plugins_first(nursery: trio.Nursery) -> None:
    # as Kong: the 503 comes after the access phase, so an authentication plugin on a
    # serviceless route answers first
    plugin_class = get_plugin("key-auth")
    assert plugin_class is not None
    key_auth_config, errors = plugin_class.config_schema.validate({})
    assert errors is None
    consumer: dict[str, Any] = {**ENTITIES["consumers"].defaults(), "id": uid(), "username": "a"}
    credential = {
        **ENTITIES["keyauth_credentials"].defaults(),
        "id": uid(),
        "key": "secret",
        "consumer": {"id": consumer["id"]},
    }
    serviceless = route(None)
    cfg = config(
        routes=[serviceless],
        consumers=[consumer],
        keyauth_credentials=[credential],
        plugins=[plugin("key-auth", key_auth_config, route=serviceless)],
    )
    port, _ = await start_proxy(nursery, cfg)
    reply = await request(port)
    assert reply.status == 401
    assert reply.json() == {"message": "No API key found in request"}
    reply = await request(port, headers=[("apikey", "secret")])
    assert reply.status == 503
    assert reply.json() == {"message": "no Service found with those values"}
