"""Upstreams (with Kong's health-check record) and targets."""

from __future__ import annotations

from typing import Any

from gateway.schema import _entities_types as t
from gateway.schema._entity import EntitySchema
from gateway.schema._fields import Array, Boolean, Integer, Number, Record, String

HASH_ON = ("none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture")
ALGORITHMS = ("consistent-hashing", "least-connections", "round-robin", "latency")
CHECK_TYPES = ("tcp", "http", "https", "grpc", "grpcs")
DEFAULT_TARGET_PORT = 8000


_PASSIVE_HEALTHY = [200, 201, 202, 203, 204, 205, 206, 207, 208, 226]
_PASSIVE_HEALTHY += [300, 301, 302, 303, 304, 305, 306, 307, 308]


def _statuses(default: list[int]) -> Array:
    return Array(Integer(between=(100, 999)), default=default)


def _seconds(default: float) -> Number:
    return Number(between=(0, 65535), default=default)


def _counter() -> Integer:
    return Integer(between=(0, 255), default=0)


def _record(fields: list[tuple[str, Any]]) -> Record:
    return Record(fields, required=True)


HEALTHCHECKS = _record(
    [
        (
            "active",
            _record(
                [
                    ("type", String(one_of=CHECK_TYPES, default="http")),
                    ("timeout", _seconds(1)),
                    ("concurrency", Integer(between=(1, 2**31), default=10)),
                    ("http_path", t.path(default="/")),
                    ("https_sni", t.sni()),
                    ("https_verify_certificate", Boolean(default=True)),
                    ("headers", t.header_map()),
                    (
                        "healthy",
                        _record(
                            [
                                ("interval", _seconds(0)),
                                ("http_statuses", _statuses([200, 302])),
                                ("successes", _counter()),
                            ]
                        ),
                    ),
                    (
                        "unhealthy",
                        _record(
                            [
                                ("interval", _seconds(0)),
                                (
                                    "http_statuses",
                                    _statuses([429, 404, 500, 501, 502, 503, 504, 505]),
                                ),
                                ("tcp_failures", _counter()),
                                ("timeouts", _counter()),
                                ("http_failures", _counter()),
                            ]
                        ),
                    ),
                ]
            ),
        ),
        (
            "passive",
            _record(
                [
                    ("type", String(one_of=CHECK_TYPES, default="http")),
                    (
                        "healthy",
                        _record(
                            [
                                (
                                    "http_statuses",
                                    _statuses(_PASSIVE_HEALTHY),
                                ),
                                ("successes", _counter()),
                            ]
                        ),
                    ),
                    (
                        "unhealthy",
                        _record(
                            [
                                ("http_statuses", _statuses([429, 500, 503])),
                                ("tcp_failures", _counter()),
                                ("timeouts", _counter()),
                                ("http_failures", _counter()),
                            ]
                        ),
                    ),
                ]
            ),
        ),
        ("threshold", Number(between=(0, 100), default=0)),
    ]
)


def check_upstream_name(name: str) -> str | None:
    host, port = t.split_host_port(name)
    kind = t.host_kind(host)
    if kind is None:
        return f"Invalid name ('{name}'); must be a valid hostname"
    if kind != "name":
        return f"Invalid name ('{name}'); no ip addresses allowed"
    if port is not None:
        return f"Invalid name ('{name}'); no port allowed"
    return None


def _fallback_differs(hash_on: str) -> Any:
    choices = tuple(h for h in HASH_ON if h != hash_on)
    return t.when("hash_on", t.equals(hash_on), "hash_fallback", t.one_of(*choices))


UPSTREAMS = EntitySchema(
    "upstreams",
    [
        ("name", String(required=True, unique=True, checks=[check_upstream_name])),
        ("algorithm", String(one_of=ALGORITHMS, default="round-robin")),
        ("hash_on", String(one_of=HASH_ON, default="none")),
        ("hash_fallback", String(one_of=HASH_ON, default="none")),
        ("hash_on_header", t.header_name()),
        ("hash_fallback_header", t.header_name()),
        ("hash_on_cookie", String(checks=[t.check_cookie_name])),
        ("hash_on_cookie_path", t.path(default="/")),
        ("hash_on_query_arg", String(len_min=1)),
        ("hash_fallback_query_arg", String(len_min=1)),
        ("hash_on_uri_capture", String(len_min=1)),
        ("hash_fallback_uri_capture", String(len_min=1)),
        ("slots", Integer(between=(10, 2**16), default=10000)),
        ("healthchecks", HEALTHCHECKS),
        ("tags", t.tags()),
        ("host_header", t.host()),
        ("client_certificate", t.foreign("certificates")),
        ("use_srv_name", Boolean(default=False)),
    ],
    endpoint_key="name",
    entity_checks=[
        t.when("hash_on", t.equals("header"), "hash_on_header", t.required),
        t.when("hash_fallback", t.equals("header"), "hash_fallback_header", t.required),
        t.when("hash_on", t.equals("cookie"), "hash_on_cookie", t.required),
        t.when("hash_fallback", t.equals("cookie"), "hash_on_cookie", t.required),
        t.when("hash_on", t.equals("query_arg"), "hash_on_query_arg", t.required),
        t.when("hash_fallback", t.equals("query_arg"), "hash_fallback_query_arg", t.required),
        t.when("hash_on", t.equals("uri_capture"), "hash_on_uri_capture", t.required),
        t.when("hash_fallback", t.equals("uri_capture"), "hash_fallback_uri_capture", t.required),
        t.when("hash_on", t.equals("none"), "hash_fallback", t.one_of("none")),
        t.when("hash_on", t.equals("cookie"), "hash_fallback", t.one_of("none")),
        _fallback_differs("consumer"),
        _fallback_differs("ip"),
        _fallback_differs("path"),
        t.distinct("hash_on_header", "hash_fallback_header"),
        t.distinct("hash_on_query_arg", "hash_fallback_query_arg"),
        t.distinct("hash_on_uri_capture", "hash_fallback_uri_capture"),
    ],
)


def normalize_target(value: str) -> str | None:
    """``"host"`` -> ``"host:8000"``; ``"::1"`` / ``"[::1]"`` -> ``"[::1]:8000"``; None if the
    value is not ``host[:port]``."""
    host, port_text = t.split_host_port(value)
    kind = t.host_kind(host)
    if kind is None:
        return None
    port = DEFAULT_TARGET_PORT
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            return None
        port = int(port_text)
    if kind == "ipv6":
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _normalize_target_field(data: dict[str, Any]) -> dict[str, Any]:
    value = data.get("target")
    if isinstance(value, str):
        data["target"] = normalize_target(value) or value
    return data


def check_target(value: str) -> str | None:
    if normalize_target(value) != value:
        return f"Invalid target ('{value}'); not a valid hostname or ip address"
    return None


TARGETS = EntitySchema(
    "targets",
    [
        ("upstream", t.foreign("upstreams", required=True, on_delete="cascade")),
        ("target", String(required=True, checks=[check_target])),
        ("weight", Integer(between=(0, 65535), default=100)),
        ("tags", t.tags()),
    ],
    endpoint_key="target",
    cache_key=("upstream", "target"),
    owner="upstream",
    preprocess=_normalize_target_field,
)


class TimestampMs(Number):
    """Kong's ``auto_timestamp_ms``: seconds since the epoch with millisecond decimals
    (targets are ordered by it)."""

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["timestamp"] = True
        return out


TARGETS.fields["created_at"] = TimestampMs(auto=True)
TARGETS.fields["updated_at"] = TimestampMs(auto=True)
