"""Starting the proxy of a node: in-process (``worker_processes = 1``) or as a worker pool.

With one worker the node serves the proxy listeners itself from the ``ProxyState`` its
``ConfigApplier`` swaps. With N > 1 a supervisor (``gateway.proxy._workers``) runs N worker
processes that share the listening sockets; every configuration the node installs is then
published to all workers (latest wins: a worker busy compiling version 5 gets version 7
next, never 6 after 7).

Either way the runner tells the node (``NodeState``) where upstream health comes from and
how a manual mark (Admin API ``PUT .../targets/{t}/healthy|unhealthy``) reaches the
balancers that route traffic: in-process, the node's own ``ProxyState``; with workers, a
control frame to every worker (``WorkerPool.mark_target``).
"""

from __future__ import annotations

import logging
import os
from functools import partial
from typing import Any

import trio

from gateway._build import hot_path_build
from gateway._config_apply import ConfigApplier, PreparedConfig
from gateway._errors import ConfigError
from gateway.proxy import serve_proxy
from gateway.proxy._balancer import Balancer, TargetAddress, parse_target
from gateway.proxy._state import upstream_health
from gateway.settings import Settings

log = logging.getLogger("gateway")


class _Latest:
    """A one-slot mailbox: ``put`` never blocks and replaces what was not taken yet."""

    def __init__(self) -> None:
        self._value: PreparedConfig | None = None
        self._event = trio.Event()

    def put(self, value: PreparedConfig) -> None:
        self._value = value
        self._event.set()

    async def take(self) -> PreparedConfig:
        await self._event.wait()
        self._event = trio.Event()
        value = self._value
        assert value is not None
        self._value = None
        return value


async def start_proxy(
    nursery: trio.Nursery, settings: Settings, applier: ConfigApplier
) -> list[tuple[str, int]]:
    """Serve ``proxy_listen``; returns the bound addresses."""
    build = hot_path_build()
    (log.warning if build.stale else log.info)("proxy hot path: %s", build.describe())
    drain = settings.worker_shutdown_timeout
    if settings.worker_processes <= 1:
        proxy = applier.proxy
        bound: list[tuple[str, int]] = await nursery.start(
            partial(serve_proxy, settings, proxy, drain_timeout=drain)
        )
        applier.node.proxy_stats = lambda: {
            "connections_active": proxy.connections(),
            "total_requests": proxy.requests_total,
        }
        applier.node.upstream_health = lambda: [
            {"worker": 0, "pid": os.getpid(), "upstreams": upstream_health(proxy.current.balancers)}
        ]

        async def mark_here(upstream: str, target: str, healthy: bool) -> bool:
            balancer = proxy.current.balancers.get(upstream)
            return balancer is not None and balancer.set_healthy(target, healthy)

        applier.node.mark_target = mark_here
        return bound
    from gateway.proxy._workers import serve_workers

    current = applier.proxy.current
    pool: Any = await nursery.start(
        partial(
            serve_workers,
            settings,
            dict(current.config),
            version=current.version,
            workers=settings.worker_processes,
            drain_timeout=drain,
        )
    )
    mailbox = _Latest()
    applier.subscribe(mailbox.put, settle=pool.wait_applied)
    applier.node.upstream_health = pool.upstream_health
    applier.node.proxy_stats = pool.server_stats

    async def mark_in_workers(upstream: str, target: str, healthy: bool) -> bool:
        # The node compiles every config it publishes: its balancers say whether the mark
        # can apply (Kong: "no healthchecker found" otherwise), the workers apply it.
        current = applier.proxy.current
        name = _markable(current.balancers.get(upstream), target)
        if name is None:
            return False
        # A target added a moment ago must exist in the workers before they are told.
        await applier.settle(current.version, timeout=10.0)
        await pool.mark_target(upstream, name, healthy)
        return True

    applier.node.mark_target = mark_in_workers

    async def publisher() -> None:
        while True:
            prepared = await mailbox.take()
            try:
                await pool.publish(prepared.runtime, prepared.version)
            except Exception:
                log.exception("could not publish configuration %s to the workers", prepared.version)

    nursery.start_soon(publisher)
    log.info("proxy served by %d worker processes", settings.worker_processes)
    addresses: list[tuple[str, int]] = list(pool.addresses)
    return addresses


def _markable(balancer: Balancer | None, target: str) -> str | None:
    """The target's name as balancers and health reports spell it (``host:port``) when
    ``balancer`` has it and runs health checks (what ``Balancer.set_healthy`` requires)."""
    if balancer is None or not balancer.health_policy.enabled:
        return None
    try:
        host, port = parse_target(target)
    except ConfigError:
        return None
    name = TargetAddress(host, port).name
    return name if any(t.name == name for t in balancer.targets) else None
