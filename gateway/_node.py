"""Running a node: the public embedding API (``serve_node`` and one function per role).

Theory of operation (task tree)::

    serve_node
    ├── traditional:  admin API ─ proxy ─ status API ─ store watcher (config → proxy)
    ├── control_plane: admin API ─ status API ─ cluster listener (one nursery per DP)
    │                  ─ telemetry listener ─ config publisher (store → snapshots)
    └── data_plane:   proxy ─ status API ─ sync client (CP → apply → cache)

Each ``serve_*`` runs inside the caller's nursery (``await nursery.start(serve_node,
settings)``), reports the addresses it bound through ``task_status.started(NodeInfo)``, and
stops cleanly when the caller cancels it. The CLI (``python -m gateway``), the examples and
the integration tests all go through these functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from gateway._config_apply import ConfigApplier
from gateway._memory_store import MemoryStore
from gateway._net import bound_address, open_listener
from gateway._node_id import load_or_create_node_id
from gateway._proxy_runner import start_proxy
from gateway._state import NodeState
from gateway._status_api import StatusApp
from gateway.admin import AdminApp, DeclarativeReloader, install_meta_routes, serve_http
from gateway.declarative import export_declarative, load_declarative, parse_declarative
from gateway.proxy import ProxyState
from gateway.proxy._state import merged_balancer_health, merged_target_health
from gateway.proxy._tls import context_from_pem, self_signed_pem
from gateway.schema.entities import ENTITIES
from gateway.settings import ListenAddress, Settings
from gateway.store import Store, open_store

log = logging.getLogger("gateway")

LISTENERS_FILE = "listeners.json"


@attrs.frozen(kw_only=True)
class NodeInfo:
    """What a started node bound, by listener kind: ``{"proxy": [("127.0.0.1", 8000)]}``."""

    role: str
    node_id: str
    addresses: Mapping[str, tuple[tuple[str, int], ...]]

    def first(self, kind: str) -> tuple[str, int]:
        return self.addresses[kind][0]

    def url(self, kind: str, scheme: str = "http") -> str:
        host, port = self.first(kind)
        if ":" in host:
            host = f"[{host}]"
        elif host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return f"{scheme}://{host}:{port}"


async def serve_node(
    settings: Settings, *, task_status: trio.TaskStatus[NodeInfo] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the node ``settings.role`` names until cancelled."""
    if settings.role == "control_plane":
        from gateway.cluster._control_plane import serve_control_plane

        await serve_control_plane(settings, task_status=task_status)
    elif settings.role == "data_plane":
        from gateway.cluster._data_plane import serve_data_plane

        await serve_data_plane(settings, task_status=task_status)
    else:
        await serve_traditional(settings, task_status=task_status)


# -- shared pieces ------------------------------------------------------------------------


def prepare_prefix(settings: Settings) -> Path:
    prefix = Path(settings.prefix)
    prefix.mkdir(parents=True, exist_ok=True)
    return prefix


def write_listeners_file(prefix: Path, info: NodeInfo) -> None:
    """``<prefix>/listeners.json``: where the node listens (scripts and tests read it)."""
    doc = {
        "role": info.role,
        "node_id": info.node_id,
        "pid": os.getpid(),
        **{k: [list(a) for a in v] for k, v in info.addresses.items()},
    }
    tmp = prefix / (LISTENERS_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(prefix / LISTENERS_FILE)


def _tls_context(certs: tuple[str, ...], keys: tuple[str, ...]) -> Any:
    pairs = list(zip(certs, keys, strict=False)) or [self_signed_pem()]
    return context_from_pem(pairs)


async def start_http_api(
    nursery: trio.Nursery,
    app: Any,
    addresses: tuple[ListenAddress, ...],
    *,
    certs: tuple[str, ...],
    keys: tuple[str, ...],
    name: str,
    access_log: str | Path = "off",
) -> list[tuple[str, int]]:
    """Bind ``addresses`` (plain and ``ssl``) and serve ``app`` on them, logging each
    request to ``access_log``."""
    bound: list[tuple[str, int]] = []
    plain = [a for a in addresses if not a.ssl]
    secure = [a for a in addresses if a.ssl]
    for group, ssl_context in (
        (plain, None),
        (secure, _tls_context(certs, keys) if secure else None),
    ):
        if not group:
            continue
        listeners = [await open_listener(a) for a in group]
        bound.extend(bound_address(lst) for lst in listeners)
        await nursery.start(
            lambda task_status, lst=listeners, ctx=ssl_context: serve_http(
                app,
                lst,
                ssl_context=ctx,
                name=name,
                access_log=access_log,
                task_status=task_status,
            )
        )
    for host, port in bound:
        log.info("%s API listening on %s:%d", name, host, port)
    return bound


async def start_admin_api(
    nursery: trio.Nursery, settings: Settings, app: Any
) -> tuple[tuple[str, int], ...]:
    """Serve the Admin API on ``admin_listen`` (``ssl`` entries with admin_ssl_cert/key)."""
    return tuple(
        await start_http_api(
            nursery,
            app,
            settings.admin_listen,
            certs=settings.admin_ssl_cert,
            keys=settings.admin_ssl_cert_key,
            name="admin",
            access_log=settings.admin_access_log,
        )
    )


async def start_status_api(
    nursery: trio.Nursery, settings: Settings, app: Any
) -> tuple[tuple[str, int], ...]:
    """Serve the Status API on ``status_listen`` (``ssl`` entries with status_ssl_cert/key)."""
    return tuple(
        await start_http_api(
            nursery,
            app,
            settings.status_listen,
            certs=settings.status_ssl_cert,
            keys=settings.status_ssl_cert_key,
            name="status",
            access_log=settings.status_access_log,
        )
    )


class _AdminNode:
    """The ``NodeView`` the Admin API's meta endpoints read."""

    def __init__(
        self,
        settings: Settings,
        state: NodeState,
        store: Store | None,
        proxy: ProxyState | None,
        memory_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.node_id = state.node_id
        self.role = state.role
        self.store = store
        self.proxy = proxy
        self.memory_config = memory_config

    def configuration(self) -> dict[str, Any]:
        return dict(self.settings.redacted())

    async def database_reachable(self) -> bool:
        if self.store is None:
            return False
        try:
            await self.store.current_version()
        except Exception:
            return False
        return True

    def config_state(self) -> dict[str, Any]:
        return {"version": self.state.config_version, "hash": self.state.config_hash}

    def server_stats(self) -> dict[str, Any]:
        stats = self.state.proxy_stats
        return stats() if stats is not None else {}

    async def export_config(self) -> dict[str, Any]:
        if self.store is not None:
            _, entities = await self.store.export()
        else:
            entities = {k: list(v) for k, v in (self.memory_config or {}).items() if k[0] != "_"}
        return export_declarative(entities)

    # Upstream health is what the proxy processes see: with worker processes, health checks
    # run in each worker and the node's own ProxyState never probes anything. Both the views
    # and the manual marks therefore go through the proxy runner (NodeState), which the
    # status API's /status/upstreams reads too, so the two APIs agree.

    def upstream_health(self, upstream: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        report = self.state.upstream_health
        if report is None:
            return None
        return merged_target_health(report(), upstream["name"])

    async def set_target_health(
        self, upstream: Mapping[str, Any], target: Mapping[str, Any], healthy: bool
    ) -> bool:
        mark = self.state.mark_target
        if mark is None:
            return False
        return await mark(upstream["name"], str(target["target"]), healthy)

    def balancer_health(self, upstream: Mapping[str, Any]) -> dict[str, Any] | None:
        report = self.state.upstream_health
        if report is None:
            return None
        return merged_balancer_health(report(), upstream["name"])

    async def data_planes(
        self, *, size: int, offset: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        if self.store is None:
            return [], None
        return await self.store.page_data_planes(size=size, offset=offset)


@contextlib.asynccontextmanager
async def open_node_store(settings: Settings) -> AsyncIterator[Store]:
    async with open_store(settings, ENTITIES) as store:
        yield store


async def load_store_config(store: Store) -> tuple[int, dict[str, Any]]:
    version, entities = await store.export()
    return version, {"_format_version": "3.0", **entities}


# -- traditional ------------------------------------------------------------------------------


async def serve_traditional(
    settings: Settings, *, task_status: trio.TaskStatus[NodeInfo] = trio.TASK_STATUS_IGNORED
) -> None:
    """One node that stores configuration, serves the Admin API and proxies."""
    prefix = prepare_prefix(settings)
    node_id = load_or_create_node_id(prefix, str(settings.node_id) if settings.node_id else None)
    state = NodeState(role="traditional", node_id=node_id)
    proxy = ProxyState()
    applier = ConfigApplier(proxy, state)
    async with contextlib.AsyncExitStack() as stack:
        store: Store | None = None
        memory: dict[str, Any] | None = None
        if settings.database == "off":
            memory = {"_format_version": "3.0"}
            if settings.declarative_config is not None:
                memory = parse_declarative(load_declarative(settings.declarative_config))
            await applier.apply(memory, version=1, source="declarative", validate=False)
        else:
            store = await stack.enter_async_context(open_node_store(settings))
            version, config = await load_store_config(store)
            await applier.apply(config, version=version, source="database", validate=False)
        # Admin, status and proxy listeners, plus the store watcher, live in one nursery.
        async with trio.open_nursery() as nursery:
            addresses: dict[str, tuple[tuple[str, int], ...]] = {}
            if settings.admin_listen:
                # The Admin API reads the in-memory configuration when there is no database.
                memory_store: Any = MemoryStore(memory or {}) if store is None else None
                app = AdminApp(
                    store=store if store is not None else memory_store,
                    schemas=ENTITIES,
                    read_only_reason=(
                        "running without a database (database = off)" if store is None else None
                    ),
                )
                # database = off: POST /config replaces the configuration (Kong's DB-less).
                loader = (
                    DeclarativeReloader(applier, memory_store) if memory_store is not None else None
                )
                install_meta_routes(
                    app, _AdminNode(settings, state, store, proxy, memory), loader=loader
                )
                addresses["admin"] = await start_admin_api(nursery, settings, app.handle)
            if settings.status_listen:
                addresses["status"] = await start_status_api(nursery, settings, StatusApp(state))
            if settings.proxy_listen:
                bound = await start_proxy(nursery, settings, applier)
                addresses["proxy"] = tuple(bound)
                for host, port in bound:
                    log.info("proxy listening on %s:%d", host, port)
            if store is not None:
                nursery.start_soon(_follow_store, store, applier, settings)
            info = NodeInfo(role="traditional", node_id=node_id, addresses=addresses)
            write_listeners_file(prefix, info)
            log.info("traditional node %s started on %s", node_id, socket.gethostname())
            task_status.started(info)


async def _follow_store(store: Store, applier: ConfigApplier, settings: Settings) -> None:
    """Apply every new config version the store reports (changes reach the proxy at once)."""
    after = applier.node.config_version or 0
    async for _ in store.watch(after):
        try:
            version, config = await load_store_config(store)
            if version <= (applier.node.config_version or 0):
                continue
            await applier.apply(config, version=version, source="database", validate=False)
        except Exception as exc:  # keep the last good configuration
            applier.node.last_apply_error = str(exc)
            log.exception("configuration from the database not applied; keeping the last one")
