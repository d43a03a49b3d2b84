"""Plugins, upstreams, targets, certificates, SNIs and CA certificates."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.schema import SchemaViolation
from gateway.schema.entities import ENTITIES, certificate_digest, normalize_target
from schema.standins import Pem

NOW = 1_700_000_000
ID = "9c1f2ba0-5c6b-4f57-8b5c-3a6a0c4c6f10"


def insert(entity: str, data: dict[str, Any]) -> dict[str, Any]:
    return ENTITIES[entity].validate_insert(data, now=NOW)


def fields(entity: str, data: dict[str, Any]) -> Any:
    with pytest.raises(SchemaViolation) as info:
        insert(entity, data)
    return info.value.fields


# -- plugins -----------------------------------------------------------------------------------


def test_plugin_defaults_filled_from_plugin_schema() -> None:
    plugin = insert("plugins", {"name": "key-auth", "service": ID})
    assert plugin["config"] == {
        "key_names": ["apikey"],
        "hide_credentials": False,
        "anonymous": None,
        "key_in_header": True,
        "key_in_query": True,
        "key_in_body": False,
        "run_on_preflight": True,
    }
    assert plugin["protocols"] == ["grpc", "grpcs", "http", "https", "ws", "wss"]
    assert plugin["enabled"] is True
    assert (plugin["route"], plugin["service"], plugin["consumer"]) == (None, {"id": ID}, None)
    assert plugin["instance_name"] is None
    assert list(plugin) == list(ENTITIES["plugins"].fields)


def test_plugin_unknown_name() -> None:
    assert fields("plugins", {"name": "nope"}) == {
        "name": "plugin 'nope' not enabled; add it to the 'plugins' configuration property"
    }
    assert fields("plugins", {}) == {"name": "required field missing"}


def test_plugin_config_errors_nested_under_config() -> None:
    err = fields("plugins", {"name": "rate-limiting", "config": {"minute": -1, "bogus": 1}})
    assert err == {"config": {"minute": "value must be greater than 0", "bogus": "unknown field"}}
    err = fields("plugins", {"name": "rate-limiting", "config": {}})
    assert err == {
        "config": {
            "@entity": [
                "at least one of these fields must be non-empty: 'config.second', "
                "'config.minute', 'config.hour', 'config.day', 'config.month', 'config.year'"
            ]
        }
    }
    with pytest.raises(SchemaViolation) as info:
        insert("plugins", {"name": "rate-limiting", "config": {"minute": 0}, "enabled": 1})
    assert info.value.message == (
        "2 schema violations (config.minute: value must be greater than 0; enabled: expected "
        "a boolean)"
    )


def test_plugin_scope_restrictions_and_protocols() -> None:
    assert fields("plugins", {"name": "key-auth", "consumer": ID}) == {
        "consumer": "value must be null"
    }
    assert fields("plugins", {"name": "route-only", "service": ID}) == {
        "service": "value must be null"
    }
    assert fields("plugins", {"name": "cors", "protocols": ["http", "grpc"]}) == {
        "protocols": [None, "expected one of: http, https"]
    }
    assert insert("plugins", {"name": "cors"})["protocols"] == ["http", "https"]
    rl = insert("plugins", {"name": "rate-limiting", "consumer": ID, "config": {"minute": 5}})
    assert rl["consumer"] == {"id": ID}


def test_plugin_patch_merges_config_deeply() -> None:
    schema = ENTITIES["plugins"]
    rl = insert(
        "plugins",
        {"name": "rate-limiting", "config": {"minute": 5, "redis": {"host": "r1"}}},
    )
    patched = schema.validate_update(
        rl, {"config": {"hour": 100, "redis": {"port": 6380}}}, now=NOW
    )
    assert patched["config"]["minute"] == 5
    assert patched["config"]["hour"] == 100
    assert patched["config"]["redis"] == {"host": "r1", "port": 6380, "timeout": 2000}
    disabled = schema.validate_update(rl, {"enabled": False}, now=NOW)
    assert disabled["config"] == rl["config"]


# -- upstreams and targets ---------------------------------------------------------------------


def test_upstream_defaults_and_healthchecks() -> None:
    up = insert("upstreams", {"name": "backend.svc"})
    assert up["algorithm"] == "round-robin"
    assert (up["hash_on"], up["hash_fallback"], up["hash_on_cookie_path"]) == ("none", "none", "/")
    assert up["slots"] == 10000
    assert up["use_srv_name"] is False
    hc = up["healthchecks"]
    assert hc["threshold"] == 0
    assert hc["active"]["type"] == "http"
    assert hc["active"]["timeout"] == 1
    assert hc["active"]["concurrency"] == 10
    assert hc["active"]["http_path"] == "/"
    assert hc["active"]["https_verify_certificate"] is True
    assert hc["active"]["healthy"] == {"interval": 0, "http_statuses": [200, 302], "successes": 0}
    assert hc["active"]["unhealthy"]["http_statuses"] == [429, 404, 500, 501, 502, 503, 504, 505]
    assert hc["passive"]["unhealthy"] == {
        "http_statuses": [429, 500, 503],
        "tcp_failures": 0,
        "timeouts": 0,
        "http_failures": 0,
    }
    assert len(hc["passive"]["healthy"]["http_statuses"]) == 19


def test_upstream_healthcheck_partial_and_patch() -> None:
    up = insert(
        "upstreams",
        {"name": "u", "healthchecks": {"active": {"healthy": {"interval": 5, "successes": 2}}}},
    )
    assert up["healthchecks"]["active"]["healthy"] == {
        "interval": 5,
        "http_statuses": [200, 302],
        "successes": 2,
    }
    patched = ENTITIES["upstreams"].validate_update(
        up, {"healthchecks": {"active": {"unhealthy": {"tcp_failures": 3}}}}, now=NOW
    )
    assert patched["healthchecks"]["active"]["healthy"]["interval"] == 5
    assert patched["healthchecks"]["active"]["unhealthy"]["tcp_failures"] == 3
    assert fields("upstreams", {"name": "u", "healthchecks": {"threshold": 101}}) == {
        "healthchecks": {"threshold": "value should be between 0 and 100"}
    }
    assert fields(
        "upstreams", {"name": "u", "healthchecks": {"active": {"unhealthy": {"timeouts": 256}}}}
    ) == {
        "healthchecks": {"active": {"unhealthy": {"timeouts": "value should be between 0 and 255"}}}
    }


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        ({"name": "a b"}, {"name": "Invalid name ('a b'); must be a valid hostname"}),
        ({"name": "10.0.0.1"}, {"name": "Invalid name ('10.0.0.1'); no ip addresses allowed"}),
        ({"name": "a.com:80"}, {"name": "Invalid name ('a.com:80'); no port allowed"}),
        ({"name": "u", "slots": 9}, {"slots": "value should be between 10 and 65536"}),
        (
            {"name": "u", "algorithm": "random"},
            {
                "algorithm": "expected one of: consistent-hashing, least-connections, round-robin, "
                "latency"
            },
        ),
        ({"name": "u", "hash_on": "header"}, {"hash_on_header": "required field missing"}),
        ({"name": "u", "hash_on": "cookie"}, {"hash_on_cookie": "required field missing"}),
        ({"name": "u", "hash_on": "query_arg"}, {"hash_on_query_arg": "required field missing"}),
        (
            {"name": "u", "hash_on": "uri_capture"},
            {"hash_on_uri_capture": "required field missing"},
        ),
        ({"name": "u", "hash_fallback": "ip"}, {"hash_fallback": "expected one of: none"}),
        (
            {"name": "u", "hash_on": "ip", "hash_fallback": "ip"},
            {
                "hash_fallback": "expected one of: none, consumer, header, cookie, path, "
                "query_arg, uri_capture"
            },
        ),
        (
            {"name": "u", "hash_on": "cookie", "hash_on_cookie": "c", "hash_fallback": "ip"},
            {"hash_fallback": "expected one of: none"},
        ),
        (
            {
                "name": "u",
                "hash_on": "header",
                "hash_on_header": "x-a",
                "hash_fallback": "header",
                "hash_fallback_header": "x-a",
            },
            {
                "@entity": [
                    "values of these fields must be distinct: 'hash_on_header', "
                    "'hash_fallback_header'"
                ]
            },
        ),
    ],
)
def test_upstream_errors(data: dict[str, Any], errors: dict[str, Any]) -> None:
    assert fields("upstreams", data) == errors


def test_upstream_hashing_accepted() -> None:
    up = insert(
        "upstreams",
        {
            "name": "u",
            "algorithm": "consistent-hashing",
            "hash_on": "header",
            "hash_on_header": "x-user",
            "hash_fallback": "ip",
        },
    )
    assert up["hash_fallback"] == "ip"


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("example.com", "example.com:8000"),
        ("example.com:81", "example.com:81"),
        ("10.0.0.1", "10.0.0.1:8000"),
        ("::1", "[::1]:8000"),
        ("[::1]", "[::1]:8000"),
        ("[2001:db8::1]:9000", "[2001:db8::1]:9000"),
    ],
)
def test_target_normalised(given: str, normalised: str) -> None:
    assert normalize_target(given) == normalised
    target = insert("targets", {"target": given, "upstream": ID})
    assert target["target"] == normalised
    assert target["weight"] == 100


def test_target_errors() -> None:
    assert fields("targets", {"target": "a b", "upstream": ID}) == {
        "target": "Invalid target ('a b'); not a valid hostname or ip address"
    }
    assert fields("targets", {"target": "a:0", "upstream": ID}) == {
        "target": "Invalid target ('a:0'); not a valid hostname or ip address"
    }
    assert fields("targets", {"target": "a", "upstream": ID, "weight": 65536}) == {
        "weight": "value should be between 0 and 65535"
    }
    assert fields("targets", {"target": "a"}) == {"upstream": "required field missing"}
    ms = ENTITIES["targets"].validate_stored(
        {"id": ID, "target": "a", "upstream": ID, "created_at": 1700000000.123}
    )
    assert ms["created_at"] == 1700000000.123


# -- certificates, SNIs, CA certificates -------------------------------------------------------


def test_certificate_pairs(pem: Pem) -> None:
    cert = insert("certificates", {"cert": pem.ec_cert, "key": pem.key(pem.ec_key)})
    assert cert["cert_alt"] is None
    both = insert(
        "certificates",
        {
            "cert": pem.ec_cert,
            "key": pem.key(pem.ec_key),
            "cert_alt": pem.rsa_cert,
            "key_alt": pem.key(pem.rsa_key),
        },
    )
    assert both["key_alt"] == pem.key(pem.rsa_key)
    assert fields("certificates", {"cert": pem.ec_cert, "key": pem.key(pem.ec_key2)}) == {
        "@entity": ["certificate does not match key"]
    }
    assert fields(
        "certificates",
        {"cert": pem.ec_cert, "key": pem.key(pem.ec_key), "cert_alt": pem.rsa_cert},
    ) == {"@entity": ["all or none of these fields must be set: 'cert_alt', 'key_alt'"]}
    same_type = fields(
        "certificates",
        {
            "cert": pem.ec_cert,
            "key": pem.key(pem.ec_key),
            "cert_alt": pem.ca_cert,
            "key_alt": pem.key(pem.ec_key2),
        },
    )
    assert same_type == {
        "@entity": [
            "certificate and alternative certificate need to have different type (e.g. RSA "
            "and ECDSA), the provided certificates were both of the same type"
        ]
    }


def test_certificate_invalid_pem(pem: Pem) -> None:
    errors = fields("certificates", {"cert": "garbage", "key": "garbage"})
    assert errors["cert"].startswith("invalid certificate: ")
    assert errors["key"].startswith("invalid key: ")
    assert fields("certificates", {"key": pem.key(pem.ec_key)}) == {
        "cert": "required field missing"
    }


def test_snis(pem: Pem) -> None:
    sni = insert("snis", {"name": "*.example.com", "certificate": ID})
    assert sni["certificate"] == {"id": ID}
    assert fields("snis", {"name": "10.0.0.1", "certificate": ID}) == {"name": "must not be an IP"}
    assert fields("snis", {"name": "a.com:443", "certificate": ID}) == {
        "name": "must not have a port"
    }
    assert fields("snis", {"name": "a.*.com", "certificate": ID}) == {
        "name": "wildcard must be leftmost or rightmost character"
    }
    assert fields("snis", {"name": "a.com"}) == {"certificate": "required field missing"}


def test_ca_certificates(pem: Pem) -> None:
    ca = insert("ca_certificates", {"cert": pem.ca_cert})
    assert ca["cert_digest"] == certificate_digest(pem.ca_cert)
    assert len(ca["cert_digest"]) == 64
    assert fields("ca_certificates", {"cert": pem.ec_cert}) == {
        "cert": 'certificate does not appear to be a CA because it is missing the "CA" basic '
        "constraint"
    }
    assert fields("ca_certificates", {"cert": pem.expired_ca}) == {
        "cert": 'certificate expired, "Not After" time is in the past'
    }
    assert fields("ca_certificates", {"cert": pem.ca_cert + pem.ca_cert}) == {
        "cert": "please submit only one certificate at a time"
    }
