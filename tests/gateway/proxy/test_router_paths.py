"""Pure helpers of the router: path normalisation, host splitting, upstream path joining."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy._router import regex_literal_prefix
from gateway.proxy._router_paths import (
    decoded_path,
    join_upstream_path,
    normalize_path,
    normalize_regex_path,
    split_host_port,
)

# Kong's Admin API reference, "Path handling algorithms" (route object): service.path, route
# path, strip_path, path_handling, request path -> upstream path. The first eight rows are the
# older table (request path glued to the route path), the others the 3.x one. The 3.x table
# prints "/s/fv01/" for the row /fv0/ + "/fv0/": a typo for "/s/fv0/", which Kong's code gives.
PATH_HANDLING_TABLE = [
    ("/s", "/fv0", False, "v0", "/fv0req", "/s/fv0req"),
    ("/s", "/fv1", False, "v1", "/fv1req", "/sfv1req"),
    ("/s", "/tv0", True, "v0", "/tv0req", "/s/req"),
    ("/s", "/tv1", True, "v1", "/tv1req", "/sreq"),
    ("/s", "/fv0/", False, "v0", "/fv0/req", "/s/fv0/req"),
    ("/s", "/fv1/", False, "v1", "/fv1/req", "/sfv1/req"),
    ("/s", "/tv0/", True, "v0", "/tv0/req", "/s/req"),
    ("/s", "/tv1/", True, "v1", "/tv1/req", "/sreq"),
    ("/s", "/fv0", False, "v0", "/fv0/req", "/s/fv0/req"),
    ("/s", "/fv0", False, "v0", "/fv0", "/s/fv0"),
    ("/s", "/fv1", False, "v1", "/fv1/req", "/sfv1/req"),
    ("/s", "/fv1", False, "v1", "/fv1", "/sfv1"),
    ("/s", "/tv0", True, "v0", "/tv0/req", "/s/req"),
    ("/s", "/tv0", True, "v0", "/tv0", "/s"),
    ("/s", "/tv1", True, "v1", "/tv1/req", "/s/req"),
    ("/s", "/tv1", True, "v1", "/tv1", "/s"),
    ("/s", "/fv0/", False, "v0", "/fv0/req", "/s/fv0/req"),
    ("/s", "/fv0/", False, "v0", "/fv0/", "/s/fv0/"),
    ("/s", "/fv1/", False, "v1", "/fv1/req", "/sfv1/req"),
    ("/s", "/fv1/", False, "v1", "/fv1/", "/sfv1/"),
    ("/s", "/tv0/", True, "v0", "/tv0/req", "/s/req"),
    ("/s", "/tv0/", True, "v0", "/tv0/", "/s/"),
    ("/s", "/tv1/", True, "v1", "/tv1/req", "/sreq"),
    ("/s", "/tv1/", True, "v1", "/tv1/", "/s"),
]


@pytest.mark.parametrize(
    ("service_path", "route_path", "strip", "handling", "request_path", "expected"),
    PATH_HANDLING_TABLE,
)
def test_path_handling_table(
    service_path: str, route_path: str, strip: bool, handling: str, request_path: str, expected: str
) -> None:
    assert join_upstream_path(service_path, route_path, request_path, strip, handling) == expected


@pytest.mark.parametrize(
    ("service_path", "matched", "request_path", "strip", "handling", "expected"),
    [
        # service path "/" (or none): the request path goes through, minus the stripped part
        (None, "/foo", "/foo/bar", True, "v0", "/bar"),
        ("/", "/foo", "/foo/bar", True, "v0", "/bar"),
        ("/", "/foo", "/foo", True, "v0", "/"),
        ("/", "/foo", "/foo/", True, "v0", "/"),
        ("/", "/foo", "/foo/bar", False, "v0", "/foo/bar"),
        ("/", None, "/", False, "v0", "/"),
        ("/", None, "/x", True, "v0", "/x"),
        # service path with a trailing slash never produces a double slash
        ("/s/", "/foo", "/foo/bar", True, "v0", "/s/bar"),
        ("/s/", "/foo/", "/foo/bar", True, "v0", "/s/bar"),
        ("/s/", "/foo", "/foo", True, "v0", "/s"),
        ("/s/", "/foo", "/foo/", True, "v0", "/s/"),
        ("/s/", "/foo", "/foo/bar", False, "v0", "/s/foo/bar"),
        ("/s/", "/foo", "/foo/bar", True, "v1", "/s/bar"),
        ("/s/", "/foo", "/foo/bar", False, "v1", "/s/foo/bar"),
        # v0, service path without trailing slash, no strip, request "/"
        ("/s", "/", "/", False, "v0", "/s"),
        # a postfix never starts with a dot segment (sanitize_uri_postfix)
        ("/s", "/foo", "/foo..", True, "v0", "/s"),
        ("/s", "/foo", "/foo../x", True, "v0", "/s/x"),
    ],
)
def test_join_upstream_path_edges(
    service_path: str | None,
    matched: str | None,
    request_path: str,
    strip: bool,
    handling: str,
    expected: str,
) -> None:
    assert join_upstream_path(service_path, matched, request_path, strip, handling) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Kong's documented examples (Path normalization)
        ("/foo%3a", "/foo%3A"),
        ("/fo%6F", "/foo"),
        ("/foo/./bar/../baz", "/foo/baz"),
        ("/foo//bar", "/foo/bar"),
        # more
        ("/", "/"),
        ("", "/"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/..", "/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E%2e/%2e/b", "/b"),
        ("/a/.../b", "/a/.../b"),
        ("/a/b/?x=/../y", "/a/b/"),
        ("/a?b", "/a"),
        ("//a///b//", "/a/b/"),
        ("/%7Euser", "/~user"),
        ("/%41%5a%30-%5F", "/AZ0-_"),
    ],
)
def test_normalize_path(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


def test_normalize_keeps_reserved_and_other_triplets() -> None:
    # NOTE: reserved ("/" "?" "%" ...) and "other" characters stay encoded, upper-cased.
    assert normalize_path("/a%2fb%2F%3f%25%20%c3%a9") == "/a%2Fb%2F%3F%25%20%C3%A9"
    # an encoded slash is not a separator: %2F..%2F is one segment, not a dot segment
    assert normalize_path("/a/..%2F..%2Fb") == "/a/..%2F..%2Fb"


def test_normalize_encodes_a_bare_percent() -> None:
    # Decoding must not build new triplets out of a bare "%" and a decoded character.
    assert normalize_path("/a/%2%65%2%65/b") == "/a/%252e%252e/b"
    assert normalize_path("/100%") == "/100%25"
    assert normalize_path("/%zz") == "/%25zz"


@given(st.text(alphabet="/.%2eE5a", max_size=24))
def test_normalize_path_is_idempotent(raw: str) -> None:
    once = normalize_path(raw)
    assert normalize_path(once) == once
    assert "/../" not in once + "/"
    assert "/./" not in once + "/"
    assert "//" not in once


def test_normalize_regex_path_escapes_decoded_metacharacters() -> None:
    assert normalize_regex_path("/fo%6F/%2E\\d+%2f") == "/foo/\\.\\d+%2F"
    assert normalize_regex_path("/plain") == "/plain"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", ("example.com", None)),
        ("Example.COM:8080", ("example.com", 8080)),
        ("example.com:", ("example.com:", None)),
        ("example.com:http", ("example.com:http", None)),
        ("example.com:99999", ("example.com:99999", None)),
        ("[::1]", ("[::1]", None)),
        ("[::1]:8443", ("[::1]", 8443)),
        ("[::1]x", ("[::1]x", None)),
        ("[::1", ("[::1", None)),
        ("::1", ("::1", None)),
        ("", ("", None)),
        (" a.b ", ("a.b", None)),
    ],
)
def test_split_host_port(host: str, expected: tuple[str, int | None]) -> None:
    assert split_host_port(host) == expected


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("/users/\\d+", "/users/"),
        ("^/users", "/users"),
        ("/users?", "/user"),
        ("/users*", "/user"),
        ("/users{0,2}", "/user"),
        ("/users+", "/users"),
        ("/a\\.b\\/c", "/a.b/c"),
        ("/a\\d", "/a"),
        ("/a|/b", ""),
        ("/(a|b)", "/"),
        ("/[|]x", "/"),
        ("(?i)/abc", ""),
        ("/a.b", "/a"),
        ("", ""),
    ],
)
def test_regex_literal_prefix(pattern: str, prefix: str) -> None:
    assert regex_literal_prefix(pattern) == prefix


@pytest.mark.parametrize(
    ("path", "uri"),
    [
        ("/a/b", "/a/b"),
        ("/a/%62", "/a/b"),  # an unreserved triplet, as the router
        ("/a/./b/../c//d", "/a/c/d"),
        ("/a/%2e%2E/b", "/b"),
        ("/a%20b", "/a b"),  # and, unlike the router, every other triplet
        ("/a%2Fb", "/a/b"),
        ("/a%2f%2fb", "/a/b"),  # a decoded "/" separates segments, as nginx's parser
        ("/a/..%2Fb", "/b"),
        ("/x/a%2F..%2Fb/", "/x/b/"),
        ("/100%25", "/100%"),  # decoded once: "%25" is a "%", not an escape
        ("/%2541", "/%41"),
        ("/caf%C3%A9", "/caf\u00e9"),
        ("/a?x=%62", "/a"),
    ],
)
def test_decoded_path_is_nginx_uri(path: str, uri: str) -> None:
    assert decoded_path(path) == uri


def test_decoded_path_keeps_the_bytes() -> None:
    # bytes that are not UTF-8 (escaped or raw, as the parser gives them in Latin-1) hash as
    # those bytes: the balancer encodes keys with surrogateescape
    assert decoded_path("/%FF").encode("utf-8", "surrogateescape") == b"/\xff"
    assert decoded_path("/\xff%20").encode("utf-8", "surrogateescape") == b"/\xff "
    assert decoded_path("/caf\xc3\xa9") == "/caf\u00e9"


@given(st.text(alphabet="/.%2fFe4a", max_size=20))
def test_decoded_path_is_rooted_without_empty_segments(path: str) -> None:
    uri = decoded_path(path)
    assert uri.startswith("/")
    assert "//" not in uri
