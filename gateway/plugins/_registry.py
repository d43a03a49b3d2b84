"""Which plugins exist: the bundled ones and those registered through entry points."""

from __future__ import annotations

import importlib
import logging
from functools import cache
from importlib.metadata import entry_points

from gateway.plugins._plugin import Plugin

log = logging.getLogger("gateway.plugins")

# module path -> class name of every bundled plugin
BUNDLED: tuple[tuple[str, str], ...] = (
    ("gateway.plugins.bundled.correlation_id", "CorrelationId"),
    ("gateway.plugins.bundled.cors", "Cors"),
    ("gateway.plugins.bundled.ip_restriction", "IpRestriction"),
    ("gateway.plugins.bundled.key_auth", "KeyAuth"),
    ("gateway.plugins.bundled.rate_limiting", "RateLimiting"),
    ("gateway.plugins.bundled.request_size_limiting", "RequestSizeLimiting"),
    ("gateway.plugins.bundled.request_transformer", "RequestTransformer"),
    ("gateway.plugins.bundled.response_transformer", "ResponseTransformer"),
)


@cache
def available_plugins() -> dict[str, type[Plugin]]:
    """Every plugin this node can run, by name (bundled first, then entry points)."""
    found: dict[str, type[Plugin]] = {}
    for module, cls_name in BUNDLED:
        cls = getattr(importlib.import_module(module), cls_name)
        found[cls.name] = cls
    for ep in entry_points(group="gateway.plugins"):
        try:
            cls = ep.load()
        except Exception:
            log.exception("cannot load plugin %s from entry point %s", ep.name, ep.value)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            log.error("entry point %s does not name a Plugin subclass", ep.value)
            continue
        if cls.name in found:
            log.error("plugin %s from %s ignored: the name is taken", cls.name, ep.value)
            continue
        found[cls.name] = cls
    return found


def get_plugin(name: str) -> type[Plugin] | None:
    return available_plugins().get(name)


def plugin_versions() -> dict[str, str]:
    """``{name: version}`` of every available plugin (reported by a DP to its CP)."""
    return {name: cls.version for name, cls in sorted(available_plugins().items())}
