"""Field types and helpers shared by the bundled plugins."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from gateway._version import __version__
from gateway.schema import String

#: Bundled plugins carry the gateway's version, as Kong's do.
VERSION = __version__

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def header_name(**kw: Any) -> String:
    return String(match=_HEADER_NAME.pattern, match_message="bad header name", **kw)


def ip_or_cidr_check(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"invalid ip or cidr range: '{value}'"
    return None


def colon_pair_check(value: str) -> str | None:
    """``name:value`` entries of the transformer plugins."""
    if ":" not in value:
        return f"invalid value: {value}"
    name = value.split(":", 1)[0]
    if not name:
        return f"invalid value: {value}"
    return None
