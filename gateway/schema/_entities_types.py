"""Kong's typedefs: the field types and checks shared by the core entities.

Error texts are Kong 3.x's (``kong/db/schema/typedefs.lua`` and the entity schemas), so that
clients that match on them keep working.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from gateway.schema._fields import (
    Array,
    EntityCheck,
    Foreign,
    Integer,
    Map,
    Record,
    Set,
    String,
)

#: Every protocol Kong 3.x knows (services take one, routes and plugins a set).
PROTOCOLS: tuple[str, ...] = (
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
HTTP_PROTOCOLS = ("http", "https")
STREAM_PROTOCOLS = ("tcp", "tls", "tls_passthrough", "udp")
GRPC_PROTOCOLS = ("grpc", "grpcs")
WS_PROTOCOLS = ("ws", "wss")
#: Protocols that carry TLS towards the upstream (service TLS fields are only for these).
TLS_UPSTREAM_PROTOCOLS = ("https", "wss", "tls")

MAX_TIMEOUT = 2**31 - 2

# -- host names and addresses -----------------------------------------------------------------

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def is_hostname(name: str) -> bool:
    """A DNS name (labels of letters, digits, ``-`` and ``_``; a trailing dot allowed)."""
    if not name or len(name) > 253:
        return False
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    return all(_LABEL.match(label) for label in labels)


def split_host_port(value: str) -> tuple[str, str | None]:
    """``"a:80"`` -> ``("a", "80")``, ``"[::1]:80"`` -> ``("::1", "80")``, ``"::1"`` ->
    ``("::1", None)``. The port is returned unparsed."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        host, rest = value[1:end], value[end + 1 :]
        if rest.startswith(":"):
            return host, rest[1:]
        return (host, None) if not rest else (value, None)
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, port
    return value, None


def host_kind(host: str) -> str | None:
    """``"ipv4"``, ``"ipv6"``, ``"name"`` or None (not a valid host)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "name" if is_hostname(host) else None
    return "ipv4" if ip.version == 4 else "ipv6"


def _parse_port(port: str) -> int | None:
    if not port.isdigit() or len(port) > 5:
        return None
    value = int(port)
    return value if 0 <= value <= 65535 else None


def check_host(value: str) -> str | None:
    """Kong's ``typedefs.host``: a name or an IP, without a port."""
    host, port = split_host_port(value)
    if host_kind(host) is None:
        return f"invalid value: {value}"
    if port is not None:
        return "must not have a port"
    return None


def check_host_with_optional_port(value: str) -> str | None:
    host, port = split_host_port(value)
    if host_kind(host) is None or (port is not None and _parse_port(port) is None):
        return f"invalid value: {value}"
    return None


def check_wildcard_host(value: str) -> str | None:
    """Kong's ``typedefs.wildcard_host``: one ``*`` as the leftmost or rightmost label."""
    if "*" in value:
        if value.count("*") > 1:
            return "only one wildcard must be specified"
        host, _ = split_host_port(value)
        if not (host.startswith("*.") or host.endswith(".*")):
            return "wildcard must be leftmost or rightmost character"
        value = value.replace("*", "wildcard")
    return check_host_with_optional_port(value)


def check_sni(value: str) -> str | None:
    """Kong's ``typedefs.sni`` (wildcards allowed as in ``wildcard_host``)."""
    host, port = split_host_port(value)
    probe = host.replace("*", "wildcard") if "*" in host else host
    kind = host_kind(probe)
    if kind is None:
        return f"invalid value: {value}"
    if kind != "name":
        return "must not be an IP"
    if port is not None:
        return "must not have a port"
    if "*" in host:
        return check_wildcard_host(host)
    return None


def check_ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"not an ip address: {value}"
    return None


def check_ip_or_cidr(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"invalid ip or cidr range: '{value}'"
    return None


# -- names, tags, paths, headers --------------------------------------------------------------

_UTF8_NAME_ASCII = re.compile(r"[A-Za-z0-9.\-_~]")


def check_utf8_name(value: str) -> str | None:
    """Kong's ``typedefs.utf8_name``: any non-ASCII character, or ASCII alphanumerics and
    ``. - _ ~``."""
    for ch in value:
        if ord(ch) < 128 and not _UTF8_NAME_ASCII.match(ch):
            return (
                f"invalid value '{value}': the only accepted ascii characters are "
                "alphanumerics or ., -, _, and ~"
            )
    return None


def check_tag(value: str) -> str | None:
    for ch in value:
        if ch in ",/" or (ord(ch) < 128 and not ch.isprintable()):
            return (
                f"invalid tag '{value}': expected printable ascii (except `,` and `/`) "
                "or valid utf-8 sequences"
            )
    return None


_PATH_CHARS = re.compile(r"^/[A-Za-z0-9.\-_~/%:@!$&'()*+,;=]*$")
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")


def check_path(value: str) -> str | None:
    """Kong's ``typedefs.path`` (after ``starts_with = "/"``)."""
    if "//" in value:
        return "must not have empty segments"
    if not _PATH_CHARS.match(value):
        return (
            f"invalid path: '{value}' (characters outside of the reserved list of RFC 3986 found)"
        )
    rest = _PCT.sub("___", value)
    idx = rest.find("%")
    if idx >= 0:
        return f"invalid url-encoded value: '{rest[idx : idx + 3]}'"
    return None


_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")


def compile_route_regex(pattern: str) -> re.Pattern[str]:
    """Compile a route's regex path (without its ``~``).

    PCRE named groups ``(?<name>...)`` become Python's ``(?P<name>...)``; the router should
    use the same function so that validation and matching agree.

    NOTE: Kong compiles with PCRE; syntax Python's ``re`` lacks is refused here, at
    validation, rather than failing at routing time (test_route_regex_paths).
    """
    return re.compile(_NAMED_GROUP.sub("(?P<", pattern))


def check_router_path(value: str) -> str | None:
    """Kong's ``typedefs.router_path``: ``/fixed`` or ``~/regex`` (the regex must compile)."""
    if value.startswith("~/"):
        try:
            compile_route_regex(value[1:])
        except re.error as exc:
            return f"invalid regex: '{value[1:]}' ({exc})"
        return None
    if value.startswith("/"):
        return check_path(value)
    return "should start with: / (fixed path) or ~/ (regex path)"


_HEADER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_header_name(value: str) -> str | None:
    if not _HEADER_NAME.match(value):
        return f"bad header name '{value}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
    return None


_COOKIE_NAME = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z|~]+$")


def check_cookie_name(value: str) -> str | None:
    if not _COOKIE_NAME.match(value):
        return f"bad cookie name '{value}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
    return None


# -- field constructors -------------------------------------------------------------------------


def tags() -> Set:
    return Set(String(checks=[check_tag]), description="A set of strings to group entities.")


def utf8_name(**kw: Any) -> String:
    kw.setdefault("unique", True)
    return String(checks=[check_utf8_name], **kw)


def host(**kw: Any) -> String:
    return String(checks=[check_host], **kw)


def port(**kw: Any) -> Integer:
    return Integer(between=(0, 65535), **kw)


def path(**kw: Any) -> String:
    return String(starts_with="/", checks=[check_path], **kw)


def header_name(**kw: Any) -> String:
    return String(checks=[check_header_name], **kw)


def sni(**kw: Any) -> String:
    return String(checks=[check_sni], **kw)


def wildcard_host(**kw: Any) -> String:
    return String(checks=[check_wildcard_host], **kw)


def timeout(default: int) -> Integer:
    return Integer(between=(1, MAX_TIMEOUT), default=default)


def protocol_set(
    choices: Sequence[str] = PROTOCOLS,
    *,
    default: Sequence[str] | None = None,
    exclusive: bool = True,
    **kw: Any,
) -> Set:
    """A set of protocols; ``exclusive``: Kong's route rule that http(s), stream, gRPC and
    websocket protocols do not mix (plugins have no such rule)."""
    subsets: tuple[tuple[str, ...], ...] = (
        ("http", "https"),
        ("tcp", "tls", "udp"),
        ("tls_passthrough",),
        GRPC_PROTOCOLS,
        WS_PROTOCOLS,
    )
    return Set(
        String(one_of=choices),
        len_min=1,
        required=True,
        default=list(default) if default is not None else None,
        checks=[mutually_exclusive_subsets(subsets)] if exclusive else [],
        **kw,
    )


def mutually_exclusive_subsets(subsets: Iterable[Sequence[str]]) -> Callable[[Any], str | None]:
    groups = [tuple(s) for s in subsets]

    def check(values: list[str]) -> str | None:
        hit = {i for i, g in enumerate(groups) for v in values if v in g}
        if len(hit) > 1:
            shown = ", ".join("(" + ", ".join(f"'{v}'" for v in g) + ")" for g in groups)
            return f"these sets are mutually exclusive: {shown}"
        return None

    return check


def cidr_port_set() -> Set:
    return Set(
        Record(
            [("ip", String(checks=[check_ip_or_cidr])), ("port", port())],
            entity_checks=[at_least_one_of("ip", "port")],
        )
    )


def header_map(*, forbid_host: bool = False) -> Map:
    def key_check(name: str) -> str | None:
        if forbid_host and name.lower() == "host":
            return "cannot contain 'host' header, which must be specified in the 'hosts' attribute"
        return None

    return Map(
        String(checks=[check_header_name, key_check]),
        Array(String()),
    )


def foreign(reference: str, **kw: Any) -> Foreign:
    return Foreign(reference, **kw)


# -- entity checks ------------------------------------------------------------------------------


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, list | dict | str) and len(value) == 0)


def quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def at_least_one_of(*names: str) -> EntityCheck:
    def check(entity: dict[str, Any]) -> str | None:
        if all(is_empty(entity.get(n)) for n in names):
            return f"at least one of these fields must be non-empty: {quoted(names)}"
        return None

    return check


def mutually_required(*names: str) -> EntityCheck:
    def check(entity: dict[str, Any]) -> str | None:
        present = [not is_empty(entity.get(n)) for n in names]
        if any(present) and not all(present):
            return f"all or none of these fields must be set: {quoted(names)}"
        return None

    return check


def distinct(*names: str) -> EntityCheck:
    def check(entity: dict[str, Any]) -> str | None:
        values = [entity.get(n) for n in names if entity.get(n) is not None]
        if len(values) != len(set(map(str, values))):
            return f"values of these fields must be distinct: {quoted(names)}"
        return None

    return check


def when(
    if_field: str,
    matches: Callable[[Any], bool],
    then_field: str,
    then_check: Callable[[Any], str | None],
) -> EntityCheck:
    """Kong's ``conditional`` entity check: the error lands on ``then_field``."""

    def check(entity: dict[str, Any]) -> dict[str, str] | None:
        if matches(entity.get(if_field)):
            message = then_check(entity.get(then_field))
            if message:
                return {then_field: message}
        return None

    return check


def must_be_null(value: Any) -> str | None:
    return None if is_empty(value) else "value must be null"


def required(value: Any) -> str | None:
    return "required field missing" if value is None else None


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value not in choices:
            return "expected one of: " + ", ".join(choices)
        return None

    return check


def equals(expected: str) -> Callable[[Any], bool]:
    return lambda value: value == expected


def in_(*choices: str) -> Callable[[Any], bool]:
    return lambda value: value in choices


def not_in(*choices: str) -> Callable[[Any], bool]:
    return lambda value: value not in choices
