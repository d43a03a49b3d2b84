"""Turning a configuration into what the proxy runs, and swapping it in.

Theory of operation: a configuration arrives as a full entity set (from the store, a
declarative file, the cache, or a control plane). ``prepare`` validates it completely,
drops what runtimes must not see (disabled services), hashes it and compiles the router,
balancers and plugin instances, all in a worker thread so the Trio loop keeps serving.
Only then does ``ConfigApplier.apply`` swap the compiled configuration in, in one
assignment: requests in flight finish on the configuration they started with, new ones use
the new one. A configuration that fails anywhere before the swap changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from gateway._state import NodeState
from gateway.declarative import runtime_view, validate_config
from gateway.proxy import CompiledConfig, ProxyState, compile_config
from gateway.schema.entities import ENTITIES
from protocol import config_hash

log = logging.getLogger("gateway.config")


@attrs.frozen(kw_only=True)
class PreparedConfig:
    runtime: dict[str, Any]
    hash: str
    version: int
    compiled: CompiledConfig
    entities: int


def count_entities(config: Mapping[str, Any]) -> int:
    return sum(len(config.get(k) or ()) for k in ENTITIES)


def prepare(
    config: Mapping[str, Any],
    *,
    version: int,
    previous: CompiledConfig | None,
    validate: bool,
) -> PreparedConfig:
    """Validate (when the source is untrusted), hash and compile. Raises on any problem."""
    full = validate_config(config) if validate else dict(config)
    runtime = runtime_view(full)
    digest = config_hash(runtime)
    compiled = compile_config(runtime, version=version, previous=previous, hash=digest)
    return PreparedConfig(
        runtime=runtime,
        hash=digest,
        version=version,
        compiled=compiled,
        entities=count_entities(runtime),
    )


class ConfigApplier:
    """Owns the proxy state of a node and applies new configurations one at a time."""

    def __init__(self, proxy: ProxyState, node: NodeState) -> None:
        self.proxy = proxy
        self.node = node
        self._lock = trio.Lock()
        self._subscribers: list[Callable[[PreparedConfig], None]] = []
        self._settlers: list[Callable[[int], Awaitable[None]]] = []

    def subscribe(
        self,
        callback: Callable[[PreparedConfig], None],
        settle: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """Call ``callback`` (synchronously, must not block) after every install;
        ``settle(version)`` returns once that version is in force wherever it goes (for
        example every worker process)."""
        self._subscribers.append(callback)
        if settle is not None:
            self._settlers.append(settle)

    async def settle(self, version: int, *, timeout: float = 30.0) -> bool:
        """Wait until ``version`` serves everywhere (True), or ``timeout`` passed (False)."""
        with trio.move_on_after(timeout) as scope:
            for settle in self._settlers:
                await settle(version)
        if scope.cancelled_caught:
            log.warning(
                "configuration version %s not in force everywhere after %gs", version, timeout
            )
            return False
        return True

    async def prepare(
        self, config: Mapping[str, Any], *, version: int, validate: bool
    ) -> PreparedConfig:
        previous = self.proxy.current
        return await trio.to_thread.run_sync(
            lambda: prepare(config, version=version, previous=previous, validate=validate)
        )

    def install(self, prepared: PreparedConfig, *, source: str) -> None:
        self.proxy.swap(prepared.compiled)
        for callback in self._subscribers:
            callback(prepared)
        self.node.config_applied(
            version=prepared.version,
            config_hash=prepared.hash,
            source=source,
            entities=prepared.entities,
        )
        log.info(
            "configuration version %s applied (hash %s, %d entities, from %s)",
            prepared.version,
            prepared.hash,
            prepared.entities,
            source,
        )

    async def apply(
        self, config: Mapping[str, Any], *, version: int, source: str, validate: bool
    ) -> PreparedConfig:
        """Prepare, install, and wait until it serves everywhere; applies never interleave."""
        async with self._lock:
            prepared = await self.prepare(config, version=version, validate=validate)
            self.install(prepared, source=source)
        await self.settle(prepared.version)
        return prepared
