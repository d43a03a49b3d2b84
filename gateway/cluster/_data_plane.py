"""The data plane node: ``serve_data_plane``.

Theory of operation (task tree)::

    serve_data_plane
    ├── proxy          serves the configuration in force (ProxyState, one swap per apply)
    ├── status API     /status (config version, hash, CP link), /status/ready,
    │                  POST /status/certificates/reload
    ├── certificate watch  SIGHUP / file changes -> ClusterMaterial.reload()
    └── sync client    CP -> validate -> swap -> cache -> ack (reconnects forever; each
                       connection uses the cluster material current at that moment)

Start sequence (the seed's "DP node start sequence"; no database, ever):

1. the config cache, if present and valid (mode ``data_plane_config_cache_mode``);
2. else ``declarative_config``, if set;
3. else the empty configuration (every request answers 404, ``/status/ready`` 503);
4. in all cases, connect to the control plane in the background and replace the
   configuration with what it sends; the cache is written after every successful apply.

NOTE: Kong 3.x's code loads ``declarative_config`` over its persisted LMDB config on every
start, which contradicts its documentation (kong-behaviour.md §7.2). We follow the
documentation: a valid cache wins (tests/integration/test_hybrid_faults.py pins it).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import attrs
import trio

from gateway._config_apply import ConfigApplier
from gateway._errors import ConfigError
from gateway._node import NodeInfo, prepare_prefix, start_status_api, write_listeners_file
from gateway._node_id import load_or_create_node_id
from gateway._proxy_runner import start_proxy
from gateway._state import NodeState
from gateway._status_api import StatusApp
from gateway._version import __version__
from gateway.cluster._cache import CachedConfig, ConfigCache, derive_cache_key
from gateway.cluster._material import ClusterMaterial
from gateway.cluster._sync_client import Backoff, SyncClient, SyncClientOptions
from gateway.cluster._telemetry_client import TelemetryClient
from gateway.declarative import load_declarative, parse_declarative
from gateway.plugins import plugin_versions
from gateway.proxy import ProxyState
from gateway.settings import Settings
from protocol import config_hash

__all__ = ["load_initial_config", "serve_data_plane"]

log = logging.getLogger("gateway.cluster")


def open_cache(settings: Settings, key_material: Any) -> ConfigCache:
    mode = settings.data_plane_config_cache_mode
    key = derive_cache_key(key_material) if mode == "encrypted" else None
    return ConfigCache(settings.data_plane_config_cache_path, mode, key)


def _read_cache(cache: ConfigCache) -> CachedConfig | None:
    cached = cache.load()
    if cached is None:
        return None
    actual = config_hash(cached.config)
    if actual != cached.hash:
        log.error(
            "config cache %s ignored: its content hashes to %s, not to the recorded %s",
            cache.path,
            actual,
            cached.hash,
        )
        return None
    return cached


async def load_initial_config(
    settings: Settings, applier: ConfigApplier, cache: ConfigCache
) -> str:
    """Steps 1 to 3 of the start sequence; returns where the configuration came from."""
    cached = await trio.to_thread.run_sync(_read_cache, cache)
    if cached is not None:
        try:
            prepared = await applier.prepare(cached.config, version=cached.version, validate=True)
        except Exception as exc:
            log.error("config cache %s ignored: it does not validate: %s", cache.path, exc)
        else:
            # Keep the control plane's hash: the data plane reports what the CP sent.
            applier.install(attrs.evolve(prepared, hash=cached.hash), source="cache")
            log.info(
                "loaded config version %d (%s) from the cache %s",
                cached.version,
                cached.hash,
                cache.path,
            )
            return "cache"
    if settings.declarative_config is not None:
        try:
            config = parse_declarative(load_declarative(settings.declarative_config))
        except Exception as exc:
            raise ConfigError(f"declarative_config: {exc}", key="declarative_config") from exc
        await applier.apply(config, version=0, source="declarative", validate=False)
        log.info("loaded declarative_config %s", settings.declarative_config)
        return "declarative"
    log.info("no cached or declarative configuration: starting empty (404 to every request)")
    return "empty"


async def serve_data_plane(
    settings: Settings, *, task_status: trio.TaskStatus[NodeInfo] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a data plane until cancelled: proxy, status API and the sync client.

    Reports the bound addresses (``proxy``, ``status``) through
    ``task_status.started(NodeInfo)`` and writes them to ``<prefix>/listeners.json``.
    """
    if settings.database != "off":
        raise ConfigError(
            'only in-memory storage can be used when role = "data_plane"\n'
            "Hint: set database = off in your kong.conf",
            key="database",
        )
    prefix = prepare_prefix(settings)
    node_id = load_or_create_node_id(prefix, str(settings.node_id) if settings.node_id else None)
    state = NodeState(role="data_plane", node_id=node_id)
    material = ClusterMaterial(settings, state)  # ConfigError on bad material
    proxy = ProxyState()
    applier = ConfigApplier(proxy, state)
    cache = open_cache(settings, material.current.key)
    if cache.mode == "encrypted":
        # The encrypted cache is keyed from the cluster key: follow a key rotation, so
        # that a restart with the new key can still read the cache.
        material.on_reload.append(lambda fresh: cache.rekey(derive_cache_key(fresh.key)))
    await load_initial_config(settings, applier, cache)
    client = SyncClient(
        options=SyncClientOptions(
            node_id=node_id,
            hostname=socket.gethostname(),
            version=__version__,
            plugins=plugin_versions(),
            labels=dict(settings.cluster_dp_labels),
            endpoints=settings.cluster_control_plane,
            max_payload=settings.cluster_max_payload,
            server_name=settings.cluster_server_name,
            backoff_min=settings.cluster_reconnect_backoff_min,
            backoff_max=settings.cluster_reconnect_backoff_max,
            proxy_server=settings.proxy_server if settings.cluster_use_proxy else None,
            proxy_ssl_verify=settings.proxy_server_ssl_verify,
        ),
        tls=material.current,
        material=material,
        state=state,
        applier=applier,
        cache=cache,
    )
    # Proxy, status API, certificate watch and sync client are siblings; the sync client
    # never raises for anything the network or the control plane does, so the proxy keeps
    # serving.
    async with trio.open_nursery() as nursery:
        await nursery.start(material.watch)
        addresses: dict[str, tuple[tuple[str, int], ...]] = {}
        bound = await start_proxy(nursery, settings, applier)
        addresses["proxy"] = tuple(bound)
        for host, port in bound:
            log.info("proxy listening on %s:%d", host, port)
        if settings.status_listen:
            addresses["status"] = await start_status_api(
                nursery,
                settings,
                StatusApp(
                    state,
                    reload_certificates=material.reload_report,
                    reconnect=client.reconnect_if_stale,
                ),
            )
        nursery.start_soon(client.run)
        # The telemetry link (cluster_telemetry_endpoint) lives beside the sync link; it
        # never affects the proxy or the configuration.
        telemetry = TelemetryClient(
            endpoint=settings.cluster_telemetry_endpoint,
            tls=lambda: material.current,
            node_id=node_id,
            server_name=settings.cluster_telemetry_server_name,
            interval=settings.cluster_heartbeat_interval,
            backoff=Backoff(
                settings.cluster_reconnect_backoff_min, settings.cluster_reconnect_backoff_max
            ),
            proxy_server=settings.proxy_server if settings.cluster_use_proxy else None,
            proxy_ssl_verify=settings.proxy_server_ssl_verify,
        )
        state.telemetry = telemetry.link
        nursery.start_soon(telemetry.run)
        info = NodeInfo(role="data_plane", node_id=node_id, addresses=addresses)
        write_listeners_file(prefix, info)
        log.info(
            "data plane %s started on %s (control plane %s, cache %s)",
            node_id,
            socket.gethostname(),
            ", ".join(str(e) for e in settings.cluster_control_plane),
            settings.data_plane_config_cache_mode,
        )
        task_status.started(info)
