"""The ``Plugin`` base class (the contract is described in ``gateway.plugins._api``).

Kept apart from the per-request classes of ``_api``, which are compiled with the proxy's hot
path: a compiled class cannot be subclassed by plain Python classes, and every plugin is
one.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gateway.plugins._api import Context
from gateway.plugins._handshake import Handshake
from gateway.schema import Record

__all__ = ["Plugin", "overrides"]


class Plugin:
    """Base class of plugins. Override the phases you need."""

    name: ClassVar[str]
    version: ClassVar[str]
    priority: ClassVar[int]
    config_schema: ClassVar[Record]
    #: protocols the plugin may be enabled for (Kong's ``protocols`` field choices)
    protocols: ClassVar[tuple[str, ...]] = ("grpc", "grpcs", "http", "https")
    #: Kong's scoping restrictions
    no_consumer: ClassVar[bool] = False
    no_route: ClassVar[bool] = False
    no_service: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any], *, plugin_id: str = "") -> None:
        self.config = config
        #: the plugin entity's id: stable across configuration versions (use it to key
        #: state that must survive a swap, such as rate-limiting counters)
        self.plugin_id = plugin_id

    def certificate(self, handshake: Handshake) -> None:
        """Runs during the TLS handshake of an ``ssl`` listener; only for global plugins.

        Synchronous (it runs inside the stdlib's SNI callback): may pick a certificate of
        the configuration or ``handshake.reject(reason)``. An exception aborts the
        handshake.
        """

    async def rewrite(self, ctx: Context) -> None:
        """Runs before routing-dependent work; only for global plugins."""

    async def access(self, ctx: Context) -> None:
        """Runs before the upstream request; may authenticate, reject or rewrite."""

    def header_filter(self, ctx: Context) -> None:
        """Runs when the response headers are known; may change ``ctx.response``."""

    def body_filter(self, ctx: Context, chunk: bytes, eof: bool) -> bytes:
        """Runs on each response body chunk; returns the chunk to send."""
        return chunk

    def log(self, ctx: Context) -> None:
        """Runs after the response was sent. Must not block."""


def overrides(plugin_cls: type[Plugin], phase: str) -> bool:
    """True when ``plugin_cls`` implements ``phase`` (the runtime skips the others)."""
    return getattr(plugin_cls, phase) is not getattr(Plugin, phase)
