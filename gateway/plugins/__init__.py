"""The plugin API and registry."""

from gateway.plugins._api import (
    ClientRequest,
    Context,
    EntityIndex,
    ExitResponse,
    Headers,
    Response,
    ServiceRequest,
)
from gateway.plugins._handshake import Handshake
from gateway.plugins._plugin import Plugin, overrides
from gateway.plugins._registry import available_plugins, get_plugin, plugin_versions

__all__ = [
    "ClientRequest",
    "Context",
    "EntityIndex",
    "ExitResponse",
    "Handshake",
    "Headers",
    "Plugin",
    "Response",
    "ServiceRequest",
    "available_plugins",
    "get_plugin",
    "overrides",
    "plugin_versions",
]
