"""The control plane node: ``serve_control_plane``.

Theory of operation (task tree)::

    serve_control_plane
    ├── admin API              (every write bumps the store's config version)
    ├── status API             (when status_listen is set)
    ├── config publisher       store.watch -> export -> runtime view -> encode once
    ├── cluster listener(s)    per TCP connection: mTLS -> OCSP -> websocket -> DataPlaneSession
    │                          (+ a revocation re-check task per session)
    ├── telemetry listener(s)  per TCP connection: mTLS -> OCSP -> websocket -> held open
    ├── certificate watch      SIGHUP / file changes -> ClusterMaterial.reload()
    └── purge loop             deletes rows of data planes not seen for the purge delay

Security: a TCP connection on ``cluster_listen`` first goes through
:func:`accept_cluster_peer` (TLS handshake plus the certificate policy, with the material
current at that moment), then, in PKI mode with ``cluster_ocsp`` on or optional, through the
revocation check (:class:`gateway.cluster._admission.Admission`); a peer that either refuses is
logged with its address and the reason, listed by ``GET /clustering/refusals``, and closed.
Only then is the websocket upgrade read, so no byte of the sync protocol is ever parsed for
an unauthenticated or revoked peer. A control plane never proxies.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import trio

from gateway._errors import ConfigError
from gateway._net import bound_address, open_listener
from gateway._node import (
    NodeInfo,
    _AdminNode,
    open_node_store,
    prepare_prefix,
    start_admin_api,
    start_status_api,
    write_listeners_file,
)
from gateway._node_id import load_or_create_node_id
from gateway._state import NodeState
from gateway._status_api import StatusApp
from gateway._version import __version__
from gateway.admin import AdminApp, install_meta_routes
from gateway.cluster._admission import Admission, certificate_label
from gateway.cluster._material import ClusterMaterial, load_cluster_tls
from gateway.cluster._ocsp import RevocationChecker, RevocationResult
from gateway.cluster._publisher import ConfigPublisher
from gateway.cluster._session import DataPlaneSession, PeerInfo, SessionOptions
from gateway.cluster._telemetry import serve_telemetry_link
from gateway.cluster._tls import ClusterPeer, ClusterPeerRejected, accept_cluster_peer
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
        material: ClusterMaterial,
        publisher: ConfigPublisher,
    ) -> None:
        self.settings = settings
        self.store = store
        self.state = state
        self.material = material
        self.publisher = publisher
        checker = None
        if settings.cluster_mtls == "pki" and settings.cluster_ocsp != "off":
            # One checker per control plane: every connection shares its cache.
            checker = RevocationChecker(
                settings.cluster_ocsp,
                timeout=settings.cluster_ocsp_timeout,
                recheck_interval=settings.cluster_ocsp_recheck_interval,
            )
        self.admission = Admission(checker, recheck_interval=settings.cluster_ocsp_recheck_interval)
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

    async def _authenticate(
        self, stream: trio.abc.Stream, shown: str
    ) -> tuple[ClusterPeer, RevocationResult] | None:
        """mTLS handshake, policy and revocation check; None when refused (already logged,
        recorded for ``/clustering/refusals`` and closed)."""
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                # The material current now: a rotation applies to the next connection.
                peer = await accept_cluster_peer(
                    stream, self.material.current, peer=shown, now=datetime.now(UTC)
                )
        except ClusterPeerRejected as exc:  # logged by accept_cluster_peer
            self.admission.record(shown, "handshake", exc.reason)
            return None
        except trio.TooSlowError:
            log.warning("peer %s rejected: no TLS handshake within %g s", shown, HANDSHAKE_TIMEOUT)
            await trio.aclose_forcefully(stream)
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.warning("peer %s rejected: connection failed during TLS: %s", shown, exc)
            await trio.aclose_forcefully(stream)
            return None
        try:
            verdict = await self.admission.admit(peer)
        except BaseException:
            await trio.aclose_forcefully(peer.stream)
            raise
        if verdict is None:
            await trio.aclose_forcefully(peer.stream)
            return None
        return peer, verdict

    async def handle_sync_connection(self, stream: trio.abc.Stream) -> None:
        """One TCP connection on ``cluster_listen``. Never raises for peer behaviour."""
        ip, shown = peer_address(stream)
        try:
            admitted = await self._authenticate(stream, shown)
            if admitted is None:
                return
            peer, verdict = admitted
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
                            revocation_watch=self._revocation_watch(peer, verdict),
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

    def _revocation_watch(
        self, peer: ClusterPeer, verdict: RevocationResult
    ) -> Callable[[], Awaitable[str]] | None:
        """The session's re-check task (None when there is nothing to re-check)."""
        if self.admission.checker is None or self.settings.cluster_ocsp_recheck_interval <= 0:
            return None

        async def watch() -> str:
            return await self.admission.watch(peer, verdict)

        return watch

    async def handle_telemetry_connection(self, stream: trio.abc.Stream) -> None:
        _, shown = peer_address(stream)
        try:
            admitted = await self._authenticate(stream, shown)
            if admitted is None:
                return
            peer, verdict = admitted
            # The link and its revocation re-check: a revoked DP loses this link too.
            async with trio.open_nursery() as nursery:

                async def link() -> None:
                    await serve_telemetry_link(
                        peer.stream,
                        peer=shown,
                        timeout=HANDSHAKE_TIMEOUT,
                        silence_timeout=self.settings.cluster_heartbeat_timeout,
                    )
                    nursery.cancel_scope.cancel()

                async def revoked() -> None:
                    reason = await self.admission.watch(peer, verdict)
                    log.warning(
                        "telemetry link of data plane %s closed: %s (%s)",
                        shown,
                        reason,
                        certificate_label(peer.certificate),
                    )
                    nursery.cancel_scope.cancel()

                nursery.start_soon(link)
                if self.admission.checker is not None:
                    nursery.start_soon(revoked)
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
    """Adds ``ttl`` (seconds until the row is purged) to ``/clustering/data-planes``, the
    refusals, the certificate reload and the node's certificate expiry."""

    def __init__(
        self, settings: Settings, state: NodeState, store: Store, cluster: ControlPlane
    ) -> None:
        super().__init__(settings, state, store, None)
        self.cluster = cluster

    def cluster_refusals(self) -> list[dict[str, Any]]:
        return self.cluster.admission.recent()

    def reload_cluster_certificates(self) -> dict[str, Any]:
        return self.cluster.material.reload_report()

    def cluster_certificate(self) -> dict[str, Any] | None:
        return self.state.cluster_certificate()

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
    material = ClusterMaterial(settings, state)  # ConfigError on bad material
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_node_store(settings))
        publisher = ConfigPublisher(store, state, coalesce=settings.cluster_sync_coalesce)
        cluster = ControlPlane(
            settings, store=store, state=state, material=material, publisher=publisher
        )
        # Admin, status, publisher, cluster and telemetry listeners, the certificate watch
        # and the purge loop are siblings: any of them failing stops the node.
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            await nursery.start(material.watch)
            addresses: dict[str, tuple[tuple[str, int], ...]] = {}
            if settings.admin_listen:
                app = AdminApp(store=store, schemas=ENTITIES)
                install_meta_routes(app, _ControlPlaneAdmin(settings, state, store, cluster))
                addresses["admin"] = await start_admin_api(nursery, settings, app.handle)
            if settings.status_listen:
                addresses["status"] = await start_status_api(
                    nursery, settings, StatusApp(state, reload_certificates=material.reload_report)
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
