from __future__ import annotations

import json
from typing import Any

import pytest
from plugin_harness import Entities, make_ctx, make_plugin, respond, run_access

from gateway.plugins import available_plugins, plugin_versions
from gateway.plugins.bundled import rate_limiting

CONSUMER = {"id": "c1", "username": "alice", "custom_id": None}
CRED = {"id": "k1", "key": "secret", "consumer": {"id": "c1"}, "ttl": None, "created_at": 1}
ENTITIES = Entities(consumers=[CONSUMER], keyauth_credentials=[CRED])


def test_bundled_plugins_are_registered_with_versions() -> None:
    names = set(available_plugins())
    assert {
        "key-auth",
        "rate-limiting",
        "request-transformer",
        "response-transformer",
        "cors",
        "ip-restriction",
        "correlation-id",
        "request-size-limiting",
    } <= names
    assert all(v for v in plugin_versions().values())


# -- key-auth ---------------------------------------------------------------------------------


async def test_key_auth_missing_key_is_401_with_challenge() -> None:
    exit_ = await run_access(make_plugin("key-auth"), make_ctx(entities=ENTITIES))
    assert exit_ is not None
    assert exit_.status == 401
    assert exit_.body == {"message": "No API key found in request"}
    assert exit_.headers.get("www-authenticate", "").startswith("Key realm=")


async def test_key_auth_invalid_key_is_401_unauthorized() -> None:
    ctx = make_ctx(headers={"apikey": "nope"}, entities=ENTITIES)
    exit_ = await run_access(make_plugin("key-auth"), ctx)
    assert exit_ is not None
    assert (exit_.status, exit_.body) == (401, {"message": "Unauthorized"})


async def test_key_auth_header_key_authenticates_and_sets_consumer_headers() -> None:
    ctx = make_ctx(headers={"apikey": "secret"}, entities=ENTITIES)
    assert await run_access(make_plugin("key-auth"), ctx) is None
    assert ctx.consumer == CONSUMER
    assert ctx.service_request.headers.get("x-consumer-id") == "c1"
    assert ctx.service_request.headers.get("x-consumer-username") == "alice"
    assert ctx.service_request.headers.get("x-credential-identifier") == "k1"
    assert ctx.service_request.headers.get("apikey") == "secret"


async def test_key_auth_hide_credentials_removes_header_and_query() -> None:
    plugin = make_plugin("key-auth", {"hide_credentials": True, "key_names": ["x-key"]})
    ctx = make_ctx(headers={"x-key": "secret"}, entities=ENTITIES)
    assert await run_access(plugin, ctx) is None
    assert "x-key" not in ctx.service_request.headers
    ctx = make_ctx(query=[("x-key", "secret"), ("a", "1")], entities=ENTITIES)
    assert await run_access(plugin, ctx) is None
    assert ctx.service_request.query == [("a", "1")]


async def test_key_auth_query_disabled() -> None:
    plugin = make_plugin("key-auth", {"key_in_query": False})
    exit_ = await run_access(plugin, make_ctx(query=[("apikey", "secret")], entities=ENTITIES))
    assert exit_ is not None
    assert exit_.status == 401


async def test_key_auth_body_key() -> None:
    plugin = make_plugin("key-auth", {"key_in_body": True, "hide_credentials": True})
    ctx = make_ctx(
        method="POST",
        headers={"content-type": "application/json"},
        body=b'{"apikey": "secret", "x": 1}',
        entities=ENTITIES,
    )
    assert await run_access(plugin, ctx) is None
    assert ctx.consumer == CONSUMER
    assert json.loads(ctx.service_request.body or b"") == {"x": 1}


async def test_key_auth_anonymous_consumer() -> None:
    anon = {"id": "anon", "username": "anonymous", "custom_id": None}
    entities = Entities(consumers=[CONSUMER, anon], keyauth_credentials=[CRED])
    plugin = make_plugin("key-auth", {"anonymous": "anonymous"})
    ctx = make_ctx(entities=entities)
    assert await run_access(plugin, ctx) is None
    assert ctx.consumer == anon
    assert ctx.service_request.headers.get("x-anonymous-consumer") == "true"


async def test_key_auth_logical_or_skips_only_after_a_real_credential() -> None:
    anon = {"id": "anon", "username": "anonymous", "custom_id": None}
    entities = Entities(consumers=[CONSUMER, anon], keyauth_credentials=[CRED])
    plugin = make_plugin("key-auth", {"anonymous": "anonymous"})
    # an earlier auth plugin fell back to the anonymous consumer: the key still counts
    ctx = make_ctx(headers={"apikey": "secret"}, entities=entities)
    ctx.authenticate(anon, None)
    assert await run_access(plugin, ctx) is None
    assert ctx.consumer == CONSUMER
    assert ctx.credential == CRED
    # an earlier plugin authenticated with a credential: key-auth has nothing to do
    other = {"id": "other-cred"}
    ctx = make_ctx(entities=entities)
    ctx.authenticate(CONSUMER, other)
    assert await run_access(plugin, ctx) is None
    assert ctx.credential == other


async def test_key_auth_unknown_anonymous_is_500() -> None:
    plugin = make_plugin("key-auth", {"anonymous": "ghost"})
    exit_ = await run_access(plugin, make_ctx(entities=ENTITIES))
    assert exit_ is not None
    assert exit_.status == 500


async def test_key_auth_expired_credential() -> None:
    cred = {**CRED, "ttl": 10, "created_at": 100}
    entities = Entities(consumers=[CONSUMER], keyauth_credentials=[cred])
    ctx = make_ctx(headers={"apikey": "secret"}, entities=entities, now=111)
    exit_ = await run_access(make_plugin("key-auth"), ctx)
    assert exit_ is not None
    assert exit_.status == 401


async def test_key_auth_preflight_skipped_when_configured() -> None:
    plugin = make_plugin("key-auth", {"run_on_preflight": False})
    assert await run_access(plugin, make_ctx(method="OPTIONS", entities=ENTITIES)) is None


# -- rate-limiting ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    rate_limiting.COUNTERS.clear()


def test_rate_limiting_schema_rules() -> None:
    cls = available_plugins()["rate-limiting"]
    _, errors = cls.config_schema.validate({})
    assert "at least one of these fields must be non-empty" in str(errors)
    _, errors = cls.config_schema.validate({"second": 10, "minute": 5})
    assert "cannot be lower than the limit for second" in str(errors)


def test_unsupported_policies_are_refused() -> None:
    cls = available_plugins()["rate-limiting"]
    _, errors = cls.config_schema.validate({"minute": 5, "policy": "redis"})
    assert errors is not None
    assert "not supported" in str(errors)


async def test_rate_limiting_counts_and_refuses_with_kong_headers() -> None:
    plugin = make_plugin("rate-limiting", {"minute": 2, "hour": 10})
    now = 1_700_000_010.0
    for expected_remaining in ("1", "0"):
        ctx = make_ctx(now=now)
        assert await run_access(plugin, ctx) is None
        resp = respond(plugin, ctx)
        assert resp.headers.get("x-ratelimit-limit-minute") == "2"
        assert resp.headers.get("x-ratelimit-remaining-minute") == expected_remaining
        assert resp.headers.get("ratelimit-limit") == "2"
        assert resp.headers.get("ratelimit-remaining") == expected_remaining
        assert resp.headers.get("ratelimit-reset") == "30"
    exit_ = await run_access(plugin, make_ctx(now=now))
    assert exit_ is not None
    assert exit_.status == 429
    assert exit_.body == {"message": "API rate limit exceeded"}
    assert exit_.headers.get("retry-after") == "30"
    # A new minute window opens.
    assert await run_access(plugin, make_ctx(now=now + 60)) is None


async def test_rate_limiting_by_ip_separates_clients() -> None:
    plugin = make_plugin("rate-limiting", {"second": 1, "limit_by": "ip"})
    assert await run_access(plugin, make_ctx(client_ip="10.0.0.1")) is None
    assert await run_access(plugin, make_ctx(client_ip="10.0.0.2")) is None
    assert await run_access(plugin, make_ctx(client_ip="10.0.0.1")) is not None


async def test_rate_limiting_counters_survive_a_new_instance() -> None:
    first = make_plugin("rate-limiting", {"minute": 1}, plugin_id="same")
    assert await run_access(first, make_ctx()) is None
    second = make_plugin("rate-limiting", {"minute": 1}, plugin_id="same")
    assert await run_access(second, make_ctx()) is not None


async def test_rate_limiting_hide_client_headers() -> None:
    plugin = make_plugin("rate-limiting", {"minute": 5, "hide_client_headers": True})
    ctx = make_ctx()
    assert await run_access(plugin, ctx) is None
    assert "x-ratelimit-limit-minute" not in respond(plugin, ctx).headers


def test_calendar_windows() -> None:
    t = 1_700_000_123.5  # 2023-11-14T22:15:23Z
    assert rate_limiting.period_start("minute", t) == 1_700_000_100
    assert rate_limiting.period_start("day", t) == 1_699_920_000
    assert rate_limiting.period_start("month", t) == 1_698_796_800  # 2023-11-01
    assert rate_limiting.period_end("month", 1_698_796_800) == 1_701_388_800  # 2023-12-01


# -- cors ---------------------------------------------------------------------------------------


async def test_cors_preflight_answered() -> None:
    plugin = make_plugin(
        "cors", {"origins": ["http://a.example"], "max_age": 3600, "credentials": True}
    )
    ctx = make_ctx(
        method="OPTIONS",
        headers={
            "origin": "http://a.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "x-foo",
        },
    )
    exit_ = await run_access(plugin, ctx)
    assert exit_ is not None
    assert exit_.status == 200
    h = exit_.headers
    assert h.get("access-control-allow-origin") == "http://a.example"
    assert h.get("access-control-allow-headers") == "x-foo"
    assert h.get("access-control-max-age") == "3600"
    assert h.get("access-control-allow-credentials") == "true"
    assert "POST" in (h.get("access-control-allow-methods") or "")


async def test_cors_regex_origin_and_unknown_origin() -> None:
    plugin = make_plugin("cors", {"origins": [r"https://.*\.example\.com"]})
    ctx = make_ctx(headers={"origin": "https://x.example.com"})
    assert await run_access(plugin, ctx) is None
    assert respond(plugin, ctx).headers.get("access-control-allow-origin") == (
        "https://x.example.com"
    )
    ctx = make_ctx(headers={"origin": "https://evil.test"})
    assert "access-control-allow-origin" not in respond(plugin, ctx).headers


async def test_cors_wildcard_default() -> None:
    plugin = make_plugin("cors", {"exposed_headers": ["x-a"]})
    ctx = make_ctx(headers={"origin": "http://any"})
    resp = respond(plugin, ctx)
    assert resp.headers.get("access-control-allow-origin") == "*"
    assert resp.headers.get("access-control-expose-headers") == "x-a"


# -- ip-restriction -------------------------------------------------------------------------


async def test_ip_restriction_allow_and_deny() -> None:
    plugin = make_plugin("ip-restriction", {"allow": ["10.0.0.0/8"], "deny": ["10.0.0.5"]})
    assert await run_access(plugin, make_ctx(client_ip="10.1.2.3")) is None
    denied = await run_access(plugin, make_ctx(client_ip="10.0.0.5"))
    assert denied is not None
    assert (denied.status, denied.body) == (403, {"message": "Your IP address is not allowed"})
    outside = await run_access(plugin, make_ctx(client_ip="192.168.1.1"))
    assert outside is not None


def test_ip_restriction_schema() -> None:
    cls = available_plugins()["ip-restriction"]
    assert cls.config_schema.validate({})[1] is not None
    _, errors = cls.config_schema.validate({"allow": ["not-an-ip"]})
    assert "invalid ip or cidr" in str(errors)


async def test_ip_restriction_custom_status_and_message() -> None:
    plugin = make_plugin("ip-restriction", {"deny": ["::1"], "status": 401, "message": "go"})
    exit_ = await run_access(plugin, make_ctx(client_ip="::1"))
    assert exit_ is not None
    assert (exit_.status, exit_.body) == (401, {"message": "go"})


# -- correlation-id -------------------------------------------------------------------------


async def test_correlation_id_generated_and_echoed() -> None:
    plugin = make_plugin("correlation-id", {"echo_downstream": True, "generator": "uuid"})
    ctx = make_ctx()
    await plugin.access(ctx)
    value = ctx.service_request.headers.get("kong-request-id")
    assert value
    assert len(value) == 36
    assert respond(plugin, ctx).headers.get("kong-request-id") == value


async def test_correlation_id_kept_when_present() -> None:
    plugin = make_plugin("correlation-id", {"header_name": "X-Id"})
    ctx = make_ctx(headers={"x-id": "abc"})
    await plugin.access(ctx)
    assert ctx.service_request.headers.get("x-id") == "abc"
    counter = make_plugin("correlation-id")
    ctx = make_ctx()
    await counter.access(ctx)
    assert "#" in (ctx.service_request.headers.get("kong-request-id") or "")


# -- request-size-limiting --------------------------------------------------------------------


async def test_request_size_limiting_content_length() -> None:
    plugin = make_plugin(
        "request-size-limiting", {"allowed_payload_size": 10, "size_unit": "bytes"}
    )
    exit_ = await run_access(plugin, make_ctx(method="POST", headers={"content-length": "11"}))
    assert exit_ is not None
    assert (exit_.status, exit_.body) == (413, {"message": "Request size limit exceeded"})
    assert await run_access(plugin, make_ctx(headers={"content-length": "10"})) is None


async def test_request_size_limiting_chunked_body() -> None:
    plugin = make_plugin(
        "request-size-limiting", {"allowed_payload_size": 1, "size_unit": "kilobytes"}
    )
    chunked = {"transfer-encoding": "chunked"}
    exit_ = await run_access(plugin, make_ctx(headers=chunked, body=b"x" * 1025))
    assert exit_ is not None
    assert exit_.status == 413
    ctx = make_ctx(headers=chunked, body=b"x" * 1024)
    assert await run_access(plugin, ctx) is None
    assert ctx.service_request.body == b"x" * 1024


async def test_request_size_limiting_requires_length() -> None:
    plugin = make_plugin("request-size-limiting", {"require_content_length": True})
    exit_ = await run_access(plugin, make_ctx(headers={"transfer-encoding": "chunked"}))
    assert exit_ is not None
    assert exit_.status == 411


# -- transformers -----------------------------------------------------------------------------


async def test_request_transformer_headers_query_uri_method() -> None:
    plugin = make_plugin(
        "request-transformer",
        {
            "http_method": "POST",
            "remove": {"headers": ["x-drop"], "querystring": ["q1"]},
            "rename": {"headers": ["x-old:x-new"]},
            "replace": {"headers": ["x-rep:new"], "uri": "/v2/$(uri_captures.id)"},
            "add": {"headers": ["x-add:$(headers.x-src)"], "querystring": ["q2:v2"]},
            "append": {"headers": ["x-app:1"], "querystring": ["q3:v3"]},
        },
    )
    ctx = make_ctx(
        headers={"x-drop": "1", "x-old": "o", "x-rep": "r", "x-src": "S", "x-app": "0"},
        query=[("q1", "a"), ("keep", "b")],
    )
    ctx.shared["uri_captures"] = {"id": "42"}
    await plugin.access(ctx)
    h = ctx.service_request.headers
    assert "x-drop" not in h
    assert h.get("x-new") == "o"
    assert "x-old" not in h
    assert h.get("x-rep") == "new"
    assert h.get("x-add") == "S"
    assert h.get_all("x-app") == ["0", "1"]
    assert ctx.service_request.query == [("keep", "b"), ("q2", "v2"), ("q3", "v3")]
    assert ctx.service_request.path == "/v2/42"
    assert ctx.service_request.method == "POST"


@pytest.mark.parametrize(
    ("conf", "sent", "client_host_kept"),
    [
        # Kong's request-transformer: replace of host always sets it (the upstream Host)
        ({"replace": {"headers": ["host:backend.test"]}}, b"backend.test", False),
        ({"replace": {"headers": ["Host:$(headers.x-to)"]}}, b"to.test", False),
        ({"append": {"headers": ["host:backend.test"]}}, b"backend.test", True),
        ({"rename": {"headers": ["x-to:host"]}}, b"to.test", True),
        # ... add, remove and rename of host do nothing
        ({"add": {"headers": ["host:backend.test"]}}, None, True),
        ({"remove": {"headers": ["host"]}}, None, True),
        ({"rename": {"headers": ["host:x-was"]}}, None, True),
        # replace after remove still sets it (the client's Host is not in Kong's table)
        (
            {"remove": {"headers": ["Host"]}, "replace": {"headers": ["host:backend.test"]}},
            b"backend.test",
            False,
        ),
    ],
)
async def test_request_transformer_host(
    conf: dict[str, Any], sent: bytes | None, client_host_kept: bool
) -> None:
    plugin = make_plugin("request-transformer", conf)
    ctx = make_ctx(headers={"host": "client.test", "x-to": "to.test"})
    await plugin.access(ctx)
    assert ctx.service_request.host == sent
    assert ("client.test" in ctx.service_request.headers.get_all("host")) is client_host_kept
    assert "x-was" not in ctx.service_request.headers


async def test_request_transformer_json_body() -> None:
    plugin = make_plugin(
        "request-transformer",
        {"remove": {"body": ["secret"]}, "add": {"body": ["added:yes"]}},
    )
    ctx = make_ctx(
        method="POST",
        headers={"content-type": "application/json"},
        body=b'{"secret": 1, "keep": 2}',
    )
    await plugin.access(ctx)
    assert json.loads(ctx.service_request.body or b"") == {"keep": 2, "added": "yes"}


async def test_response_transformer_headers_and_json() -> None:
    plugin = make_plugin(
        "response-transformer",
        {
            "remove": {"headers": ["x-internal"], "json": ["password"]},
            "add": {
                "headers": ["x-added:1"],
                "json": ["n:5", "b:true"],
                "json_types": ["number", "boolean"],
            },
        },
    )
    ctx = make_ctx()
    resp = respond(
        plugin,
        ctx,
        headers={"x-internal": "1", "content-type": "application/json", "content-length": "40"},
    )
    assert "x-internal" not in resp.headers
    assert resp.headers.get("x-added") == "1"
    assert "content-length" not in resp.headers
    out = plugin.body_filter(ctx, b'{"password": "x", ', False)
    assert out == b""
    out = plugin.body_filter(ctx, b'"user": "u"}', True)
    assert json.loads(out) == {"user": "u", "n": 5, "b": True}


async def test_response_transformer_leaves_non_json_alone() -> None:
    plugin = make_plugin("response-transformer", {"remove": {"json": ["a"]}})
    ctx = make_ctx()
    respond(plugin, ctx, headers={"content-type": "text/plain"})
    assert plugin.body_filter(ctx, b"hello", True) == b"hello"
