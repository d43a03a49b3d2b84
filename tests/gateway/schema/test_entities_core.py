"""Services, routes, consumers and key-auth credentials: defaults, constraints, errors."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gateway.schema import SchemaViolation
from gateway.schema.entities import ENTITIES

NOW = 1_700_000_000
SVC_ID = "9c1f2ba0-5c6b-4f57-8b5c-3a6a0c4c6f10"


def insert(entity: str, data: dict[str, Any]) -> dict[str, Any]:
    return ENTITIES[entity].validate_insert(data, now=NOW)


def errors(entity: str, data: dict[str, Any]) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as info:
        insert(entity, data)
    return info.value


# -- services ----------------------------------------------------------------------------------


def test_service_defaults() -> None:
    svc = insert("services", {"host": "example.com"})
    assert uuid.UUID(svc["id"])
    assert svc["created_at"] == svc["updated_at"] == NOW
    expected = {
        "name": None,
        "retries": 5,
        "protocol": "http",
        "host": "example.com",
        "port": 80,
        "path": None,
        "connect_timeout": 60000,
        "write_timeout": 60000,
        "read_timeout": 60000,
        "tags": None,
        "client_certificate": None,
        "tls_verify": None,
        "tls_verify_depth": None,
        "ca_certificates": None,
        "enabled": True,
    }
    assert {k: svc[k] for k in expected} == expected


@pytest.mark.parametrize("entity", ["services", "routes", "consumers", "upstreams"])
def test_defaults_are_what_an_insert_fills_in(entity: str) -> None:
    schema = ENTITIES[entity]
    defaults = schema.defaults()
    assert set(defaults) == set(schema.fields)
    assert defaults["id"] is None
    # every default is the value an insert gives a field it was not sent
    required = {"services": {"host": "example.com"}, "routes": {"paths": ["/"]}}
    required |= {"consumers": {"username": "u"}, "upstreams": {"name": "up"}}
    stored = insert(entity, required[entity])
    for name, value in defaults.items():
        if name not in required[entity] and name not in ("id", "created_at", "updated_at"):
            assert stored[name] == value, name
    # the mutable defaults are fresh copies: changing one changes no later entity
    for value in schema.defaults().values():
        if isinstance(value, list | dict):
            value.clear()
    assert schema.defaults() == defaults


@pytest.mark.parametrize(
    ("url", "protocol", "host", "port", "path"),
    [
        ("http://example.com", "http", "example.com", 80, None),
        ("https://example.com", "https", "example.com", 443, None),
        ("https://example.com:8443/api/v1", "https", "example.com", 8443, "/api/v1"),
        ("grpc://grpc.local:9000", "grpc", "grpc.local", 9000, None),
        ("ws://ws.local/chat", "ws", "ws.local", 80, "/chat"),
        ("wss://ws.local", "wss", "ws.local", 443, None),
        ("http://10.0.0.1:81/", "http", "10.0.0.1", 81, "/"),
        ("http://[::1]:8080/x", "http", "::1", 8080, "/x"),
    ],
)
def test_service_url_shorthand(
    url: str, protocol: str, host: str, port: int, path: str | None
) -> None:
    svc = insert("services", {"url": url})
    assert (svc["protocol"], svc["host"], svc["port"], svc["path"]) == (
        protocol,
        host,
        port,
        path,
    )
    assert "url" not in svc


def test_service_url_errors() -> None:
    assert errors("services", {"url": 42}).fields == {"url": "expected a string"}
    assert errors("services", {"url": "http:///path"}).fields == {"host": "required field missing"}


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        ({}, {"host": "required field missing"}),
        ({"host": "a b"}, {"host": "invalid value: a b"}),
        ({"host": "example.com:80"}, {"host": "must not have a port"}),
        ({"host": "x", "port": 65536}, {"port": "value should be between 0 and 65535"}),
        (
            {"host": "x", "protocol": "ftp"},
            {
                "protocol": "expected one of: "
                + ", ".join(
                    (
                        "grpc",
                        "grpcs",
                        "http",
                        "https",
                        "tcp",
                        "tls",
                        "tls_passthrough",
                        "udp",
                        "ws",
                        "wss",
                    )
                )
            },
        ),
        ({"host": "x", "retries": 32768}, {"retries": "value should be between 0 and 32767"}),
        (
            {"host": "x", "connect_timeout": 0},
            {"connect_timeout": "value should be between 1 and 2147483646"},
        ),
        (
            {"host": "x", "read_timeout": 2**31 - 1},
            {"read_timeout": "value should be between 1 and 2147483646"},
        ),
        ({"host": "x", "path": "api"}, {"path": "should start with: /"}),
        ({"host": "x", "path": "/a//b"}, {"path": "must not have empty segments"}),
        (
            {"host": "x", "path": "/a b"},
            {
                "path": "invalid path: '/a b' (characters outside of the reserved list of RFC 3986 "
                "found)"
            },
        ),
        ({"host": "x", "path": "/a%zz"}, {"path": "invalid url-encoded value: '%zz'"}),
        (
            {"host": "x", "name": "my service"},
            {
                "name": "invalid value 'my service': the only accepted ascii characters are "
                "alphanumerics or ., -, _, and ~"
            },
        ),
        (
            {"host": "x", "tags": ["a,b"]},
            {
                "tags": [
                    "invalid tag 'a,b': expected printable ascii (except `,` and `/`) or "
                    "valid utf-8 sequences"
                ]
            },
        ),
        ({"host": "x", "enabled": "yes"}, {"enabled": "expected a boolean"}),
        ({"host": "x", "bogus": 1}, {"bogus": "unknown field"}),
    ],
)
def test_service_field_errors(data: dict[str, Any], fields: dict[str, Any]) -> None:
    assert errors("services", data).fields == fields


def test_service_utf8_name_accepted() -> None:
    assert insert("services", {"host": "x", "name": "café~1.0_a-b"})["name"] == "café~1.0_a-b"


def test_service_protocol_rules() -> None:
    err = errors("services", {"host": "x", "protocol": "tcp", "path": "/a"})
    assert err.fields == {"path": "value must be null"}
    err = errors(
        "services",
        {"host": "x", "protocol": "http", "tls_verify": True, "tls_verify_depth": 2},
    )
    assert err.fields == {
        "tls_verify": "value must be null",
        "tls_verify_depth": "value must be null",
    }
    assert err.message == (
        "2 schema violations (tls_verify: value must be null; tls_verify_depth: value must be null)"
    )
    ok = insert(
        "services",
        {
            "url": "https://x",
            "tls_verify": True,
            "tls_verify_depth": 3,
            "ca_certificates": [SVC_ID],
        },
    )
    assert ok["tls_verify"] is True
    assert ok["ca_certificates"] == [SVC_ID]


def test_schema_violation_message_shapes() -> None:
    one = errors("services", {})
    assert one.message == "schema violation (host: required field missing)"
    assert one.body() == {
        "code": 2,
        "name": "schema violation",
        "message": "schema violation (host: required field missing)",
        "fields": {"host": "required field missing"},
    }


def test_service_patch_merges_and_url_rewrites() -> None:
    schema = ENTITIES["services"]
    svc = insert("services", {"name": "s", "url": "http://a.example/x", "tags": ["t1"]})
    patched = schema.validate_update(svc, {"url": "https://b.example:8443"}, now=NOW + 5)
    assert (patched["protocol"], patched["host"], patched["port"], patched["path"]) == (
        "https",
        "b.example",
        8443,
        None,
    )
    assert patched["name"] == "s"
    assert patched["tags"] == ["t1"]
    assert patched["created_at"] == NOW
    assert patched["updated_at"] == NOW + 5
    assert patched["id"] == svc["id"]
    cleared = schema.validate_update(svc, {"tags": None}, now=NOW)
    assert cleared["tags"] is None
    with pytest.raises(SchemaViolation):
        schema.validate_update(svc, {"retries": -1}, now=NOW)


def test_validate_replace_resets_to_defaults() -> None:
    schema = ENTITIES["services"]
    svc = schema.validate_replace(SVC_ID, {"host": "x", "retries": 1}, now=NOW, created_at=5)
    again = schema.validate_replace(SVC_ID, {"host": "x"}, now=NOW, created_at=svc["created_at"])
    assert again["retries"] == 5
    assert again["created_at"] == 5


# -- routes ------------------------------------------------------------------------------------


def test_route_defaults() -> None:
    route = insert("routes", {"paths": ["/"], "service": SVC_ID})
    expected = {
        "protocols": ["http", "https"],
        "methods": None,
        "hosts": None,
        "paths": ["/"],
        "headers": None,
        "https_redirect_status_code": 426,
        "regex_priority": 0,
        "strip_path": True,
        "path_handling": "v0",
        "preserve_host": False,
        "request_buffering": True,
        "response_buffering": True,
        "snis": None,
        "sources": None,
        "destinations": None,
        "tags": None,
        "service": {"id": SVC_ID},
    }
    assert {k: route[k] for k in expected} == expected


def test_route_service_by_record() -> None:
    route = insert("routes", {"paths": ["/"], "service": {"id": SVC_ID}})
    assert route["service"] == {"id": SVC_ID}
    err = errors("routes", {"paths": ["/"], "service": {"id": "nope"}})
    assert err.fields == {"service": {"id": "expected a valid UUID"}}


def test_route_needs_a_matching_field() -> None:
    assert errors("routes", {}).fields == {
        "@entity": [
            "must set one of 'methods', 'hosts', 'headers', 'paths', 'snis' when "
            "'protocols' is 'https'"
        ]
    }
    assert errors("routes", {"protocols": ["http"]}).fields == {
        "@entity": [
            "must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http'"
        ]
    }
    assert errors("routes", {"protocols": ["tcp"]}).fields == {
        "@entity": [
            "must set one of 'sources', 'destinations', 'snis' when 'protocols' is "
            "'tcp', 'tls' or 'udp'"
        ]
    }
    assert errors("routes", {"protocols": ["tls_passthrough"]}).fields == {
        "@entity": ["must set snis when 'protocols' is 'tls_passthrough'"]
    }
    assert errors("routes", {"protocols": ["grpc"]}).fields == {
        "@entity": ["must set one of 'hosts', 'headers', 'paths' when 'protocols' is 'grpc'"]
    }
    for data in ({"methods": ["GET"]}, {"hosts": ["a.com"]}, {"headers": {"x-a": ["1"]}}):
        insert("routes", data)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("api", "should start with: / (fixed path) or ~/ (regex path)"),
        ("~api", "should start with: / (fixed path) or ~/ (regex path)"),
        ("/a//b", "must not have empty segments"),
        (
            "/a b",
            "invalid path: '/a b' (characters outside of the reserved list of RFC 3986 found)",
        ),
    ],
)
def test_route_path_errors(path: str, message: str) -> None:
    assert errors("routes", {"paths": ["/ok", path]}).fields == {"paths": [None, message]}


def test_route_regex_paths() -> None:
    route = insert("routes", {"paths": [r"~/users/(?<id>\d+)$", "~/v[0-9]+/"]})
    assert route["paths"] == [r"~/users/(?<id>\d+)$", "~/v[0-9]+/"]
    err = errors("routes", {"paths": ["~/a(b"]})
    assert err.fields is not None
    assert err.fields["paths"][0].startswith("invalid regex: '/a(b'")


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("*.example.com", None),
        ("example.*", None),
        ("example.com:8000", None),
        ("*.example.com:8443", None),
        ("10.0.0.1", None),
        ("[::1]:80", None),
        ("a.*.com", "wildcard must be leftmost or rightmost character"),
        ("*.a.*", "only one wildcard must be specified"),
        ("exa mple.com", "invalid value: exa mple.com"),
        ("example.com:99999", "invalid value: example.com:99999"),
    ],
)
def test_route_hosts(host: str, message: str | None) -> None:
    if message is None:
        assert insert("routes", {"hosts": [host]})["hosts"] == [host]
    else:
        assert errors("routes", {"hosts": [host]}).fields == {"hosts": [message]}


def test_route_methods_and_headers() -> None:
    assert errors("routes", {"methods": ["get"]}).fields == {"methods": ["invalid value: get"]}
    route = insert("routes", {"methods": ["GET", "GET", "POST"]})
    assert route["methods"] == ["GET", "POST"]  # a set
    route = insert("routes", {"headers": {"x-version": ["1", "2"]}})
    assert route["headers"] == {"x-version": ["1", "2"]}
    assert errors("routes", {"headers": {"Host": ["a"]}}).fields == {
        "headers": {
            "Host": "cannot contain 'host' header, which must be specified in the 'hosts' attribute"
        }
    }
    assert errors("routes", {"headers": {"x-a": "1"}}).fields == {
        "headers": {"x-a": "expected an array"}
    }


def test_route_protocol_specific_fields() -> None:
    assert errors("routes", {"protocols": ["http"], "paths": ["/"], "snis": ["a.com"]}).fields == {
        "snis": "'snis' can only be set when 'protocols' is 'grpcs', 'https', 'tls', "
        "'tls_passthrough', or 'wss'"
    }
    assert insert("routes", {"protocols": ["https"], "snis": ["a.com"]})["snis"] == ["a.com"]
    assert errors("routes", {"paths": ["/"], "sources": [{"ip": "10.0.0.0/8"}]}).fields == {
        "sources": "cannot set 'sources' when 'protocols' is 'http' or 'https'"
    }
    stream = insert(
        "routes",
        {"protocols": ["tcp", "tls"], "destinations": [{"ip": "10.0.0.1", "port": 443}]},
    )
    assert stream["destinations"] == [{"ip": "10.0.0.1", "port": 443}]
    assert errors("routes", {"protocols": ["tcp"], "sources": [{}]}).fields == {
        "sources": [{"@entity": ["at least one of these fields must be non-empty: 'ip', 'port'"]}]
    }
    assert errors(
        "routes", {"protocols": ["tcp"], "paths": ["/"], "sources": [{"port": 1}]}
    ).fields == {
        "paths": "cannot set 'paths' when 'protocols' is 'tcp', 'tls', 'tls_passthrough' or 'udp'"
    }
    assert errors("routes", {"protocols": ["http", "tcp"], "paths": ["/"]}).fields == {
        "protocols": "these sets are mutually exclusive: ('http', 'https'), ('tcp', 'tls', "
        "'udp'), ('tls_passthrough'), ('grpc', 'grpcs'), ('ws', 'wss')"
    }


def test_grpc_route_strip_path() -> None:
    route = insert("routes", {"protocols": ["grpc", "grpcs"], "paths": ["/svc.Echo/"]})
    assert route["strip_path"] is False
    assert errors("routes", {"protocols": ["grpc"], "paths": ["/"], "strip_path": True}).fields == {
        "strip_path": "cannot set 'strip_path' when 'protocols' is 'grpc' or 'grpcs'"
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("https_redirect_status_code", 300, "expected one of: 426, 301, 302, 307, 308"),
        ("path_handling", "v2", "expected one of: v0, v1"),
        ("regex_priority", "1", "expected an integer"),
        ("strip_path", None, "required field missing"),
        ("snis", ["10.0.0.1"], ["must not be an IP"]),
        ("snis", ["a.com:443"], ["must not have a port"]),
        ("protocols", [], "length must be at least 1"),
    ],
)
def test_route_field_errors(field: str, value: Any, message: Any) -> None:
    data = {"protocols": ["https"], "paths": ["/"], field: value}
    assert errors("routes", data).fields == {field: message}


def test_route_patch_replaces_arrays_and_maps() -> None:
    schema = ENTITIES["routes"]
    route = insert("routes", {"paths": ["/a", "/b"], "headers": {"x-a": ["1"], "x-b": ["2"]}})
    patched = schema.validate_update(route, {"paths": ["/c"], "headers": {"x-c": ["3"]}}, now=NOW)
    assert patched["paths"] == ["/c"]
    assert patched["headers"] == {"x-c": ["3"]}  # maps are replaced, not merged
    with pytest.raises(SchemaViolation) as info:
        schema.validate_update(route, {"paths": None, "headers": None}, now=NOW)
    assert "@entity" in (info.value.fields or {})


# -- consumers and key-auth credentials --------------------------------------------------------


def test_consumer_needs_username_or_custom_id() -> None:
    assert errors("consumers", {}).fields == {
        "@entity": ["at least one of these fields must be non-empty: 'custom_id', 'username'"]
    }
    assert insert("consumers", {"custom_id": "c1"})["username"] is None
    assert ENTITIES["consumers"].endpoint_key == "username"
    assert ENTITIES["consumers"].unique_fields() == ["username", "custom_id"]


def test_keyauth_key_generated_on_insert_only() -> None:
    schema = ENTITIES["keyauth_credentials"]
    cred = insert("keyauth_credentials", {"consumer": {"id": SVC_ID}})
    assert len(cred["key"]) == 32
    int(cred["key"], 16)
    assert cred["consumer"] == {"id": SVC_ID}
    assert cred["ttl"] is None
    patched = schema.validate_update(cred, {"tags": ["x"]}, now=NOW)
    assert patched["key"] == cred["key"]
    given = insert("keyauth_credentials", {"consumer": SVC_ID, "key": "secret", "ttl": 10})
    assert (given["key"], given["ttl"]) == ("secret", 10)
    assert errors("keyauth_credentials", {"key": "k"}).fields == {
        "consumer": "required field missing"
    }


def test_entity_metadata() -> None:
    expected = {
        "services": ("services", "name", None, ()),
        "routes": ("routes", "name", None, ()),
        "consumers": ("consumers", "username", None, ()),
        "plugins": ("plugins", "instance_name", None, ("name", "route", "service", "consumer")),
        "upstreams": ("upstreams", "name", None, ()),
        "targets": ("targets", "target", "upstream", ("upstream", "target")),
        "certificates": ("certificates", None, None, ()),
        "snis": ("snis", "name", None, ()),
        "ca_certificates": ("ca_certificates", None, None, ()),
        "keyauth_credentials": ("key-auths", "key", "consumer", ("key",)),
    }
    assert set(ENTITIES) == set(expected)
    for name, (path, key, owner, cache_key) in expected.items():
        schema = ENTITIES[name]
        assert (schema.admin_path, schema.endpoint_key, schema.owner, schema.cache_key) == (
            path,
            key,
            owner,
            cache_key,
        ), name
    on_delete = {
        (e, f): field.on_delete
        for e, s in ENTITIES.items()
        for f, field in s.foreign_keys().items()
    }
    assert on_delete == {
        ("routes", "service"): "restrict",
        ("services", "client_certificate"): "restrict",
        ("upstreams", "client_certificate"): "restrict",
        ("plugins", "route"): "cascade",
        ("plugins", "service"): "cascade",
        ("plugins", "consumer"): "cascade",
        ("targets", "upstream"): "cascade",
        ("snis", "certificate"): "cascade",
        ("keyauth_credentials", "consumer"): "cascade",
    }


def test_dependency_order() -> None:
    names = list(ENTITIES)
    for name, schema in ENTITIES.items():
        for field in schema.foreign_keys().values():
            assert names.index(field.reference) < names.index(name)
