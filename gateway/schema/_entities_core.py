"""Services, routes, consumers and key-auth credentials (Kong 3.x schemas)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from gateway.schema import _entities_types as t
from gateway.schema._entity import EntitySchema
from gateway.schema._errors import SchemaViolation
from gateway.schema._fields import Array, Boolean, Integer, Set, String, Uuid

# -- services ---------------------------------------------------------------------------------

_URL_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def expand_service_url(data: dict[str, Any]) -> dict[str, Any]:
    """Kong's ``url`` shorthand: ``url`` sets ``protocol``, ``host``, ``port`` and ``path``.

    As in Kong, a URL without a scheme takes its protocol from the port (80: http, 443:
    https) or defaults to http; a URL without a path sets ``path`` to null.
    """
    if "url" not in data:
        return data
    url = data.pop("url")
    if url is None:
        return data
    if not isinstance(url, str):
        raise SchemaViolation({"url": "expected a string"})
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    host, port_text = t.split_host_port(netloc) if netloc else ("", None)
    port: int | None = None
    if port_text:
        if not port_text.isdigit():
            raise SchemaViolation({"url": f"invalid url: {url}"})
        port = int(port_text)
    protocol = parts.scheme or {80: "http", 443: "https"}.get(port or 0) or "http"
    data["protocol"] = protocol
    data["host"] = host or None
    data["port"] = port if port is not None else _URL_DEFAULT_PORTS.get(protocol, 80)
    data["path"] = parts.path or None
    return data


SERVICES = EntitySchema(
    "services",
    [
        ("name", t.utf8_name()),
        ("retries", Integer(default=5, between=(0, 32767))),
        ("protocol", String(one_of=t.PROTOCOLS, required=True, default="http")),
        ("host", t.host(required=True)),
        ("port", t.port(required=True, default=80)),
        ("path", t.path()),
        ("connect_timeout", t.timeout(60000)),
        ("write_timeout", t.timeout(60000)),
        ("read_timeout", t.timeout(60000)),
        ("tags", t.tags()),
        ("client_certificate", t.foreign("certificates")),
        ("tls_verify", Boolean()),
        ("tls_verify_depth", Integer(between=(0, 64))),
        ("ca_certificates", Array(Uuid())),
        ("enabled", Boolean(required=True, default=True)),
    ],
    endpoint_key="name",
    preprocess=expand_service_url,
    entity_checks=[
        t.when(
            "protocol",
            t.in_("tcp", "tls", "tls_passthrough", "udp", "grpc", "grpcs"),
            "path",
            t.must_be_null,
        ),
        *(
            t.when("protocol", t.not_in(*t.TLS_UPSTREAM_PROTOCOLS), name, t.must_be_null)
            for name in ("client_certificate", "tls_verify", "tls_verify_depth", "ca_certificates")
        ),
    ],
)

# -- routes ------------------------------------------------------------------------------------


def _route_defaults(data: dict[str, Any]) -> dict[str, Any]:
    # Kong's grpc subschema turns the strip_path default to false.
    protocols = data.get("protocols")
    if (
        "strip_path" not in data
        and isinstance(protocols, list)
        and any(p in t.GRPC_PROTOCOLS for p in protocols)
    ):
        data["strip_path"] = False
    return data


_SNI_PROTOCOLS = ("grpcs", "https", "tls", "tls_passthrough", "wss")


def _check_route_snis(route: dict[str, Any]) -> dict[str, str] | None:
    protocols = route.get("protocols") or []
    if not t.is_empty(route.get("snis")) and all(p not in _SNI_PROTOCOLS for p in protocols):
        return {
            "snis": "'snis' can only be set when 'protocols' is 'grpcs', 'https', 'tls', "
            "'tls_passthrough', or 'wss'"
        }
    return None


def _must_set_one_of(route: dict[str, Any], names: tuple[str, ...], proto: str) -> str | None:
    if all(t.is_empty(route.get(n)) for n in names):
        return f"must set one of {t.quoted(names)} when 'protocols' is '{proto}'"
    return None


def _check_route_protocol_fields(route: dict[str, Any]) -> dict[str, Any] | None:
    """Kong's per-protocol route subschemas (``routes_subschemas.lua``)."""
    protocols: list[str] = route.get("protocols") or []
    errors: dict[str, Any] = {}

    def forbid(names: tuple[str, ...], label: str) -> None:
        for name in names:
            if not t.is_empty(route.get(name)):
                errors[name] = f"cannot set '{name}' when 'protocols' is {label}"

    entity: str | None = None
    if any(p in t.HTTP_PROTOCOLS for p in protocols):
        forbid(("sources", "destinations"), "'http' or 'https'")
        if "https" in protocols:
            entity = _must_set_one_of(
                route, ("methods", "hosts", "headers", "paths", "snis"), "https"
            )
        else:
            entity = _must_set_one_of(route, ("methods", "hosts", "headers", "paths"), "http")
    elif any(p in t.WS_PROTOCOLS for p in protocols):
        forbid(("methods", "sources", "destinations"), "'ws' or 'wss'")
        if "wss" in protocols:
            entity = _must_set_one_of(route, ("hosts", "headers", "paths", "snis"), "wss")
        else:
            entity = _must_set_one_of(route, ("hosts", "headers", "paths"), "ws")
    elif any(p in t.GRPC_PROTOCOLS for p in protocols):
        forbid(("methods", "sources", "destinations"), "'grpc' or 'grpcs'")
        if route.get("strip_path"):
            errors["strip_path"] = "cannot set 'strip_path' when 'protocols' is 'grpc' or 'grpcs'"
        if "grpcs" in protocols:
            entity = _must_set_one_of(route, ("hosts", "headers", "paths", "snis"), "grpcs")
        else:
            entity = _must_set_one_of(route, ("hosts", "headers", "paths"), "grpc")
    elif any(p in t.STREAM_PROTOCOLS for p in protocols):
        forbid(("methods", "hosts", "paths", "headers"), "'tcp', 'tls', 'tls_passthrough' or 'udp'")
        if "tls_passthrough" in protocols:
            if t.is_empty(route.get("snis")):
                entity = "must set snis when 'protocols' is 'tls_passthrough'"
        elif all(t.is_empty(route.get(n)) for n in ("sources", "destinations", "snis")):
            entity = (
                "must set one of 'sources', 'destinations', 'snis' when 'protocols' is "
                "'tcp', 'tls' or 'udp'"
            )
    if entity:
        errors.setdefault("@entity", []).append(entity)
    return errors or None


ROUTES = EntitySchema(
    "routes",
    [
        ("name", t.utf8_name()),
        ("protocols", t.protocol_set(default=t.HTTP_PROTOCOLS)),
        ("methods", Set(String(match=r"[A-Z]+"))),
        ("hosts", Array(t.wildcard_host())),
        ("paths", Array(String(checks=[t.check_router_path]))),
        ("headers", t.header_map(forbid_host=True)),
        (
            "https_redirect_status_code",
            Integer(one_of=(426, 301, 302, 307, 308), default=426, required=True),
        ),
        ("regex_priority", Integer(default=0)),
        ("strip_path", Boolean(required=True, default=True)),
        ("path_handling", String(one_of=("v0", "v1"), default="v0")),
        ("preserve_host", Boolean(required=True, default=False)),
        ("request_buffering", Boolean(required=True, default=True)),
        ("response_buffering", Boolean(required=True, default=True)),
        ("snis", Set(t.sni())),
        ("sources", t.cidr_port_set()),
        ("destinations", t.cidr_port_set()),
        ("tags", t.tags()),
        ("service", t.foreign("services")),
    ],
    endpoint_key="name",
    preprocess=_route_defaults,
    entity_checks=[_check_route_snis, _check_route_protocol_fields],
)

# -- consumers and key-auth credentials -------------------------------------------------------

CONSUMERS = EntitySchema(
    "consumers",
    [
        ("username", String(unique=True)),
        ("custom_id", String(unique=True)),
        ("tags", t.tags()),
    ],
    endpoint_key="username",
    entity_checks=[t.at_least_one_of("custom_id", "username")],
)


def generate_key_auth_key(data: dict[str, Any]) -> dict[str, Any]:
    """Kong generates a missing key-auth ``key`` (a random UUID in hex) on insert."""
    if data.get("key") is None:
        data["key"] = uuid.uuid4().hex
    return data


KEYAUTH_CREDENTIALS = EntitySchema(
    "keyauth_credentials",
    [
        ("consumer", t.foreign("consumers", required=True, on_delete="cascade")),
        ("key", String(required=True, unique=True, auto=True, secret=True)),
        ("ttl", Integer(between=(0, 100_000_000))),
        ("tags", t.tags()),
    ],
    endpoint_key="key",
    cache_key=("key",),
    admin_path="key-auths",
    owner="consumer",
    on_insert=generate_key_auth_key,
)

__all__ = ["CONSUMERS", "KEYAUTH_CREDENTIALS", "ROUTES", "SERVICES"]
