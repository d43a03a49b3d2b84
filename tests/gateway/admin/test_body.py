"""The request body decoder: JSON, form-encoded and multipart, Kong's form notation, and
nothing but ``BodyError`` for bad input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.admin._body import BodyError, coerce_form_types, decode_body, nest_form
from gateway.schema.entities import ENTITIES

FORM = "application/x-www-form-urlencoded"


def test_kong_form_notation() -> None:
    pairs = [
        ("name", "s"),
        ("config.minute", "5"),
        ("config.policy.inner", "x"),
        ("paths[]", "/a"),
        ("paths[]", "/b"),
        ("hosts", "a"),
        ("hosts", "b"),
        ("methods[2]", "POST"),
        ("methods[1]", "GET"),
    ]
    assert nest_form(pairs) == {
        "name": "s",
        "config": {"minute": "5", "policy": {"inner": "x"}},
        "paths": ["/a", "/b"],
        "hosts": ["a", "b"],
        "methods": ["GET", "POST"],
    }


def test_form_values_take_the_schema_types() -> None:
    data, is_form = decode_body(
        FORM,
        b"name=r&protocols=http&paths=/a&strip_path=false&regex_priority=3"
        b"&service.id=00000000-0000-4000-8000-000000000000&hosts=&headers.x-a=1",
    )
    assert is_form
    coerced = coerce_form_types(ENTITIES["routes"].record, data)
    assert coerced == {
        "name": "r",
        "protocols": ["http"],
        "paths": ["/a"],
        "strip_path": False,
        "regex_priority": 3,
        "service": {"id": "00000000-0000-4000-8000-000000000000"},
        "hosts": [],
        "headers": {"x-a": ["1"]},
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("on", True), ("1", True), ("false", False), ("off", False), ("x", "x")],
)
def test_booleans(text: str, value: Any) -> None:
    data, _ = decode_body(FORM, f"enabled={text}".encode())
    assert coerce_form_types(ENTITIES["services"].record, data) == {"enabled": value}


def test_empty_value_clears_an_optional_field() -> None:
    data, _ = decode_body(FORM, b"path=&host=h")
    assert coerce_form_types(ENTITIES["services"].record, data) == {"path": None, "host": "h"}


@pytest.mark.parametrize("ctype", [None, "", "application/json", "application/vnd.x+json"])
def test_json_content_types(ctype: str | None) -> None:
    assert decode_body(ctype, b'{"a": 1}') == ({"a": 1}, False)


def test_empty_body_is_an_empty_object() -> None:
    assert decode_body("text/plain", b"  \r\n") == ({}, False)


def test_multipart() -> None:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="config.minute"\r\n\r\n5\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="c.pem"\r\n'
        b"Content-Type: application/x-pem-file\r\n\r\nPEM\r\n--B--\r\n"
    )
    assert decode_body("multipart/form-data; boundary=B", body) == (
        {"config": {"minute": "5"}, "file": "PEM"},
        True,
    )


@pytest.mark.parametrize(
    ("ctype", "body", "status"),
    [
        ("application/json", b"{", 400),
        ("application/json", b"[]", 400),
        ("application/json", b"[" * 50_000, 400),
        (FORM, b"a[0]=x", 400),
        (FORM, b"a[1001]=x", 400),
        (FORM, b"a=\xff", 400),
        (FORM, b"&".join([b"a=1"] * 10_001), 400),
        ("multipart/form-data", b"x", 400),
        ("text/html", b"<p>", 415),
    ],
)
def test_errors(ctype: str, body: bytes, status: int) -> None:
    with pytest.raises(BodyError) as info:
        decode_body(ctype, body)
    assert info.value.status == status


@settings(max_examples=300, deadline=None)
@given(
    ctype=st.sampled_from(
        [FORM, "application/json", "multipart/form-data; boundary=b", "text/plain", None]
    ),
    body=st.binary(max_size=200)
    | st.text(alphabet='ab.[]=&%0159-_{}",:', max_size=80).map(str.encode),
)
def test_any_body_decodes_or_raises_body_error(ctype: str | None, body: bytes) -> None:
    try:
        data, is_form = decode_body(ctype, body)
    except BodyError as exc:
        status = exc.status
        assert status in (400, 415)
        return
    assert isinstance(data, dict)
    for schema in ENTITIES.values():
        if is_form:
            assert isinstance(coerce_form_types(schema.record, data), dict)
