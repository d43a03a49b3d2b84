"""The indexed router gives the same answer as a slow linear scan in priority order.

The reference below shares only the priority order (``Router._matchers``, sorted by the router's
priority key) and the normalisation helpers; host, method, header, SNI, protocol and path checks
are written again, simply, from the route entities.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.proxy._router import DEFAULT_PORTS, HeaderValues, Router
from gateway.proxy._router_paths import join_upstream_path, normalize_path, split_host_port

Outcome = tuple[str, str | None, str, int | None] | None

PLAIN_PATHS = ["/", "/a", "/a/", "/ab", "/a/b", "/b", "/a/b/c", "/v1", "/a%62"]
REGEX_PATHS = [
    "~/a\\d?",
    "~/a/[bc]+",
    "~/(a|b)/",
    "~/a|/b",
    "~/v\\d+",
    "~/(?<seg>[ab]+)/c",
    "~/a/b$",
    "~^/b",
    "~/a.b",
    "~/ab*",
    "~/a/(b)\\1",
    "~/a/",
    "~/a/b/?c",
]
HOSTS = ["a.com", "b.com", "*.a.com", "a.*", "a.com:8080", "*.a.com:8080", "x.a.com", "[::1]"]
PROTOCOLS = [
    ["http", "https"],
    ["https"],
    ["http"],
    ["ws", "wss"],
    ["wss"],
    ["grpc", "grpcs"],
    ["http", "https", "ws", "wss"],
]
HEADER_VALUES = ["1", "2", "~*^v\\d", "V"]
SNIS = ["s.test", "*.s.test", "s.*"]
REQUEST_HOSTS = [
    *("a.com", "b.com", "x.a.com", "y.x.a.com", "a.org", "a.com:8080", "A.COM"),
    *("x.a.com:8080", "", "[::1]:80", "a.com:443"),
]


@st.composite
def routes(draw: st.DrawFn, index: int, regex_only: bool = False) -> dict[str, Any]:
    paths: list[str] | None
    if regex_only:
        # Many regex-only routes without hosts share slots: exercises the combined regexes.
        paths = draw(st.lists(st.sampled_from(REGEX_PATHS[:-3]), min_size=1, max_size=2))
    else:
        paths = draw(
            st.none() | st.lists(st.sampled_from(PLAIN_PATHS + REGEX_PATHS), min_size=1, max_size=3)
        )
    headers = draw(
        st.none()
        | st.dictionaries(
            st.sampled_from(["x", "Y-Z"]),
            st.lists(st.sampled_from(HEADER_VALUES), min_size=1, max_size=2),
            min_size=1,
            max_size=2,
        )
    )
    return {
        "id": f"00000000-0000-4000-8000-{index:012d}",
        "name": f"r{index}",
        "protocols": draw(st.sampled_from(PROTOCOLS)),
        "methods": draw(st.none() | st.lists(st.sampled_from(["GET", "POST"]), min_size=1)),
        "hosts": None
        if regex_only
        else draw(st.none() | st.lists(st.sampled_from(HOSTS), min_size=1, max_size=2)),
        "paths": paths,
        "headers": headers,
        "snis": draw(st.none() | st.lists(st.sampled_from(SNIS), min_size=1, max_size=2)),
        "sources": None,
        "destinations": None,
        "https_redirect_status_code": draw(st.sampled_from([426, 301])),
        "regex_priority": draw(st.integers(0, 2)),
        "strip_path": draw(st.booleans()),
        "path_handling": draw(st.sampled_from(["v0", "v1"])),
        "preserve_host": False,
        "request_buffering": True,
        "response_buffering": True,
        "service": draw(st.sampled_from([{"id": "s1"}, {"id": "s2"}, None])),
        "created_at": draw(st.integers(0, 3)),
    }


@st.composite
def configs(draw: st.DrawFn, regex_only: bool = False) -> dict[str, Any]:
    count = draw(st.integers(0, 14))
    return {
        "services": [{"id": "s1", "path": None}, {"id": "s2", "path": "/up/"}],
        "routes": [draw(routes(i, regex_only)) for i in range(count)],
    }


request_paths = st.lists(
    st.sampled_from(["a", "b", "ab", "c", "v1", "v22", "..", ".", "", "%61", "%2F", "abb"]),
    max_size=4,
).map(lambda parts: "/" + "/".join(parts)) | st.sampled_from(["/a/b?x=1", "//a//b", "/a/bb"])

# A header name appears once, in any case (a mapping never holds "x" and "X" both).
request_headers = st.dictionaries(
    st.sampled_from(["x", "X", "y-z", "Y-Z", "w"]),
    st.sampled_from(["1", "2", "v3", "V4", "3"]) | st.lists(st.sampled_from(["1", "v3", "q"])),
    max_size=3,
).filter(lambda headers: len({name.lower() for name in headers}) == len(headers))


def _reference_hosts(entity: dict[str, Any], name: str, port: int | None) -> bool:
    if not entity["hosts"]:
        return True
    for value in entity["hosts"]:
        host, host_port = split_host_port(value)
        if host_port is not None and host_port != port:
            continue
        if host.startswith("*."):
            if name.endswith(host[1:]):
                return True
        elif host.endswith(".*"):
            if name.startswith(host[:-1]):
                return True
        elif name == host:
            return True
    return False


def _reference_headers(entity: dict[str, Any], headers: Mapping[str, HeaderValues]) -> bool:
    lowered = {key.lower(): value for key, value in headers.items()}
    for header, wanted in (entity["headers"] or {}).items():
        value = lowered.get(header.lower())
        if value is None:
            return False
        values = [value] if isinstance(value, str) else list(value)
        if not any(
            re.search(w[2:], v.lower(), re.IGNORECASE)
            if w.startswith("~*")
            else v.lower() == w.lower()
            for v in values
            for w in wanted
        ):
            return False
    return True


def _reference_sni(entity: dict[str, Any], sni: str | None, scheme: str) -> bool:
    if not entity["snis"] or scheme not in ("https", "wss"):
        return True
    if sni is None:
        return False
    sni = sni.lower()
    for value in entity["snis"]:
        if value.startswith("*"):
            if sni.endswith(value[1:]):
                return True
        elif value.endswith("*"):
            if sni.startswith(value[:-1]):
                return True
        elif sni == value:
            return True
    return False


def _reference_scheme(entity: dict[str, Any], scheme: str) -> tuple[bool, int | None]:
    protocols = set(entity["protocols"]) & {"http", "https", "ws", "wss"}
    redirect = entity["https_redirect_status_code"]
    if not protocols:
        return False, None
    if scheme == "http":
        if "http" in protocols:
            return True, None
        return ("https" in protocols), redirect
    if scheme == "https":
        return bool(protocols & {"http", "https"}), None
    if scheme == "ws":
        return True, (None if protocols & {"ws", "http"} else redirect)
    return scheme == "wss", None


def reference(
    router: Router,
    method: str,
    host: str,
    path: str,
    headers: Mapping[str, HeaderValues],
    sni: str | None,
    scheme: str,
) -> Outcome:
    path = normalize_path(path)
    name, port = split_host_port(host)
    if port is None:
        port = DEFAULT_PORTS.get(scheme)
    services = {"s1": None, "s2": "/up/"}
    for matcher in router._matchers:
        entity = matcher.route
        accepted, redirect = _reference_scheme(entity, scheme)
        if not accepted or not _reference_hosts(entity, name, port):
            continue
        if entity["methods"] and method not in entity["methods"]:
            continue
        if not _reference_sni(entity, sni, scheme) or not _reference_headers(entity, headers):
            continue
        matched: str | None = None
        if matcher.regexes:
            for _, source, _ in matcher.regexes:
                found = re.match(source, path)
                if found is not None:
                    matched = found.group(0)
                    break
            else:
                continue
        elif matcher.prefixes:
            starts = [prefix for prefix in matcher.prefixes if path.startswith(prefix)]
            if not starts:
                continue
            matched = starts[0]
        service = entity["service"]
        service_path = services[service["id"]] if service else None
        upstream = join_upstream_path(
            service_path, matched, path, entity["strip_path"], entity["path_handling"]
        )
        return entity["name"], matched, upstream, redirect
    return None


def indexed(
    router: Router,
    method: str,
    host: str,
    path: str,
    headers: Mapping[str, HeaderValues],
    sni: str | None,
    scheme: str,
) -> Outcome:
    match = router.match(method, host, path, headers, sni, scheme)
    if match is None:
        return None
    return match.route["name"], match.matched_path, match.upstream_path, match.redirect_status


REQUESTS = st.lists(
    st.tuples(
        st.sampled_from(["GET", "POST", "PUT"]),
        st.sampled_from(REQUEST_HOSTS),
        request_paths,
        request_headers,
        st.sampled_from([None, "s.test", "q.s.test", "s.org", "other"]),
        st.sampled_from(["http", "https", "ws", "wss"]),
    ),
    min_size=1,
    max_size=10,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(config=configs(), requests=REQUESTS)
def test_indexed_router_equals_linear_reference(
    config: dict[str, Any],
    requests: list[tuple[str, str, str, dict[str, Any], str | None, str]],
) -> None:
    router = Router.compile(config)
    for request in requests:
        assert indexed(router, *request) == reference(router, *request), request


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(config=configs(regex_only=True), requests=REQUESTS)
def test_indexed_router_equals_linear_reference_regex_heavy(
    config: dict[str, Any],
    requests: list[tuple[str, str, str, dict[str, Any], str | None, str]],
) -> None:
    router = Router.compile(config)
    for request in requests:
        assert indexed(router, *request) == reference(router, *request), request


def _random_route(rng: random.Random, index: int, regex_only: bool) -> dict[str, Any]:
    def maybe(values: list[Any], most: int) -> list[Any] | None:
        return None if rng.random() < 0.5 else rng.choices(values, k=rng.randint(1, most))

    return {
        "id": f"00000000-0000-4000-8000-{index:012d}",
        "name": f"r{index}",
        "protocols": rng.choice(PROTOCOLS),
        "methods": maybe(["GET", "POST"], 2),
        "hosts": None if regex_only else maybe(HOSTS, 2),
        "paths": rng.choices(REGEX_PATHS[:-3], k=rng.randint(1, 2))
        if regex_only
        else maybe(PLAIN_PATHS + REGEX_PATHS, 3),
        "headers": None
        if rng.random() < 0.6
        else {
            name: rng.choices(HEADER_VALUES, k=rng.randint(1, 2))
            for name in rng.sample(["x", "Y-Z"], rng.randint(1, 2))
        },
        "snis": maybe(SNIS, 2),
        "sources": None,
        "destinations": None,
        "https_redirect_status_code": rng.choice([426, 301]),
        "regex_priority": rng.randint(0, 2),
        "strip_path": rng.random() < 0.5,
        "path_handling": rng.choice(["v0", "v1"]),
        "preserve_host": False,
        "request_buffering": True,
        "response_buffering": True,
        "service": rng.choice([{"id": "s1"}, {"id": "s2"}, None]),
        "created_at": rng.randint(0, 3),
    }


def _random_request(rng: random.Random) -> tuple[str, str, str, dict[str, Any], str | None, str]:
    parts = ["a", "b", "ab", "c", "v1", "v22", "..", ".", "", "%61", "%2F", "abb"]
    headers: dict[str, Any] = {
        rng.choice([name, name.upper()]): rng.choice(
            ["1", "2", "v3", "V4", "3", ["1", "v3"], ["q"]]
        )
        for name in rng.sample(["x", "y-z", "w"], rng.randint(0, 3))
    }
    return (
        rng.choice(["GET", "POST", "PUT"]),
        rng.choice(REQUEST_HOSTS),
        "/" + "/".join(rng.choices(parts, k=rng.randint(0, 4))),
        headers,
        rng.choice([None, "s.test", "q.s.test", "s.org", "other"]),
        rng.choice(["http", "https", "ws", "wss"]),
    )


@pytest.mark.parametrize("regex_only", [False, True])
def test_indexed_router_equals_linear_reference_seeded(regex_only: bool) -> None:
    # Cheap to generate, so many more tables than the hypothesis tests above; deterministic.
    for seed in range(200):
        rng = random.Random(seed)
        config = {
            "services": [{"id": "s1", "path": None}, {"id": "s2", "path": "/up/"}],
            "routes": [_random_route(rng, i, regex_only) for i in range(rng.randint(0, 16))],
        }
        router = Router.compile(config)
        for _ in range(20):
            request = _random_request(rng)
            assert indexed(router, *request) == reference(router, *request), (seed, request)


def test_reference_sees_every_route_kind() -> None:
    # The order the reference scans is the router's: regex before plain, longer plain first.
    router = Router.compile(
        {
            "services": [],
            "routes": [
                {"id": "1", "name": "plain", "paths": ["/a"], "protocols": ["http"]},
                {"id": "2", "name": "regex", "paths": ["~/a"], "protocols": ["http"]},
            ],
        }
    )
    assert [m.route["name"] for m in router._matchers] == ["regex", "plain"]
