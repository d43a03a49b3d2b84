"""Balancer algorithms, hash input, passive health, threshold and config carry-over."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
import trio

from gateway import ConfigError
from gateway.proxy._balancer import (
    Balancer,
    Balancers,
    TargetAddress,
    hash_cookie_header,
    hash_key_for,
    parse_target,
    uri_args,
    xxhash32,
)

PASSIVE_BREAKER = {
    "active": {"healthy": {"interval": 0}, "unhealthy": {"interval": 0}},
    "passive": {
        "healthy": {"successes": 2},
        "unhealthy": {"tcp_failures": 2, "timeouts": 2, "http_failures": 3},
    },
}


def config(
    targets: dict[str, int],
    *,
    algorithm: str = "round-robin",
    healthchecks: dict[str, Any] | None = None,
    name: str = "up",
    **upstream: Any,
) -> dict[str, Any]:
    up: dict[str, Any] = {
        "id": f"id-{name}",
        "name": name,
        "algorithm": algorithm,
        "slots": 10000,
        "hash_on": "none",
        "hash_fallback": "none",
        **upstream,
    }
    if healthchecks is not None:
        up["healthchecks"] = healthchecks
    return {
        "upstreams": [up],
        "targets": [
            {"id": f"t-{t}", "upstream": {"id": up["id"]}, "target": t, "weight": w}
            for t, w in targets.items()
        ],
    }


def balancer(targets: dict[str, int], **kwargs: Any) -> Balancer:
    b = Balancers.build(config(targets, **kwargs)).get("up")
    assert b is not None
    return b


def is_up(b: Balancer) -> bool:
    return b.healthy


def pick(b: Balancer, key: str | None = None, **kwargs: Any) -> str:
    target = b.select(key, **kwargs)
    assert target is not None
    return target.name


# --- targets and hashing primitives --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("example.com:81", "example.com", 81),
        ("example.com", "example.com", 8000),
        ("10.0.0.1:9000", "10.0.0.1", 9000),
        ("[::1]:80", "::1", 80),
        ("[::1]", "::1", 8000),
        ("::1", "::1", 8000),
    ],
)
def test_parse_target(text: str, host: str, port: int) -> None:
    assert parse_target(text) == (host, port)


@pytest.mark.parametrize("text", ["", "host:", "host:0", "host:70000", "[::1", "[::1]x", ":80"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_target(text)


def test_target_name_brackets_ipv6() -> None:
    assert TargetAddress("::1", 80).name == "[::1]:80"
    assert TargetAddress("a", 1, 0).name == "a:1"


@pytest.mark.parametrize(
    ("host", "port", "hostname", "http", "https", "server_name"),
    [
        ("10.0.0.1", 8080, None, b"10.0.0.1:8080", b"10.0.0.1:8080", "10.0.0.1"),
        ("svc.local", 80, None, b"svc.local", b"svc.local:80", "svc.local"),
        ("svc.local", 443, None, b"svc.local:443", b"svc.local", "svc.local"),
        ("::1", 80, None, b"[::1]", b"[::1]:80", "::1"),
        ("10.0.0.1", 9000, "api.test", b"api.test:9000", b"api.test:9000", "api.test"),
        ("10.0.0.1", 443, "api.test", b"api.test:443", b"api.test", "api.test"),
        ("10.0.0.1", 80, "[::2]", b"[::2]", b"[::2]:80", "::2"),
    ],
)
def test_target_host_values_and_server_name(
    host: str,
    port: int,
    hostname: str | None,
    http: bytes,
    https: bytes,
    server_name: str,
) -> None:
    """Kong's set_host_header: the hostname, with the port unless the scheme's default."""
    target = (
        TargetAddress(host, port) if hostname is None else TargetAddress(host, port, 100, hostname)
    )
    assert target.host_values == (http, https)
    assert target.server_name == server_name
    # the derived values are not part of the target's identity
    assert target == TargetAddress(host, port)
    assert hash(target) == hash(TargetAddress(host, port))


def test_balancer_targets_are_named_by_the_upstream_host_header() -> None:
    named = balancer({"10.0.0.1:8080": 100, "svc.local:443": 100}, host_header="api.test")
    assert [(t.hostname, t.host_values) for t in named.targets] == [
        ("api.test", (b"api.test:8080", b"api.test:8080")),
        ("api.test", (b"api.test:443", b"api.test")),
    ]
    plain = balancer({"10.0.0.1:8080": 100, "svc.local:443": 100})
    assert [t.server_name for t in plain.targets] == ["10.0.0.1", "svc.local"]


def test_xxhash32_reference_vectors() -> None:
    assert xxhash32(b"") == 0x02CC5D05
    assert xxhash32(b"a") == 0x550D7456
    assert xxhash32(b"abc") == 0x32D153FF
    assert xxhash32(b"Nobody inspects the spammish repetition") == 0xE2293B2F


# --- round-robin ---------------------------------------------------------------------------------


def test_round_robin_is_smooth_like_nginx() -> None:
    b = balancer({"a:1": 5, "b:1": 1, "c:1": 1})
    assert "".join(pick(b)[0] for _ in range(14)) == "aabacaa" * 2


def test_round_robin_distribution_follows_weights() -> None:
    b = balancer({"a:1": 300, "b:1": 100, "c:1": 50, "off:1": 0})
    counts = Counter(pick(b) for _ in range(4500))
    assert counts == {"a:1": 3000, "b:1": 1000, "c:1": 500}


def test_round_robin_extreme_weights_are_scaled_but_all_served() -> None:
    b = balancer({"big:1": 65535, "small:1": 1})
    counts = Counter(pick(b) for _ in range(1025 * 3))
    assert counts["small:1"] == 3
    assert counts["big:1"] == 1025 * 3 - 3


def test_only_zero_weights_means_no_peer() -> None:
    b = balancer({"a:1": 0})
    assert b.select(None) is None
    assert not is_up(b)


def test_no_targets_means_no_peer() -> None:
    assert balancer({}).select(None) is None


def test_exclude_picks_another_target() -> None:
    b = balancer({"a:1": 1, "b:1": 1, "c:1": 1})
    first = b.select(None)
    assert first is not None
    for _ in range(20):
        assert b.select(None, exclude=[first]) != first


def test_exclude_of_every_target_falls_back_to_retrying() -> None:
    b = balancer({"only:1": 100})
    target = b.select(None)
    assert target is not None
    assert b.select(None, exclude=[target]) == target


# --- consistent-hashing --------------------------------------------------------------------------


def _owners(b: Balancer, keys: list[str]) -> dict[str, str]:
    return {k: pick(b, k) for k in keys}


KEYS = [f"user-{i}" for i in range(4000)]


def test_consistent_hashing_same_key_same_target() -> None:
    b = balancer({"a:1": 100, "b:1": 100, "c:1": 100}, algorithm="consistent-hashing")
    assert all(pick(b, "alice") == pick(b, "alice") for _ in range(10))
    again = balancer({"c:1": 100, "a:1": 100, "b:1": 100}, algorithm="consistent-hashing")
    assert _owners(b, KEYS[:500]) == _owners(again, KEYS[:500])  # config order is irrelevant


def test_consistent_hashing_spreads_keys_by_weight() -> None:
    b = balancer({"a:1": 200, "b:1": 100, "c:1": 100}, algorithm="consistent-hashing")
    counts = Counter(_owners(b, KEYS).values())
    assert 0.40 < counts["a:1"] / len(KEYS) < 0.60
    assert 0.17 < counts["b:1"] / len(KEYS) < 0.33
    assert 0.17 < counts["c:1"] / len(KEYS) < 0.33


def test_consistent_hashing_adding_a_target_moves_about_one_nth() -> None:
    four = {f"10.0.0.{i}:80": 100 for i in range(1, 5)}
    before = _owners(balancer(four, algorithm="consistent-hashing"), KEYS)
    after = _owners(balancer({**four, "10.0.0.5:80": 100}, algorithm="consistent-hashing"), KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert 0.10 < len(moved) / len(KEYS) < 0.30  # ideal: 1/5
    assert all(after[k] == "10.0.0.5:80" for k in moved)  # keys only move to the new one


def test_consistent_hashing_skips_unhealthy_without_moving_other_keys() -> None:
    b = balancer(
        {"a:1": 100, "b:1": 100, "c:1": 100},
        algorithm="consistent-hashing",
        healthchecks=PASSIVE_BREAKER,
    )
    before = _owners(b, KEYS)
    assert b.set_healthy("b:1", False)
    after = _owners(b, KEYS)
    assert "b:1" not in after.values()
    assert all(after[k] == before[k] for k in KEYS if before[k] != "b:1")
    assert b.set_healthy("b:1", True)
    assert _owners(b, KEYS) == before


def test_consistent_hashing_exclude_moves_key_for_retry() -> None:
    b = balancer({"a:1": 100, "b:1": 100}, algorithm="consistent-hashing")
    first = b.select("k")
    assert first is not None
    assert b.select("k", exclude=[first]) not in (first, None)


def test_consistent_hashing_without_key_round_robins() -> None:
    b = balancer({"a:1": 100, "b:1": 100}, algorithm="consistent-hashing")
    assert Counter(pick(b) for _ in range(10)) == {"a:1": 5, "b:1": 5}


def test_more_targets_than_slots_still_hash() -> None:
    targets = {f"10.0.{i // 250}.{i % 250}:80": 100 for i in range(300)}
    b = balancer(targets, algorithm="consistent-hashing", slots=1000)
    owners = _owners(b, KEYS)
    assert len(set(owners.values())) > 250
    assert owners == _owners(b, KEYS)


def test_small_slots_use_kongs_minimum_continuum() -> None:
    b = balancer({"a:1": 100, "b:1": 100}, algorithm="consistent-hashing", slots=10)
    assert set(_owners(b, KEYS[:200]).values()) == {"a:1", "b:1"}


# --- least-connections ---------------------------------------------------------------------------


def test_least_connections_balances_in_flight() -> None:
    b = balancer({"a:1": 100, "b:1": 100, "c:1": 100}, algorithm="least-connections")
    started = []
    for _ in range(30):
        t = b.select(None)
        assert t is not None
        b.connection_started(t)
        started.append(t)
    assert {t.name: b.in_flight(t) for t in b.targets} == {"a:1": 10, "b:1": 10, "c:1": 10}
    a = next(t for t in b.targets if t.name == "a:1")
    for _ in range(4):
        b.connection_finished(a)
    assert [pick(b) for _ in range(4)] == ["a:1"] * 4


def test_least_connections_is_weighted() -> None:
    b = balancer({"a:1": 200, "b:1": 100}, algorithm="least-connections")
    for _ in range(30):
        t = b.select(None)
        assert t is not None
        b.connection_started(t)
    assert {t.name: b.in_flight(t) for t in b.targets} == {"a:1": 20, "b:1": 10}


def test_least_connections_idle_ties_rotate() -> None:
    b = balancer({"a:1": 100, "b:1": 100, "c:1": 100}, algorithm="least-connections")
    assert sorted(pick(b) for _ in range(3)) == ["a:1", "b:1", "c:1"]


def test_least_connections_exclude() -> None:
    b = balancer({"a:1": 100, "b:1": 100, "c:1": 100}, algorithm="least-connections")
    a, bb, _ = b.targets
    assert pick(b, exclude=[a, bb]) == "c:1"


async def test_least_connections_concurrent_accounting(autojump_clock: Any) -> None:
    b = balancer({"a:1": 100, "b:1": 100, "c:1": 100, "d:1": 100}, algorithm="least-connections")
    rng = random.Random(7)
    peak: Counter[str] = Counter()

    async def request() -> None:
        t = b.select(None)
        assert t is not None
        assert b.in_flight(t) == min(b.in_flight(x) for x in b.targets)
        b.connection_started(t)
        peak[t.name] = max(peak[t.name], b.in_flight(t))
        await trio.sleep(rng.uniform(0.1, 2.0))
        b.connection_finished(t)

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(request)
            await trio.sleep(0.01)
    assert all(b.in_flight(t) == 0 for t in b.targets)
    assert max(peak.values()) - min(peak.values()) <= 2


def test_least_connections_accounting_survives_config_swap() -> None:
    old = Balancers.build(config({"a:1": 100, "b:1": 100}, algorithm="least-connections"))
    ob = old.get("up")
    assert ob is not None
    a = next(t for t in ob.targets if t.name == "a:1")
    for _ in range(3):
        ob.connection_started(a)
    new = Balancers.build(
        config({"a:1": 100, "b:1": 100, "c:1": 100}, algorithm="least-connections"), old
    )
    nb = new.get("up")
    assert nb is not None
    assert nb.in_flight(a) == 3
    assert sorted(pick(nb) for _ in range(2)) == ["b:1", "c:1"]
    for _ in range(3):
        ob.connection_finished(a)  # connections opened before the swap end on the old one
    assert nb.in_flight(a) == 0
    assert pick(nb) == "a:1"


# --- latency -------------------------------------------------------------------------------------


def test_latency_prefers_fast_targets_and_forgets_slowly() -> None:
    now = [100.0]
    b = Balancers.build(
        config({"fast:1": 100, "slow:1": 100}, algorithm="latency"),
        clock=lambda: now[0],
        rng=random.Random(1),
    ).get("up")
    assert b is not None
    fast, slow = b.targets
    b.connection_finished(fast, response_time=0.01)
    b.connection_finished(slow, response_time=0.5)
    assert Counter(pick(b) for _ in range(50)) == {"fast:1": 50}
    now[0] += 600  # the slow target's EWMA decays towards 0: it is tried again
    b.connection_finished(fast, response_time=0.01, now=now[0] - 1)
    assert pick(b) == "slow:1"


def test_latency_new_target_starts_at_mean() -> None:
    now = [0.0]
    first = Balancers.build(
        config({"a:1": 100, "b:1": 100}, algorithm="latency"), clock=lambda: now[0]
    )
    fb = first.get("up")
    assert fb is not None
    for t in fb.targets:
        fb.connection_finished(t, response_time=0.2)
    second = Balancers.build(
        config({"a:1": 100, "b:1": 100, "c:1": 100}, algorithm="latency"),
        first,
        clock=lambda: now[0],
        rng=random.Random(3),
    )
    sb = second.get("up")
    assert sb is not None
    counts = Counter(pick(sb) for _ in range(300))
    assert counts["c:1"] < 300  # not flooded
    assert len(counts) >= 2


# --- hash input ----------------------------------------------------------------------------------


def upstream(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "up",
        "hash_on": "none",
        "hash_fallback": "none",
        "hash_on_header": None,
        "hash_fallback_header": None,
        "hash_on_cookie": None,
        "hash_on_cookie_path": "/",
        "hash_on_query_arg": None,
        "hash_fallback_query_arg": None,
        "hash_on_uri_capture": None,
        "hash_fallback_uri_capture": None,
    }
    base.update(fields)
    return base


def test_hash_on_none() -> None:
    assert hash_key_for(upstream(), client_ip="1.2.3.4") == (None, None)


def test_hash_on_consumer_falls_back_to_credential() -> None:
    u = upstream(hash_on="consumer")
    assert hash_key_for(u, consumer_id="c1", credential_id="k1") == ("c1", None)
    assert hash_key_for(u, credential_id="k1") == ("k1", None)
    assert hash_key_for(u) == (None, None)


def test_hash_on_ip_path_and_uri_capture() -> None:
    assert hash_key_for(upstream(hash_on="ip"), client_ip="1.2.3.4") == ("1.2.3.4", None)
    assert hash_key_for(upstream(hash_on="path"), path="/a/b") == ("/a/b", None)
    u = upstream(hash_on="uri_capture", hash_on_uri_capture="tenant")
    assert hash_key_for(u, uri_captures={"tenant": "acme"}) == ("acme", None)
    assert hash_key_for(u, uri_captures={}) == (None, None)


def test_hash_on_header_is_case_insensitive_and_joins_values() -> None:
    u = upstream(hash_on="header", hash_on_header="X-Tenant")
    assert hash_key_for(u, headers={"x-tenant": "acme"}) == ("acme", None)
    assert hash_key_for(u, headers={"X-TENANT": "acme"}) == ("acme", None)
    assert hash_key_for(u, headers={"x-tenant": ["a", "b"]}) == ("a, b", None)
    assert hash_key_for(u, headers={"x-tenant": ""}) == ("", None)  # present but empty
    assert hash_key_for(u, headers={}) == (None, None)


def test_hash_on_query_arg_sorts_multiple_values() -> None:
    u = upstream(hash_on="query_arg", hash_on_query_arg="t")
    assert hash_key_for(u, query={"t": "x"}) == ("x", None)
    assert hash_key_for(u, query={"t": ["b", "a"]}) == ("a,b", None)


def test_uri_args_decode_as_ngx_req_get_uri_args() -> None:
    # OpenResty's documented example: `GET /test?a%20b=1%61+2` gives {"a b": "1a 2"}
    assert uri_args([("a%20b", "1%61+2")]) == {"a b": ["1a 2"]}
    # an argument without "=" is Lua's true, one without a name is left out, repeats are kept
    assert uri_args([("flag", None), ("", "x"), ("empty", ""), ("t", "2"), ("t", "1")]) == {
        "flag": ["true"],
        "empty": [""],
        "t": ["2", "1"],
    }
    # what is not an escape stays as it is; bytes that are not UTF-8 hash as those bytes
    assert uri_args([("k", "100%"), ("u", "caf%C3%A9")]) == {"k": ["100%"], "u": ["caf\u00e9"]}
    (raw,) = uri_args([("b", "%FF")])["b"]
    assert raw.encode("utf-8", "surrogateescape") == b"\xff"


def test_hash_on_query_arg_of_decoded_args() -> None:
    u = upstream(hash_on="query_arg", hash_on_query_arg="user id")
    assert hash_key_for(u, query=uri_args([("user+id", "a%2Cb")])) == ("a,b", None)
    assert hash_key_for(u, query=uri_args([("user%20id", "b"), ("user+id", "a")])) == (
        "a,b",
        None,
    )


def test_hash_fallback_when_primary_is_missing() -> None:
    u = upstream(
        hash_on="header",
        hash_on_header="x-a",
        hash_fallback="query_arg",
        hash_fallback_query_arg="q",
    )
    assert hash_key_for(u, headers={"x-a": "1"}, query={"q": "2"}) == ("1", None)
    assert hash_key_for(u, headers={}, query={"q": "2"}) == ("2", None)
    assert hash_key_for(u, headers={}, query={}) == (None, None)
    u2 = upstream(hash_on="consumer", hash_fallback="header", hash_fallback_header="x-b")
    assert hash_key_for(u2, headers={"x-b": "3"}) == ("3", None)
    u3 = upstream(hash_on="ip", hash_fallback="uri_capture", hash_fallback_uri_capture="g")
    assert hash_key_for(u3, uri_captures={"g": "v"}) == ("v", None)


def test_hash_on_cookie_uses_or_generates_cookie() -> None:
    u = upstream(hash_on="cookie", hash_on_cookie="lb", hash_on_cookie_path="/app")
    assert hash_key_for(u, cookies={"lb": "abc"}) == ("abc", None)
    key, cookie = hash_key_for(u, cookies={}, new_cookie_value=lambda: "generated")
    assert key == "generated"
    assert cookie == {"key": "lb", "value": "generated", "path": "/app"}
    assert hash_cookie_header(cookie) == "lb=generated; Path=/app; Same-Site=Lax; HttpOnly"
    random_key, random_cookie = hash_key_for(u)
    assert random_cookie is not None
    assert random_key == random_cookie["value"]
    assert len(random_key) == 36  # a UUID, as Kong


def test_hash_key_routes_consistently() -> None:
    b = balancer({"a:1": 100, "b:1": 100, "c:1": 100}, algorithm="consistent-hashing")
    u = upstream(hash_on="header", hash_on_header="x-user")
    key, _ = hash_key_for(u, headers={"x-user": "alice"})
    assert len({pick(b, key) for _ in range(10)}) == 1


# --- passive health checks -----------------------------------------------------------------------


def test_passive_tcp_failures_open_the_circuit() -> None:
    b = balancer({"a:1": 100, "b:1": 100}, healthchecks=PASSIVE_BREAKER)
    a = b.targets[0]
    b.report(a, "tcp_failure")
    assert b.health_snapshot()[0]["health"] == "HEALTHY"
    b.report(a, "tcp_failure")
    assert b.health_snapshot()[0]["health"] == "UNHEALTHY"
    assert {pick(b) for _ in range(10)} == {"b:1"}


def test_passive_failures_must_be_consecutive() -> None:
    b = balancer({"a:1": 100}, healthchecks=PASSIVE_BREAKER)
    a = b.targets[0]
    for _ in range(5):
        b.report(a, "timeout")
        b.report(a, ("http", 200))  # a success clears the failure counters
    assert b.select(None) == a
    b.report(a, "timeout")
    b.report(a, "timeout")
    assert b.select(None) is None


def test_passive_http_statuses() -> None:
    b = balancer({"a:1": 100}, healthchecks=PASSIVE_BREAKER)
    a = b.targets[0]
    for _ in range(10):
        b.report(a, ("http", 404))  # in neither default list: ignored
    b.report(a, ("http", 500))
    b.report(a, ("http", 503))
    assert b.select(None) == a
    b.report(a, ("http", 429))
    assert b.select(None) is None


def test_passive_custom_status_lists() -> None:
    checks = {
        "passive": {
            "healthy": {"http_statuses": [200]},
            "unhealthy": {"http_statuses": [502], "http_failures": 1},
        }
    }
    b = balancer({"a:1": 100, "b:1": 100}, healthchecks=checks)
    a = b.targets[0]
    b.report(a, ("http", 500))
    assert b.health_snapshot()[0]["health"] == "HEALTHY"
    b.report(a, ("http", 502))
    assert b.health_snapshot()[0]["health"] == "UNHEALTHY"


def test_passive_success_does_not_reopen_circuit() -> None:
    b = balancer({"a:1": 100, "b:1": 100}, healthchecks=PASSIVE_BREAKER)
    a = b.targets[0]
    b.report(a, "tcp_failure")
    b.report(a, "tcp_failure")
    for _ in range(5):
        b.report(a, "success")  # e.g. requests that were in flight when it tripped
    assert b.health_snapshot()[0]["health"] == "UNHEALTHY"
    assert b.set_healthy(a, True)
    assert b.health_snapshot()[0]["health"] == "HEALTHY"


def test_zero_thresholds_mean_healthchecks_off() -> None:
    b = balancer({"a:1": 100})
    a = b.targets[0]
    for _ in range(100):
        b.report(a, "tcp_failure")
    assert b.select(None) == a
    assert b.health_snapshot()[0]["health"] == "HEALTHCHECKS_OFF"
    assert b.balancer_health()["health"] == "HEALTHCHECKS_OFF"
    assert not b.set_healthy(a, False)


def test_set_healthy_by_name_and_unknown_target() -> None:
    b = balancer({"[::1]:80": 100, "b:1": 100}, healthchecks=PASSIVE_BREAKER)
    assert b.set_healthy("[::1]:80", False)
    assert {pick(b) for _ in range(4)} == {"b:1"}
    assert not b.set_healthy("nope:1", False)
    assert not b.set_healthy("[bad", False)


# --- threshold -----------------------------------------------------------------------------------


def test_threshold_is_a_minimum() -> None:
    checks = {**PASSIVE_BREAKER, "threshold": 50}
    b = balancer({"a:1": 100, "b:1": 100, "c:1": 100, "d:1": 100}, healthchecks=checks)
    a, bb, c, _ = b.targets
    b.set_healthy(a, False)
    b.set_healthy(bb, False)
    assert is_up(b)  # exactly 50 % available
    assert b.select(None) is not None
    b.set_healthy(c, False)
    assert not is_up(b)
    assert b.select(None) is None
    assert b.balancer_health() == {
        "id": "id-up",
        "health": "UNHEALTHY",
        "details": {
            "healthy": False,
            "weight": {"total": 400, "available": 100, "unavailable": 300},
        },
    }
    b.set_healthy(c, True)
    assert b.select(None) is not None


def test_threshold_counts_weight_not_targets() -> None:
    checks = {**PASSIVE_BREAKER, "threshold": 60}
    b = balancer({"big:1": 300, "s1:1": 100, "s2:1": 100}, healthchecks=checks)
    b.set_healthy("s1:1", False)
    b.set_healthy("s2:1", False)
    assert is_up(b)  # 300 / 500 = 60 %
    b.set_healthy("s1:1", True)
    b.set_healthy("big:1", False)
    assert not is_up(b)


# --- carry-over across config versions -----------------------------------------------------------


def test_health_carries_over_rebuilds() -> None:
    first = Balancers.build(config({"a:1": 100, "b:1": 100}, healthchecks=PASSIVE_BREAKER))
    b1 = first.get("up")
    assert b1 is not None
    b1.report(b1.targets[0], "tcp_failure")  # one failure counted, not yet tripped
    second = Balancers.build(
        config({"a:1": 50, "b:1": 100, "c:1": 100}, healthchecks=PASSIVE_BREAKER), first
    )
    b2 = second.get("up")
    assert b2 is not None
    b2.report(b2.targets[0], "tcp_failure")  # the counter carried over: this trips it
    assert [t["health"] for t in b2.health_snapshot()] == ["UNHEALTHY", "HEALTHY", "HEALTHY"]
    # An outcome reported on the old version's balancer lands on the shared record.
    b1.report(b1.targets[1], "tcp_failure")
    b1.report(b1.targets[1], "tcp_failure")
    assert {pick(b2) for _ in range(6)} == {"c:1"}
    # A target that left the config comes back with a fresh record.
    third = Balancers.build(config({"b:1": 100}, healthchecks=PASSIVE_BREAKER), second)
    fourth = Balancers.build(config({"a:1": 100, "b:1": 100}, healthchecks=PASSIVE_BREAKER), third)
    b4 = fourth.get("up")
    assert b4 is not None
    assert [t["health"] for t in b4.health_snapshot()] == ["HEALTHY", "UNHEALTHY"]


def test_carry_over_matches_upstream_by_name_when_id_changes() -> None:
    first = Balancers.build(config({"a:1": 100}, healthchecks=PASSIVE_BREAKER))
    b1 = first.get("up")
    assert b1 is not None
    b1.set_healthy("a:1", False)
    cfg = config({"a:1": 100}, healthchecks=PASSIVE_BREAKER)
    cfg["upstreams"][0]["id"] = "another-id"
    cfg["targets"][0]["upstream"] = {"id": "another-id"}
    b2 = Balancers.build(cfg, first).get("up")
    assert b2 is not None
    assert b2.select(None) is None


def test_disabling_healthchecks_makes_targets_usable() -> None:
    first = Balancers.build(config({"a:1": 100}, healthchecks=PASSIVE_BREAKER))
    b1 = first.get("up")
    assert b1 is not None
    b1.set_healthy("a:1", False)
    b2 = Balancers.build(config({"a:1": 100}), first).get("up")
    assert b2 is not None
    assert pick(b2) == "a:1"


# --- snapshot and lookup -------------------------------------------------------------------------


def test_health_snapshot_shape() -> None:
    b = balancer(
        {"10.0.0.1:80": 100, "[::1]:81": 0, "svc.local:82": 10}, healthchecks=PASSIVE_BREAKER
    )
    b.set_healthy("svc.local:82", False)
    snap = b.health_snapshot()
    assert [(s["target"], s["weight"], s["health"]) for s in snap] == [
        ("10.0.0.1:80", 100, "HEALTHY"),
        ("[::1]:81", 0, "HEALTHCHECKS_OFF"),
        ("svc.local:82", 10, "UNHEALTHY"),
    ]
    first = snap[0]
    assert first["id"] == "t-10.0.0.1:80"
    assert first["upstream"] == {"id": "id-up"}
    assert first["data"]["addresses"] == [
        {"ip": "10.0.0.1", "port": 80, "health": "HEALTHY", "weight": 100}
    ]
    assert [s["data"]["dns"] for s in snap] == ["A", "AAAA", "name"]
    assert snap[2]["data"]["weight"] == {"total": 10, "available": 0, "unavailable": 10}
    assert b.balancer_health()["health"] == "HEALTHY"


def test_hostname_target_is_one_address() -> None:
    b = balancer({"svc.local:82": 100})
    assert b.select(None) == TargetAddress("svc.local", 82, 100)


def test_balancers_lookup_and_target_references() -> None:
    cfg: dict[str, Any] = {
        "upstreams": [
            {"id": "u1", "name": "one", "algorithm": "round-robin"},
            {"id": "u2", "name": "two", "algorithm": "least-connections"},
        ],
        "targets": [
            {"upstream": {"id": "u1"}, "target": "a:1", "weight": 100},
            {"upstream": {"id": "u2"}, "target": "b:2"},
            {"upstream": {"id": "missing"}, "target": "c:3", "weight": 100},
        ],
    }
    bs = Balancers.build(cfg)
    assert len(bs) == 2
    assert "one" in bs
    assert bs.get("example.com") is None
    assert [b.name for b in bs] == ["one", "two"]
    two = bs.get("two")
    assert two is not None
    assert two.select(None) == TargetAddress("b", 2, 100)  # default weight 100
    assert Balancers.build({}).get("one") is None


def test_unknown_algorithm_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        balancer({"a:1": 100}, algorithm="random")
