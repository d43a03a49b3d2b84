"""A Trio API gateway implementing Kong Gateway's hybrid mode.

Embedding API: run a node inside your own Trio program::

    settings = gateway.load_settings(overrides={"role": "traditional"})
    async with trio.open_nursery() as nursery:
        info = await nursery.start(gateway.serve_node, settings)
        print(info.url("proxy"))
        ...
        nursery.cancel_scope.cancel()   # the node drains and stops
"""

from gateway._errors import ConfigError, GatewayError
from gateway._node import NodeInfo, serve_node, serve_traditional
from gateway._version import __version__
from gateway.settings import Settings, load_settings

__all__ = [
    "ConfigError",
    "GatewayError",
    "NodeInfo",
    "Settings",
    "__version__",
    "load_settings",
    "serve_node",
    "serve_traditional",
]
