"""Parsers for single setting values.

A value comes either as a string (environment, ``--set``, or a TOML string written in
kong.conf syntax) or as a native TOML value (integer, float, boolean, list, table). Each
parser accepts both and raises ``InvalidValue`` whose message says what is accepted; the
loader prefixes it with the key name.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeVar

__all__ = [
    "HEADER_NAMES",
    "InvalidValue",
    "LogTarget",
    "Network",
    "available_cpus",
    "parse_bool",
    "parse_choice",
    "parse_float",
    "parse_header_buffers",
    "parse_headers",
    "parse_int",
    "parse_labels",
    "parse_log_target",
    "parse_node_id",
    "parse_optional_path",
    "parse_optional_str",
    "parse_path",
    "parse_size",
    "parse_str",
    "parse_str_list",
    "parse_trusted_ips",
    "parse_worker_processes",
]

S = TypeVar("S", bound=str)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LogTarget = Literal["off", "stdout", "stderr"] | Path


class InvalidValue(ValueError):
    """A value that a parser refuses; ``messages`` holds one line per problem."""

    def __init__(self, *messages: str) -> None:
        super().__init__("; ".join(messages))
        self.messages: tuple[str, ...] = messages


def type_name(value: object) -> str:
    names: dict[type, str] = {
        bool: "boolean",
        int: "integer",
        float: "float",
        dict: "table",
        list: "array",
        str: "string",
    }
    return names.get(type(value), type(value).__name__)


def _expect_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"expected {what}, got TOML {type_name(value)} {value!r}")
    return value.strip()


def parse_str(value: object) -> str:
    return _expect_str(value, "a string")


def parse_optional_str(value: object) -> str | None:
    """A string; empty means unset."""
    text = _expect_str(value, "a string")
    return text or None


def parse_choice(*choices: S) -> Callable[[object], S]:
    accepted = ", ".join(choices)

    def parse(value: object) -> S:
        text = _expect_str(value, f"one of: {accepted}")
        for choice in choices:
            if text == choice:
                return choice
        raise InvalidValue(f"invalid value {text!r}; accepted values: {accepted}")

    return parse


_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _expect_str(value, "a boolean (on, off, true, false)").lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidValue(f"invalid boolean {text!r}; accepted values: on, off, true, false")


def parse_int(
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    below_minimum: str | None = None,
) -> Callable[[object], int]:
    """An integer in [minimum, maximum]; ``below_minimum`` overrides that message."""

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise InvalidValue(f"expected an integer, got TOML {type_name(value)} {value!r}")
        if isinstance(value, str):
            text = value.strip()
            if not re.fullmatch(r"[+-]?\d+", text):
                raise InvalidValue(f"expected an integer, got {text!r}")
            number = int(text)
        else:
            number = value
        if minimum is not None and number < minimum:
            raise InvalidValue(f"{below_minimum or f'must be {minimum} or greater'}, got {number}")
        if maximum is not None and number > maximum:
            raise InvalidValue(f"must be {maximum} or less, got {number}")
        return number

    return parse


def parse_float(*, minimum: float = 0.0, allow_zero: bool = False) -> Callable[[object], float]:
    """A finite number of seconds, > minimum (or >= when ``allow_zero``)."""

    def parse(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidValue(f"expected a number, got TOML {type_name(value)} {value!r}")
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except ValueError:
            raise InvalidValue(f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise InvalidValue(f"expected a finite number, got {value!r}")
        if number < minimum or (number == minimum and not allow_zero):
            op = ">=" if allow_zero else ">"
            raise InvalidValue(f"must be {op} {minimum:g}, got {number:g}")
        return number

    return parse


_SIZE = re.compile(r"^(\d+)([kmg]?)$", re.IGNORECASE)
_SIZE_FACTOR = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: object) -> int:
    """A size in bytes: ``0``, ``8192``, ``8k``, ``10m``, ``1g`` (nginx syntax)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidValue(f"must be 0 or greater, got {value}")
        return value
    text = _expect_str(value, "a size (e.g. 8k, 10m)")
    match = _SIZE.match(text)
    if not match:
        raise InvalidValue(f"invalid size {text!r}; expected <number>[k|m|g], e.g. 8k or 10m")
    return int(match.group(1)) * _SIZE_FACTOR[match.group(2).lower()]


def parse_header_buffers(value: object) -> tuple[int, int]:
    """nginx ``large_client_header_buffers``: ``<number> <size>``, e.g. ``4 8k``."""
    text = _expect_str(value, "'<number> <size>', e.g. '4 8k'")
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) < 1:
        raise InvalidValue(f"invalid value {text!r}; expected '<number> <size>', e.g. '4 8k'")
    size = parse_size(parts[1])
    if size < 1:
        raise InvalidValue(f"invalid value {text!r}; the buffer size must be positive")
    return int(parts[0]), size


def parse_path(value: object) -> Path:
    text = _expect_str(value, "a path")
    if not text:
        raise InvalidValue("expected a path, got an empty string")
    return Path(text)


def parse_optional_path(value: object) -> Path | None:
    text = _expect_str(value, "a path")
    return Path(text) if text else None


def parse_log_target(value: object) -> LogTarget:
    """``off``, ``stdout``, ``stderr`` or a path (relative paths are under the prefix)."""
    text = _expect_str(value, "off, stdout, stderr or a path")
    if text == "off":
        return "off"
    if text == "stdout":
        return "stdout"
    if text == "stderr":
        return "stderr"
    if not text:
        raise InvalidValue("expected off, stdout, stderr or a path, got an empty string")
    return Path(text)


def parse_str_list(value: object) -> tuple[str, ...]:
    """A comma-separated string or a TOML array of strings; empty entries are dropped."""
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise InvalidValue("expected an array of strings")
        items = [str(v).strip() for v in value]
    else:
        items = [part.strip() for part in _expect_str(value, "a list").split(",")]
    return tuple(item for item in items if item)


def parse_trusted_ips(value: object) -> tuple[Network, ...]:
    result: list[Network] = []
    for item in parse_str_list(value):
        try:
            result.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise InvalidValue(
                f"invalid IP address or CIDR range {item!r}; "
                "accepted: comma-separated IPs or CIDRs, e.g. 10.0.0.0/8,::1"
            ) from None
    return tuple(result)


# Kong's `headers` values (kong/constants.lua HEADERS plus the two token groups).
HEADER_NAMES: tuple[str, ...] = (
    "server_tokens",
    "latency_tokens",
    "Server",
    "Via",
    "X-Kong-Proxy-Latency",
    "X-Kong-Response-Latency",
    "X-Kong-Upstream-Latency",
    "X-Kong-Admin-Latency",
    "X-Kong-Upstream-Status",
    "X-Kong-Request-Id",
    "X-Kong-Admin-Request-ID",
)
_HEADER_BY_LOWER = {name.lower(): name for name in HEADER_NAMES}


def parse_headers(value: object) -> tuple[str, ...]:
    """Kong's ``headers``: names from HEADER_NAMES (any case), or ``off``."""
    items = parse_str_list(value)
    if items == ("off",):
        return ()
    result: list[str] = []
    for item in items:
        if item == "off":
            raise InvalidValue("'off' cannot be combined with header names")
        name = _HEADER_BY_LOWER.get(item.lower())
        if name is None:
            raise InvalidValue(
                f"invalid header {item!r}; accepted values: off, {', '.join(HEADER_NAMES)}"
            )
        if name not in result:
            result.append(name)
    return tuple(result)


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``taskset``, a cpuset cgroup,
    a container's ``--cpuset-cpus``), not every CPU of the machine as ``os.cpu_count()``.

    A CPU *quota* (cgroup ``cpu.max``, ``docker --cpus``) limits time, not CPUs, and is not
    seen here: set ``worker_processes`` explicitly under one."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        try:
            return len(getaffinity(0)) or 1
        except OSError:
            pass
    return os.cpu_count() or 1


def parse_worker_processes(value: object) -> int:
    """``auto`` (one per CPU this process may use) or a positive integer."""
    if isinstance(value, str) and value.strip() == "auto":
        return available_cpus()
    try:
        return parse_int(1)(value)
    except InvalidValue:
        raise InvalidValue(f"expected auto or a positive integer, got {value!r}") from None


def parse_node_id(value: object) -> uuid.UUID | None:
    text = _expect_str(value, "a UUID")
    if not text:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidValue(f"invalid UUID {text!r}") from None


# cluster_dp_labels, as Kong validates them (kong/conf_loader, validate_labels).
MAX_LABELS = 10
_LABEL = re.compile(r"^[A-Za-z0-9](?:[\w.:-]{0,61}[A-Za-z0-9])?$", re.ASCII)
_RESERVED_LABEL_PREFIXES = ("kong", "konnect", "insomnia", "mesh", "kic")


def parse_labels(value: object) -> Mapping[str, str]:
    """``"k:v,k2:v2"`` (or a TOML table) checked with Kong's label rules."""
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
        if not all(isinstance(v, str) for _, v in pairs):
            raise InvalidValue("expected a table of string values")
        items = [(k, str(v)) for k, v in pairs]
    else:
        items = []
        for entry in parse_str_list(value):
            key, _, label_value = entry.partition(":")
            items.append((key, label_value))
    errors: list[str] = []
    if len(items) > MAX_LABELS:
        errors.append(f"labels validation failed: count exceeded {MAX_LABELS} max elements")
    labels: dict[str, str] = {}
    for key, label_value in items:
        if not _LABEL.match(key):
            errors.append(f"label key validation failed: {key}")
        elif key.lower().startswith(_RESERVED_LABEL_PREFIXES):
            errors.append(
                f"label key validation failed: {key} (the prefixes "
                f"{', '.join(_RESERVED_LABEL_PREFIXES)} are reserved)"
            )
        elif key in labels:
            errors.append(f"label key validation failed: {key} appears twice")
        if not _LABEL.match(label_value):
            errors.append(f"label value validation failed: {label_value}")
        labels[key] = label_value
    if errors:
        raise InvalidValue(*errors)
    return MappingProxyType(labels)
