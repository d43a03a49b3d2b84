"""The control plane node: ``serve_control_plane``.

Theory of operation (task tree)::

    serve_control_plane
    ├── admin API              (every write bumps the store's config version)
    ├── status API             (when status_listen is set)
    ├── config publisher       store.watch -> export -> runtime view -> encode once
    ├── cluster listener(s)    per TCP connection: mTLS -> websocket -> DataPlaneSession
    ├── telemetry listener(s)  per TCP connection: mTLS -> websocket -> held open
    └── purge loop             deletes rows of data planes not seen for the purge delay

Security: a TCP connection on ``cluster_listen`` first goes through
:func:`accept_cluster_peer` (TLS handshake plus the certificate policy); a peer it refuses
is logged with its address and the reason and closed. Only then is the websocket upgrade
read, so no byte of the sync protocol is ever parsed for an unauthenticated peer. A control
plane never proxies.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from datetime import UTC, datetime
from typing import Any

import trio

import certs
from gateway._errors import ConfigError
from gateway._net import bound_address, open_listener
from gateway._node import (
    NodeInfo,
    _AdminNode,
    open_node_store,
    prepare_prefix,
    start_http_api,
    write_listeners_file,
)
from gateway._node_id import load_or_create_node_id
from gateway._state import NodeState
from gateway._status_api import StatusApp
from gateway._version import __version__
from gateway.admin import AdminApp, install_meta_routes
from gateway.cluster._publisher import ConfigPublisher
from gateway.cluster._session import DataPlaneSession, PeerInfo, SessionOptions
from gateway.cluster._telemetry import serve_telemetry_link
from gateway.cluster._tls import ClusterPeerRejected, ClusterTLS, accept_cluster_peer
from gateway.cluster._websocket import absorb_reader_errors, accept_websocket
from gateway.plugins import plugin_versions
from gateway.schema.entities import ENTITIES
from gateway.settings import ListenAddress, Settings
from gateway.store import Store
from protocol.sync import (
    DEFAULT_HELLO_TIMEOUT,
    MAX_CONTROL_MESSAGE,
    SUBPROTOCOL,
    WEBSOCKET_PATH,
)

__all__ = ["ControlPlane", "load_cluster_tls", "serve_control_plane"]

log = logging.getLogger("gateway.cluster")

#: Time allowed for the TLS handshake and for the websocket upgrade, each.
HANDSHAKE_TIMEOUT = 10.0
#: The websocket library counts characters of text frames; leave room for framing.
_MAX_DP_MESSAGE = MAX_CONTROL_MESSAGE + 4096


def load_cluster_tls(settings: Settings) -> ClusterTLS:
    """The cluster TLS material from the settings, errors as ``ConfigError``."""
    if not settings.cluster_cert or not settings.cluster_cert_key:
        raise ConfigError(
            "cluster certificate and key must be provided to use Hybrid mode", key="cluster_cert"
        )
    try:
        tls = ClusterTLS.load(
            mode=settings.cluster_mtls,
            cluster_cert=settings.cluster_cert,
            cluster_cert_key=settings.cluster_cert_key,
            cluster_ca_cert=settings.cluster_ca_cert,
            server_name=getattr(settings, "cluster_server_name", None),
        )
    except (certs.CertificateError, ValueError, OSError) as exc:
        raise ConfigError(str(exc), key="cluster_cert") from exc
    # A node whose own certificate is outside its validity window would only be refused
    # by every peer: stop at start with the reason instead of dialling in a loop.
    try:
        certs.check_validity(tls.leaf, datetime.now(UTC))
    except certs.VerificationError as exc:
        raise ConfigError(f"cluster_cert: {exc.reason}", key="cluster_cert") from exc
    return tls


def note_cert_expiry(settings: Settings, tls: ClusterTLS, state: NodeState) -> None:
    expiry = tls.expires_at.timestamp()
    state.cluster_cert_expiry = expiry
    days = settings.cluster_cert_expiry_warning
    left = (expiry - time.time()) / 86400
    state.cluster_cert_expiring_soon = days > 0 and left < days
    if state.cluster_cert_expiring_soon:
        log.warning("the cluster certificate expires in %.1f days (%s)", left, tls.expires_at)


def peer_address(stream: trio.abc.Stream) -> tuple[str, str]:
    """``(ip, "ip:port")`` of the remote end of a TCP stream."""
    sock = getattr(stream, "socket", None)
    try:
        host, port = sock.getpeername()[:2] if sock is not None else ("unknown", 0)
    except OSError:
        host, port = "unknown", 0
    host = str(host)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return host, shown


class ControlPlane:
    """The cluster side of a control plane: sessions, listeners, purge."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        state: NodeState,
        tls: ClusterTLS,
        publisher: ConfigPublisher,
    ) -> None:
        self.settings = settings
        self.store = store
        self.state = state
        self.tls = tls
        self.publisher = publisher
        self.sessions: set[DataPlaneSession] = set()
        self.options = SessionOptions(
            node_id=state.node_id,
            version=__version__,
            plugins=plugin_versions(),
            max_payload=settings.cluster_max_payload,
            heartbeat_interval=settings.cluster_heartbeat_interval,
            heartbeat_timeout=settings.cluster_heartbeat_timeout,
            hello_timeout=min(DEFAULT_HELLO_TIMEOUT, settings.cluster_heartbeat_timeout),
            row_write_interval=min(5.0, settings.cluster_heartbeat_interval),
        )

    async def _authenticate(self, stream: trio.abc.Stream, shown: str) -> Any:
        """mTLS handshake and policy; None when refused (already logged with the reason)."""
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                return await accept_cluster_peer(
                    stream, self.tls, peer=shown, now=datetime.now(UTC)
                )
        except ClusterPeerRejected:
            return None
        except trio.TooSlowError:
            log.warning("peer %s rejected: no TLS handshake within %g s", shown, HANDSHAKE_TIMEOUT)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.warning("peer %s rejected: connection failed during TLS: %s", shown, exc)
        await trio.aclose_forcefully(stream)
        return None

    async def handle_sync_connection(self, stream: trio.abc.Stream) -> None:
        """One TCP connection on ``cluster_listen``. Never raises for peer behaviour."""
        ip, shown = peer_address(stream)
        try:
            peer = await self._authenticate(stream, shown)
            if peer is None:
                return
            info = PeerInfo(ip=ip, address=shown, cert_expiry=peer.expires_at.timestamp())
            with absorb_reader_errors():
                async with trio.open_nursery() as nursery:  # hosts the websocket reader task
                    ws = await accept_websocket(
                        nursery,
                        peer.stream,
                        path=WEBSOCKET_PATH,
                        subprotocol=SUBPROTOCOL,
                        max_message_size=_MAX_DP_MESSAGE,
                        timeout=HANDSHAKE_TIMEOUT,
                        peer=shown,
                    )
                    if ws is not None:
                        ws.timeout = max(self.settings.cluster_heartbeat_timeout, 10.0)
                        session = DataPlaneSession(
                            ws,
                            peer=info,
                            publisher=self.publisher,
                            store=self.store,
                            options=self.options,
                        )
                        self.sessions.add(session)
                        self.publisher.sessions = len(self.sessions)
                        try:
                            await session.run()
                        finally:
                            self.sessions.discard(session)
                            self.publisher.sessions = len(self.sessions)
                    nursery.cancel_scope.cancel()
        except Exception:
            log.exception("data plane connection from %s failed", shown)
        finally:
            await trio.aclose_forcefully(stream)

    async def handle_telemetry_connection(self, stream: trio.abc.Stream) -> None:
        _, shown = peer_address(stream)
        try:
            peer = await self._authenticate(stream, shown)
            if peer is None:
                return
            await serve_telemetry_link(
                peer.stream,
                peer=shown,
                timeout=HANDSHAKE_TIMEOUT,
                silence_timeout=self.settings.cluster_heartbeat_timeout,
            )
        except Exception:
            log.exception("telemetry connection from %s failed", shown)
        finally:
            await trio.aclose_forcefully(stream)

    async def purge_loop(self) -> None:
        """Delete rows of data planes not seen for ``cluster_data_plane_purge_delay``."""
        delay = self.settings.cluster_data_plane_purge_delay
        interval = min(60.0, delay / 4)
        while True:
            try:
                gone = await self.store.purge_data_planes(time.time() - delay)
                if gone:
                    log.info("purged %d data plane(s) not seen for %d s", gone, delay)
            except Exception as exc:
                log.error("purging data plane rows failed: %s", exc)
            await trio.sleep(interval)


class _ControlPlaneAdmin(_AdminNode):
    """Adds ``ttl`` (seconds until the row is purged) to ``/clustering/data-planes``."""

    async def data_planes(
        self, *, size: int, offset: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        rows, nxt = await super().data_planes(size=size, offset=offset)
        delay = self.settings.cluster_data_plane_purge_delay
        now = time.time()
        for row in rows:
            last_seen = row.get("last_seen")
            if isinstance(last_seen, int | float):
                row["ttl"] = max(0, int(last_seen + delay - now))
                row["last_seen"] = int(last_seen)
        return rows, nxt


async def _serve_listeners(
    nursery: trio.Nursery,
    addresses: tuple[ListenAddress, ...],
    handler: Any,
    name: str,
) -> list[tuple[str, int]]:
    listeners = [await open_listener(a) for a in addresses]
    bound = [bound_address(lst) for lst in listeners]
    await nursery.start(trio.serve_listeners, handler, listeners)
    for host, port in bound:
        log.info("%s listening on %s:%d (mutual TLS)", name, host, port)
    return bound


async def serve_control_plane(
    settings: Settings, *, task_status: trio.TaskStatus[NodeInfo] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a control plane until cancelled: Admin API, config publisher, cluster listeners.

    Reports the bound addresses (``admin``, ``status``, ``cluster``, ``telemetry``) through
    ``task_status.started(NodeInfo)`` and writes them to ``<prefix>/listeners.json``.
    """
    if settings.database == "off":
        raise ConfigError(
            'in-memory storage can not be used when role = "control_plane"', key="database"
        )
    prefix = prepare_prefix(settings)
    node_id = load_or_create_node_id(prefix, str(settings.node_id) if settings.node_id else None)
    state = NodeState(role="control_plane", node_id=node_id)
    tls = load_cluster_tls(settings)
    note_cert_expiry(settings, tls, state)
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_node_store(settings))
        publisher = ConfigPublisher(store, state, coalesce=settings.cluster_sync_coalesce)
        cluster = ControlPlane(settings, store=store, state=state, tls=tls, publisher=publisher)
        # Admin, status, publisher, cluster and telemetry listeners and the purge loop are
        # siblings: any of them failing stops the node.
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            addresses: dict[str, tuple[tuple[str, int], ...]] = {}
            if settings.admin_listen:
                app = AdminApp(store=store, schemas=ENTITIES)
                install_meta_routes(app, _ControlPlaneAdmin(settings, state, store, None))
                addresses["admin"] = tuple(
                    await start_http_api(
                        nursery,
                        app.handle,
                        settings.admin_listen,
                        certs=settings.admin_ssl_cert,
                        keys=settings.admin_ssl_cert_key,
                        name="admin",
                    )
                )
            if settings.status_listen:
                addresses["status"] = tuple(
                    await start_http_api(
                        nursery,
                        StatusApp(state),
                        settings.status_listen,
                        certs=settings.status_ssl_cert,
                        keys=settings.status_ssl_cert_key,
                        name="status",
                    )
                )
            addresses["cluster"] = tuple(
                await _serve_listeners(
                    nursery, settings.cluster_listen, cluster.handle_sync_connection, "cluster"
                )
            )
            if settings.cluster_telemetry_listen:
                addresses["telemetry"] = tuple(
                    await _serve_listeners(
                        nursery,
                        settings.cluster_telemetry_listen,
                        cluster.handle_telemetry_connection,
                        "telemetry",
                    )
                )
            nursery.start_soon(cluster.purge_loop)
            info = NodeInfo(role="control_plane", node_id=node_id, addresses=addresses)
            write_listeners_file(prefix, info)
            log.info(
                "control plane %s started on %s (cluster_mtls = %s)",
                node_id,
                socket.gethostname(),
                settings.cluster_mtls,
            )
            task_status.started(info)
