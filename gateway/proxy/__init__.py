"""The proxy runtime: HTTP/1.1 reverse proxy with Kong's routing, plugins and balancing.

Public API::

    compiled = compile_config(config, version=1)      # off the hot path
    state = ProxyState(compiled); state.swap(new_compiled)
    await nursery.start(serve_proxy, settings, state)  # serves every proxy_listen address
    pool = await nursery.start(serve_workers, settings, config)  # N worker processes
    await pool.publish(new_config, version=2)
    fair_scheduling()  # before trio.run: Trio runs ready tasks first come, first served
"""

from gateway.proxy._handler import ProxyHandler, ProxyOptions
from gateway.proxy._pipeline import PluginPlan, PluginTable
from gateway.proxy._pool import ConnectionPool
from gateway.proxy._scheduling import fair_scheduling
from gateway.proxy._serve import ListenSocket, bind_listen_sockets, serve_proxy
from gateway.proxy._state import CompiledConfig, ConfigEntities, ProxyState, compile_config
from gateway.proxy._tls import CertificateStore
from gateway.proxy._workers import WorkerPool, serve_workers

__all__ = [
    "CertificateStore",
    "CompiledConfig",
    "ConfigEntities",
    "ConnectionPool",
    "ListenSocket",
    "PluginPlan",
    "PluginTable",
    "ProxyHandler",
    "ProxyOptions",
    "ProxyState",
    "WorkerPool",
    "bind_listen_sockets",
    "compile_config",
    "fair_scheduling",
    "serve_proxy",
    "serve_workers",
]
