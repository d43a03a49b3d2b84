"""``gateway.plugins.Headers``: the header multi-map plugins see, checked where it is changed."""

from __future__ import annotations

import pytest

from gateway.plugins import Headers


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
