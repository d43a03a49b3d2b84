"""``gateway.plugins.Headers``: the header multi-map plugins see, checked where it is changed."""

from __future__ import annotations

import pytest

from gateway.plugins import Headers, ServiceRequest


def test_case_insensitive_ordered_multimap() -> None:
    h = Headers([("Accept", "*/*"), ("X-A", "1")])
    h.add("x-a", "2")
    assert h.get("ACCEPT") == "*/*"
    assert h.get_all("X-A") == ["1", "2"]
    assert "x-a" in h
    assert "X-a" in h
    assert "missing" not in h
    assert 3 not in h
    h.set("X-A", "3")  # replaces every x-a, goes last
    assert h.items() == [("accept", "*/*"), ("x-a", "3")]
    h.remove("ACCEPT")
    assert list(h) == [("x-a", "3")]
    assert len(h) == 1
    assert h.get("accept", "none") == "none"
    assert h.raw() == [(b"x-a", b"3")]


def test_latin1_values_round_trip() -> None:
    h = Headers()
    h.set("x-name", "caf\u00e9")
    assert h.raw() == [(b"x-name", b"caf\xe9")]
    assert h.get("x-name") == "caf\u00e9"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-a", "v\r\nx-injected: yes"),
        ("x-a", "v\nx"),
        ("x-a", "v\rx"),
        ("x-a", "v\x00"),
        ("x-a", "\u20ac"),  # not Latin-1
        ("x a", "v"),
        ("x-a:", "v"),
        ("", "v"),
        ("x-a\r\nx-b", "v"),
        ("caf\u00e9", "v"),
    ],
)
def test_what_could_break_the_framing_is_refused_where_it_is_set(name: str, value: str) -> None:
    h = Headers([("x-keep", "1")])
    with pytest.raises(ValueError, match="invalid"):
        h.set(name, value)
    with pytest.raises(ValueError, match="invalid"):
        h.add(name, value)
    with pytest.raises(ValueError, match="invalid"):
        Headers([(name, value)])
    assert h.raw() == [(b"x-keep", b"1")]  # unchanged


def test_headers_from_the_wire_are_forwarded_as_they_came() -> None:
    raw = [(b"host", b"example.com"), (b"x-odd", b"\xff\xfe")]
    h = Headers.from_raw(raw)
    assert h.raw() == raw
    assert h.raw() is not raw  # a copy: changing it changes neither
    copy = h.copy()
    copy.set("x-new", "1")
    assert h.raw() == raw
    assert copy.raw() == [*raw, (b"x-new", b"1")]


def host_set(headers: Headers) -> bytes | None:
    return ServiceRequest(method="GET", path="/", query=[], headers=headers).host


def test_the_last_host_set_or_added_is_remembered() -> None:
    client = Headers.from_raw([(b"host", b"client.test"), (b"x-a", b"1")])
    assert host_set(client.copy()) is None  # the client's Host was not set by anyone
    h = client.copy()
    h.set("X-A", "2")
    assert host_set(h) is None  # other names do not count
    h.set("Host", "a.test")
    assert host_set(h) == b"a.test"
    h.add("HOST", "b.test:8443")
    assert host_set(h) == b"b.test:8443"
    # as Kong's clear_header: the Host sent upstream stays what was set
    h.remove("host")
    assert "host" not in h
    assert host_set(h) == b"b.test:8443"
    assert host_set(h.copy()) == b"b.test:8443"
    # a new Headers given a host (Kong's set_headers) sets it too
    assert host_set(Headers([("x-b", "1"), ("Host", "c.test")])) == b"c.test"
    # empty: not set, as Kong's `upstream_host ~= ""`
    h.set("host", "")
    assert host_set(h) is None
