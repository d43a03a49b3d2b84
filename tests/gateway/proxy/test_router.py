"""The HTTP router: Kong's matching rules and traditional_compatible priorities, one test each."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy._router import HeaderValues, RouteMatch, Router
from gateway.proxy._router_paths import normalize_path
from gateway.schema.entities import ENTITIES

_ids = itertools.count(1)


def route(**fields: Any) -> dict[str, Any]:
    """A route as the config dict carries it: every Kong default filled in."""
    number = next(_ids)
    entity: dict[str, Any] = {
        **ENTITIES["routes"].defaults(),
        "id": f"00000000-0000-4000-8000-{number:012d}",
        "name": f"r{number}",
        "service": {"id": "svc"},
        "created_at": 1_700_000_000,
        "updated_at": 1_700_000_000,
        **fields,
    }
    return entity


SERVICE = {"id": "svc", "name": "svc", "protocol": "http", "host": "up", "port": 80, "path": None}


def compile_routes(*routes: dict[str, Any], services: list[dict[str, Any]] | None = None) -> Router:
    return Router.compile(
        {"_format_version": "3.0", "services": services or [SERVICE], "routes": list(routes)}
    )


def hit(
    router: Router,
    path: str = "/",
    *,
    method: str = "GET",
    host: str = "example.com",
    headers: Mapping[str, HeaderValues] | None = None,
    sni: str | None = None,
    scheme: str = "http",
) -> RouteMatch | None:
    return router.match(method, host, path, headers or {}, sni, scheme)


def name_of(match: RouteMatch | None) -> str | None:
    return None if match is None else match.route["name"]


# --- Kong's documented examples ------------------------------------------------------------------


def test_kong_example_all_configured_fields_must_match() -> None:
    router = compile_routes(
        route(
            name="r",
            hosts=["example.com", "foo-service.com"],
            paths=["/foo", "/bar"],
            methods=["GET"],
        )
    )
    assert name_of(hit(router, "/foo", host="example.com")) == "r"
    assert name_of(hit(router, "/bar", host="foo-service.com")) == "r"
    assert name_of(hit(router, "/foo/hello/world", host="example.com")) == "r"
    assert hit(router, "/", host="example.com") is None
    assert hit(router, "/foo", method="POST", host="example.com") is None
    assert hit(router, "/foo", host="foo.com") is None


def test_kong_example_wildcard_hostnames() -> None:
    router = compile_routes(route(name="r", hosts=["*.example.com", "service.com"]))
    assert name_of(hit(router, host="an.example.com")) == "r"
    assert name_of(hit(router, host="x.y.example.com")) == "r"
    assert name_of(hit(router, host="service.com")) == "r"
    assert hit(router, host="example.com") is None
    assert hit(router, host="an.example.org") is None


def test_wildcard_hostname_at_the_right() -> None:
    router = compile_routes(route(name="r", hosts=["example.*"]))
    assert name_of(hit(router, host="example.com")) == "r"
    assert name_of(hit(router, host="example.org")) == "r"
    assert hit(router, host="www.example.com") is None
    assert hit(router, host="example") is None


def test_kong_example_headers_keys_and_values_or() -> None:
    router = compile_routes(route(name="r", headers={"version": ["v1", "v2"]}))
    assert name_of(hit(router, headers={"version": "v1"})) == "r"
    assert name_of(hit(router, headers={"version": "v2"})) == "r"
    assert hit(router, headers={"version": "v3"}) is None
    assert hit(router) is None


def test_kong_example_header_value_case_insensitive() -> None:
    # "Incoming requests containing a Region header set to North are routed to said route."
    router = compile_routes(route(name="r", headers={"region": ["north"]}))
    assert name_of(hit(router, headers={"Region": "North"})) == "r"


class _UntouchableHeaders(Mapping[str, str]):
    def __getitem__(self, key: str) -> str:
        raise AssertionError("headers read")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("headers read")

    def __len__(self) -> int:
        raise AssertionError("headers read")


def test_headers_are_not_read_when_no_route_has_header_rules() -> None:
    # The proxy may pass a lazily decoded mapping: it stays undecoded.
    router = compile_routes(route(name="r", paths=["/"]))
    assert name_of(router.match("GET", "h", "/", _UntouchableHeaders(), None, "http")) == "r"


def test_headers_are_a_logical_and() -> None:
    router = compile_routes(route(name="r", headers={"a": ["1"], "b": ["2"]}))
    assert name_of(hit(router, headers={"a": "1", "b": "2"})) == "r"
    assert hit(router, headers={"a": "1"}) is None


def test_header_regex_value_with_tilde_star() -> None:
    router = compile_routes(route(name="r", headers={"x-version": ["~*^v\\d+$", "beta"]}))
    assert name_of(hit(router, headers={"x-version": "V12"})) == "r"
    assert name_of(hit(router, headers={"x-version": "BETA"})) == "r"
    assert hit(router, headers={"x-version": "v1x"}) is None


def test_header_regex_is_unanchored_as_kong() -> None:
    router = compile_routes(route(name="r", headers={"ua": ["~*curl"]}))
    assert name_of(hit(router, headers={"ua": "x curl/8"})) == "r"


def test_header_with_several_values_any_may_match() -> None:
    router = compile_routes(route(name="r", headers={"x": ["b"]}))
    assert name_of(hit(router, headers={"x": ["a", "B"]})) == "r"
    assert hit(router, headers={"x": ["a", "c"]}) is None


def test_kong_example_paths_are_prefixes() -> None:
    router = compile_routes(route(name="r", paths=["/service", "/hello/world"]))
    assert name_of(hit(router, "/service")) == "r"
    assert name_of(hit(router, "/service/resource?param=value")) == "r"
    assert name_of(hit(router, "/hello/world/resource", host="anything.com")) == "r"
    assert hit(router, "/hello") is None


def test_prefix_is_a_string_prefix_not_a_segment_prefix() -> None:
    # Kong's "http.path ^= /foo": /foobar matches a route for /foo.
    router = compile_routes(route(name="r", paths=["/foo"]))
    assert name_of(hit(router, "/foobar")) == "r"


def test_kong_example_longest_prefix_first() -> None:
    router = compile_routes(
        route(name="short", paths=["/service"]), route(name="long", paths=["/service/resource"])
    )
    assert name_of(hit(router, "/service/resource/1")) == "long"
    assert name_of(hit(router, "/service/other")) == "short"


def test_kong_example_regex_evaluation_order() -> None:
    # Kong docs, "Regex evaluation order": evaluated as /version/\d+/status/\d+ (priority 6),
    # /status/\d+ (0), /version/any/ (regex, 0), /version (plain).
    router = compile_routes(
        route(name="status", paths=["~/status/\\d+"], regex_priority=0),
        route(name="version-status", paths=["~/version/\\d+/status/\\d+"], regex_priority=6),
        route(name="version", paths=["/version"]),
        route(name="version-any", paths=["~/version/any/"]),
    )
    assert name_of(hit(router, "/version/1/status/2")) == "version-status"
    assert name_of(hit(router, "/status/3")) == "status"
    assert name_of(hit(router, "/version/any/x")) == "version-any"
    assert name_of(hit(router, "/version/x")) == "version"


def test_kong_example_capture_groups() -> None:
    router = compile_routes(
        route(name="r", paths=["~/version/(?<version>\\d+)/users/(?<user>\\S+)"])
    )
    match = hit(router, "/version/1/users/john")
    assert match is not None
    assert dict(match.uri_captures) == {"1": "1", "2": "john", "version": "1", "user": "john"}


def test_kong_example_methods() -> None:
    router = compile_routes(route(name="r", methods=["GET", "HEAD"]))
    assert name_of(hit(router, method="GET")) == "r"
    assert name_of(hit(router, "/resource", method="HEAD")) == "r"
    assert hit(router, method="POST") is None
    assert hit(router, method="DELETE") is None


def test_kong_example_strip_path() -> None:
    router = compile_routes(route(name="r", paths=["/service"], strip_path=True))
    match = hit(router, "/service/path/to/resource")
    assert match is not None
    assert match.upstream_path == "/path/to/resource"
    assert match.matched_path == "/service"


def test_kong_example_strip_path_regex_strips_the_matched_part() -> None:
    router = compile_routes(route(name="r", paths=["~/version/\\d+/service"], strip_path=True))
    match = hit(router, "/version/1/service/path/to/resource")
    assert match is not None
    assert match.upstream_path == "/path/to/resource"
    assert match.matched_path == "/version/1/service"


def test_no_strip_path_keeps_the_path() -> None:
    router = compile_routes(route(name="r", paths=["/service"], strip_path=False))
    match = hit(router, "/service/x")
    assert match is not None
    assert match.upstream_path == "/service/x"


def test_upstream_path_is_joined_with_service_path() -> None:
    service = dict(SERVICE, path="/base")
    router = compile_routes(route(paths=["/api"], strip_path=True), services=[service])
    match = hit(router, "/api/users")
    assert match is not None
    assert match.upstream_path == "/base/users"


def test_path_handling_v1_is_honoured() -> None:
    # NOTE: Kong's traditional_compatible flavour treats v1 as v0; we honour the route's value
    # (join_upstream_path implements both). Pinned here.
    service = dict(SERVICE, path="/s")
    router = compile_routes(
        route(paths=["/tv1/"], strip_path=True, path_handling="v1"), services=[service]
    )
    match = hit(router, "/tv1/req")
    assert match is not None
    assert match.upstream_path == "/sreq"


# --- regex paths ---------------------------------------------------------------------------------


def test_regex_paths_are_anchored_at_the_start() -> None:
    router = compile_routes(route(name="r", paths=["~/bar"]))
    assert name_of(hit(router, "/bar/x")) == "r"
    assert hit(router, "/foo/bar") is None


def test_regex_top_level_alternation_is_anchored_as_a_whole() -> None:
    router = compile_routes(route(name="r", paths=["~/a|/b"]))
    assert name_of(hit(router, "/b/x")) == "r"
    assert hit(router, "/x/b") is None


def test_regex_without_captures_has_empty_uri_captures() -> None:
    router = compile_routes(route(name="r", paths=["~/a\\d+"]))
    match = hit(router, "/a12")
    assert match is not None
    assert dict(match.uri_captures) == {}


def test_plain_path_is_not_a_regex() -> None:
    router = compile_routes(route(name="r", paths=["/users/\\d+/profile"]))
    assert hit(router, "/users/1/profile") is None
    assert name_of(hit(router, "/users/\\d+/profile")) == "r"


def test_invalid_regex_path_leaves_the_route_out() -> None:
    router = compile_routes(route(name="bad", paths=["~/a("]), route(name="ok", paths=["/a"]))
    assert name_of(hit(router, "/a")) == "ok"
    assert hit(router, "/b") is None
    assert [issue.route_id for issue in router.issues] != []


def test_first_matching_regex_of_a_slot_failing_other_fields_falls_through() -> None:
    # Several regexes under one literal prefix are tried with one combined regex; when the
    # first alternative that matches belongs to a route whose method differs, the scan goes on.
    routes = [
        route(name=f"r{i}", paths=[f"~/api/v{i}/\\w+"], methods=["POST"], regex_priority=10 - i)
        for i in range(5)
    ]
    routes.append(route(name="get", paths=["~/api/v\\d/\\w+"], methods=["GET"]))
    router = compile_routes(*routes)
    assert name_of(hit(router, "/api/v2/x", method="POST")) == "r2"
    assert name_of(hit(router, "/api/v2/x", method="GET")) == "get"
    assert hit(router, "/api/vx/x", method="GET") is None


# --- priorities (traditional_compatible) ---------------------------------------------------------


def test_priority_more_attribute_categories_first() -> None:
    # Kong docs: hosts+methods is evaluated before hosts alone.
    router = compile_routes(
        route(name="hosts", hosts=["example.com"]),
        route(name="hosts-methods", hosts=["example.com"], methods=["POST"]),
    )
    assert name_of(hit(router, method="GET")) == "hosts"
    assert name_of(hit(router, method="POST")) == "hosts-methods"


def test_priority_category_count_beats_path_length() -> None:
    router = compile_routes(
        route(name="long", paths=["/a/very/long/path"]),
        route(name="short-with-method", paths=["/a"], methods=["GET"]),
    )
    assert name_of(hit(router, "/a/very/long/path")) == "short-with-method"


def test_priority_plain_hosts_before_wildcard_hosts() -> None:
    router = compile_routes(
        route(name="wild", hosts=["*.example.com"], paths=["/a/longer"]),
        route(name="plain", hosts=["api.example.com"], paths=["/a"]),
    )
    assert name_of(hit(router, "/a/longer", host="api.example.com")) == "plain"
    assert name_of(hit(router, "/a/longer", host="web.example.com")) == "wild"


def test_priority_no_host_route_before_wildcard_host_route() -> None:
    # NOTE: Kong's docs: "Routes without a wildcard host specified are prioritized before those
    # that include any wildcard host" -- a route without hosts has no wildcard host.
    router = compile_routes(
        route(name="wild", hosts=["*.example.com"], paths=["/a/longer"]),
        route(name="method", methods=["GET"], paths=["/a"]),
    )
    assert name_of(hit(router, "/a/longer", host="x.example.com")) == "method"


def test_priority_more_headers_first() -> None:
    router = compile_routes(
        route(name="one", headers={"a": ["1"]}, paths=["/longer/path"]),
        route(name="two", headers={"a": ["1"], "b": ["2"]}, paths=["/"]),
    )
    assert name_of(hit(router, "/longer/path", headers={"a": "1", "b": "2"})) == "two"
    assert name_of(hit(router, "/longer/path", headers={"a": "1"})) == "one"


def test_priority_regex_paths_before_plain_paths() -> None:
    router = compile_routes(
        route(name="plain", paths=["/api/users/list"]),
        route(name="regex", paths=["~/api/"], regex_priority=-5),
    )
    assert name_of(hit(router, "/api/users/list")) == "regex"


def test_priority_higher_regex_priority_first() -> None:
    router = compile_routes(
        route(name="low", paths=["~/a/\\d+"], regex_priority=1),
        route(name="high", paths=["~/a/"], regex_priority=2),
    )
    assert name_of(hit(router, "/a/1")) == "high"


def test_priority_regex_priority_ignored_for_plain_paths() -> None:
    router = compile_routes(
        route(name="short", paths=["/a"], regex_priority=100),
        route(name="long", paths=["/a/b"], regex_priority=0),
    )
    assert name_of(hit(router, "/a/b")) == "long"


def test_priority_longest_plain_prefix_first() -> None:
    router = compile_routes(
        route(name="root", paths=["/"]),
        route(name="ab", paths=["/a/b"]),
        route(name="a", paths=["/a"]),
    )
    assert name_of(hit(router, "/a/b/c")) == "ab"
    assert name_of(hit(router, "/a/c")) == "a"
    assert name_of(hit(router, "/c")) == "root"


def test_priority_paths_of_one_route_compete_separately() -> None:
    # traditional_compatible splits a route into one matcher per path kind/length.
    router = compile_routes(
        route(name="multi", paths=["/a", "/a/b/c"]),
        route(name="mid", paths=["/a/b"]),
    )
    assert name_of(hit(router, "/a/b/c/d")) == "multi"
    assert name_of(hit(router, "/a/b/x")) == "mid"
    assert name_of(hit(router, "/a/x")) == "multi"


def test_priority_created_at_breaks_ties() -> None:
    # NOTE: Kong's traditional_compatible leaves full ties unordered; we take the oldest route
    # (then the lowest id), as Kong's traditional flavour does.
    router = compile_routes(
        route(name="newer", paths=["/a"], created_at=200),
        route(name="older", paths=["/b"], created_at=100),
        route(name="oldest", paths=["/a"], created_at=50),
    )
    assert name_of(hit(router, "/a")) == "oldest"


def test_priority_id_breaks_created_at_ties() -> None:
    router = compile_routes(
        route(id="bbbbbbbb-0000-4000-8000-000000000000", name="b", paths=["/a"]),
        route(id="aaaaaaaa-0000-4000-8000-000000000000", name="a", paths=["/a"]),
    )
    assert name_of(hit(router, "/a")) == "a"


# --- hosts ---------------------------------------------------------------------------------------


def test_host_matching_is_case_insensitive_and_ignores_the_port() -> None:
    router = compile_routes(route(name="r", hosts=["Example.COM"]))
    assert name_of(hit(router, host="EXAMPLE.com:8000")) == "r"


def test_route_host_with_port_matches_the_host_header_port() -> None:
    router = compile_routes(route(name="r", hosts=["example.com:8080"]))
    assert name_of(hit(router, host="example.com:8080")) == "r"
    assert hit(router, host="example.com:8081") is None
    assert hit(router, host="example.com") is None


def test_route_host_with_port_uses_the_scheme_default_port() -> None:
    router = compile_routes(route(name="r", hosts=["example.com:443"]))
    assert name_of(hit(router, host="example.com", scheme="https")) == "r"
    assert hit(router, host="example.com", scheme="http") is None


def test_wildcard_host_with_port() -> None:
    router = compile_routes(route(name="r", hosts=["*.example.com:8080"]))
    assert name_of(hit(router, host="a.example.com:8080")) == "r"
    assert hit(router, host="a.example.com:80") is None


def test_ipv6_literal_hosts() -> None:
    router = compile_routes(route(name="any-port", hosts=["[::1]"]))
    assert name_of(hit(router, host="[::1]:8000")) == "any-port"
    assert name_of(hit(router, host="[::1]")) == "any-port"
    router = compile_routes(route(name="port", hosts=["[::1]:8443"]))
    assert name_of(hit(router, host="[::1]:8443")) == "port"
    assert hit(router, host="[::1]:8000") is None


def test_host_port_gives_no_extra_priority() -> None:
    # Kong: "(http.host == h && net.dst.port == p)" is still one "hosts" category.
    router = compile_routes(
        route(name="any-port", hosts=["example.com"], created_at=1),
        route(name="port", hosts=["example.com:8080"], created_at=2),
    )
    assert name_of(hit(router, host="example.com:8080")) == "any-port"


def test_missing_host_matches_only_routes_without_hosts() -> None:
    router = compile_routes(route(name="h", hosts=["example.com"]), route(name="p", paths=["/"]))
    assert name_of(hit(router, host="")) == "p"


# --- snis and protocols --------------------------------------------------------------------------


def test_snis_match_https_requests() -> None:
    router = compile_routes(route(name="r", snis=["foo.test", "*.wild.test"]))
    assert name_of(hit(router, sni="foo.test", scheme="https")) == "r"
    assert name_of(hit(router, sni="a.wild.test", scheme="https")) == "r"
    assert hit(router, sni="bar.test", scheme="https") is None
    assert hit(router, sni=None, scheme="https") is None


def test_snis_are_not_checked_on_plain_http() -> None:
    # Kong: "(net.protocol != https || tls.sni == ...)".
    router = compile_routes(route(name="r", snis=["foo.test"], paths=["/"]))
    assert name_of(hit(router, scheme="http")) == "r"


def test_https_only_route_over_http_reports_redirect_status() -> None:
    router = compile_routes(
        route(name="426", protocols=["https"], paths=["/a"]),
        route(name="301", protocols=["https"], paths=["/b"], https_redirect_status_code=301),
    )
    match = hit(router, "/a", scheme="http")
    assert match is not None
    assert match.redirect_status == 426
    match = hit(router, "/b", scheme="http")
    assert match is not None
    assert match.redirect_status == 301
    match = hit(router, "/b", scheme="https")
    assert match is not None
    assert match.redirect_status is None


def test_http_only_route_matches_https_requests_as_kong() -> None:
    router = compile_routes(route(name="r", protocols=["http"], paths=["/"]))
    match = hit(router, scheme="https")
    assert match is not None
    assert match.redirect_status is None


def test_ws_routes_match_only_websocket_requests() -> None:
    router = compile_routes(
        route(name="ws", protocols=["ws", "wss"], paths=["/chat"]),
        route(name="http", protocols=["http", "https"], paths=["/"]),
    )
    assert name_of(hit(router, "/chat", scheme="http")) == "http"
    assert name_of(hit(router, "/chat", scheme="https")) == "http"
    assert name_of(hit(router, "/chat", scheme="ws")) == "ws"
    assert name_of(hit(router, "/chat", scheme="wss")) == "ws"
    # an http route also takes websocket upgrades (Kong proxies them)
    assert name_of(hit(router, "/other", scheme="ws")) == "http"


def test_wss_only_route_over_ws_reports_redirect_status() -> None:
    router = compile_routes(route(name="r", protocols=["wss"], paths=["/"]))
    match = hit(router, scheme="ws")
    assert match is not None
    assert match.redirect_status == 426


def test_non_http_routes_are_ignored_without_crashing() -> None:
    router = compile_routes(
        route(name="grpc", protocols=["grpc", "grpcs"], paths=["/"]),
        route(name="tcp", protocols=["tcp"], paths=None, sources=[{"ip": "10.0.0.0/8"}]),
        route(name="tls", protocols=["tls"], snis=["x.test"]),
        route(name="udp", protocols=["udp"], destinations=[{"port": 53}]),
        route(name="passthrough", protocols=["tls_passthrough"], snis=["y.test"]),
    )
    assert len(router) == 0
    assert hit(router) is None
    assert hit(router, sni="x.test", scheme="https") is None


def test_sources_routes_are_left_out() -> None:
    # NOTE: an HTTP route with sources/destinations cannot be checked without the connection's
    # addresses; it is reported in ``issues`` and never matches (rather than matching anyone).
    router = compile_routes(route(name="r", paths=["/"], sources=[{"ip": "10.0.0.1"}]))
    assert hit(router) is None
    assert len(router.issues) == 1


def test_unknown_scheme_matches_nothing() -> None:
    router = compile_routes(route(name="r", paths=["/"]))
    assert hit(router, scheme="gopher") is None


# --- normalisation -------------------------------------------------------------------------------


def test_dot_segments_cannot_bypass_a_prefix_route() -> None:
    router = compile_routes(
        route(name="public", paths=["/public"]),
        route(name="admin", paths=["/admin"]),
    )
    match = hit(router, "/public/../admin/x")
    assert name_of(match) == "admin"
    assert match is not None
    assert match.upstream_path == "/x"
    assert name_of(hit(router, "/public/%2e%2e/admin")) == "admin"
    assert hit(router, "/x/../../etc") is None


def test_percent_encoded_unreserved_characters_are_decoded_for_matching() -> None:
    router = compile_routes(route(name="r", paths=["/foo"], strip_path=False))
    match = hit(router, "/fo%6F/b%61r")
    assert name_of(match) == "r"
    assert match is not None
    assert match.path == "/foo/bar"
    assert match.upstream_path == "/foo/bar"


def test_encoded_slash_is_not_decoded() -> None:
    router = compile_routes(route(name="r", paths=["/a/b"]))
    assert hit(router, "/a%2Fb") is None


def test_route_paths_are_normalised_too() -> None:
    router = compile_routes(
        route(name="plain", paths=["/fo%6F//bar"]), route(name="regex", paths=["~/x%2E\\d"])
    )
    assert name_of(hit(router, "/foo/bar")) == "plain"
    assert name_of(hit(router, "/x.1")) == "regex"
    assert hit(router, "/xa1") is None


def test_duplicate_slashes_are_merged() -> None:
    router = compile_routes(route(name="r", paths=["/a/b"]))
    assert name_of(hit(router, "//a//b")) == "r"


# --- the match object ----------------------------------------------------------------------------


def test_match_exposes_route_data_for_the_proxy() -> None:
    entity = route(
        name="r",
        paths=["/a"],
        preserve_host=True,
        request_buffering=False,
        response_buffering=False,
        strip_path=False,
    )
    match = hit(compile_routes(entity), "/a/b")
    assert match is not None
    assert match.route is entity
    assert match.service is not None
    assert match.service["id"] == "svc"
    assert match.preserve_host is True
    assert match.strip_path is False
    assert match.request_buffering is False
    assert match.response_buffering is False
    assert match.redirect_status is None
    assert "r" in repr(match)


def test_route_without_service_matches_with_service_none() -> None:
    router = compile_routes(route(name="r", paths=["/"], service=None))
    match = hit(router)
    assert match is not None
    assert match.service is None
    assert match.upstream_path == "/"


def test_route_with_unknown_service_matches_with_service_none_and_an_issue() -> None:
    router = compile_routes(route(name="r", paths=["/"], service={"id": "gone"}))
    match = hit(router)
    assert match is not None
    assert match.service is None
    assert router.issues


def test_no_route_gives_none() -> None:
    assert hit(compile_routes()) is None
    assert Router.compile({}).match("GET", "h", "/", {}, None, "http") is None


@pytest.mark.parametrize("value", ["*", "*.*.example.com", "a.*.b"])
def test_invalid_wildcard_hosts_are_reported(value: str) -> None:
    router = compile_routes(route(name="r", hosts=[value]))
    assert hit(router, host="a.example.com") is None
    assert router.issues


# --- untrusted input -----------------------------------------------------------------------------

_FUZZ_ROUTER = compile_routes(
    route(paths=["/a", "~/b/(?<x>\\d+)", "~/c|/d"], hosts=["a.com", "*.b.com", "c.*"]),
    route(paths=["/"], headers={"x": ["1", "~*^v"]}, snis=["s.test", "*.t.test"]),
    route(paths=["/e"], protocols=["https"], methods=["GET"]),
    route(hosts=["[::1]:8080"]),
)


@settings(max_examples=200, deadline=None)
@given(
    method=st.text(max_size=8),
    host=st.text(max_size=30) | st.sampled_from(["a.com", "x.b.com", "[::1]:8080", "c.org:99"]),
    path=st.text(max_size=40) | st.sampled_from(["/a/../b/1", "/%2e%2E/", "/b/%31", "//c"]),
    headers=st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=3),
    sni=st.none() | st.text(max_size=20),
    scheme=st.text(max_size=5) | st.sampled_from(["http", "https", "ws", "wss"]),
)
def test_any_request_gives_a_match_or_none(
    method: str, host: str, path: str, headers: dict[str, str], sni: str | None, scheme: str
) -> None:
    match = _FUZZ_ROUTER.match(method, host, path, headers, sni, scheme)
    if match is not None:
        assert match.upstream_path.startswith("/")
        assert match.path == normalize_path(match.path)
