"""A Trio API gateway implementing Kong Gateway's hybrid mode.

Embedding API: run a node inside your own Trio program::

    settings = gateway.load_settings(overrides={"role": "traditional"})
    async with trio.open_nursery() as nursery:
        info = await nursery.start(gateway.serve_node, settings)
        print(info.url("proxy"))
        ...
        nursery.cancel_scope.cancel()   # the node drains and stops

The node functions are imported on first use, so ``import gateway`` (and every CLI
command) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway._errors import ConfigError, GatewayError
from gateway._version import __version__

if TYPE_CHECKING:
    from gateway._node import NodeInfo, serve_node, serve_traditional
    from gateway.cluster._control_plane import serve_control_plane
    from gateway.cluster._data_plane import serve_data_plane
    from gateway.settings import Settings, load_settings

_LAZY = {
    "NodeInfo": "gateway._node",
    "serve_node": "gateway._node",
    "serve_traditional": "gateway._node",
    "serve_control_plane": "gateway.cluster._control_plane",
    "serve_data_plane": "gateway.cluster._data_plane",
    "Settings": "gateway.settings",
    "load_settings": "gateway.settings",
}

__all__ = [
    "ConfigError",
    "GatewayError",
    "NodeInfo",
    "Settings",
    "__version__",
    "load_settings",
    "serve_control_plane",
    "serve_data_plane",
    "serve_node",
    "serve_traditional",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
