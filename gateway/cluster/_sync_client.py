"""The data plane's sync client: connect, hello, receive snapshots, apply, ack; reconnect.

Theory of operation (task tree, per connection attempt)::

    SyncClient.run                 forever: pick a CP address, connect, session, back off
    └── session nursery
        ├── websocket reader       (trio-websocket; answers pings)
        ├── reader                 link.receive -> core -> events
        ├── writer                 outbox (acks / nacks) + core.next_outbound -> link.send
        └── applier                SnapshotReceived -> validate whole config -> swap -> cache -> ack

The client never stops the data plane: whatever fails (DNS, TCP, TLS, a refused certificate,
a protocol error, a config that does not validate) is logged, recorded in the node state
(``/status``), and followed by a reconnect after an exponential backoff with full jitter
between ``cluster_reconnect_backoff_min`` and ``cluster_reconnect_backoff_max``. With several
``cluster_control_plane`` addresses, a failure moves to the next address; the backoff grows
only after every address failed once. While the control plane is away the proxy keeps
serving the last applied configuration, indefinitely.

Applying is two-phase: the whole configuration is validated and compiled off the event loop
(``ConfigApplier.prepare(validate=True)``); a failure is answered with a nack listing the
entity and field errors and changes nothing. Only then is it swapped in (one assignment),
written to the cache and acknowledged.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio
import trio_websocket

from gateway._config_apply import ConfigApplier
from gateway._state import NodeState
from gateway.cluster._cache import CachedConfig, ConfigCache
from gateway.cluster._material import ClusterMaterial
from gateway.cluster._tls import ClusterTLS
from gateway.cluster._transport import DialFailed, dial_control_plane
from gateway.cluster._websocket import (
    ClusterWebSocket,
    LinkClosed,
    LinkRefused,
    absorb_reader_errors,
    connect_websocket,
)
from gateway.declarative import DeclarativeError
from gateway.settings import Endpoint
from protocol import EMPTY_CONFIG_HASH, ProtocolError
from protocol.sync import (
    MAX_NACK_ERRORS,
    SUBPROTOCOL,
    WEBSOCKET_PATH,
    Ack,
    DataPlaneConnection,
    EntityError,
    Event,
    Heartbeat,
    Hello,
    Message,
    Nack,
    NackCode,
    NeedData,
    SnapshotReceived,
    SnapshotRejected,
    StatusUpdate,
    SyncStatus,
    Welcome,
    close_code_for,
    max_frame_size,
)

__all__ = ["Backoff", "SyncClient", "SyncClientOptions", "nack_for"]

log = logging.getLogger("gateway.cluster")

CONNECT_TIMEOUT = 10.0


class Backoff:
    """Exponential backoff with full jitter: ``uniform(low, min(high, low * 2**n))``."""

    def __init__(self, low: float, high: float, *, rng: random.Random | None = None) -> None:
        self.low = low
        self.high = max(high, low)
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.high, self.low * 2 ** min(self.failures, 32))
        self.failures += 1
        return self._rng.uniform(self.low, ceiling)

    def reset(self) -> None:
        self.failures = 0


@attrs.frozen(kw_only=True)
class SyncClientOptions:
    node_id: str
    hostname: str
    version: str
    plugins: Mapping[str, str]
    labels: Mapping[str, str]
    endpoints: Sequence[Endpoint]
    max_payload: int
    server_name: str | None = None
    #: ``proxy_server`` when ``cluster_use_proxy`` is on: connect through an HTTP CONNECT tunnel
    proxy_server: str | None = None
    proxy_ssl_verify: bool = True
    backoff_min: float = 1.0
    backoff_max: float = 30.0
    connect_timeout: float = CONNECT_TIMEOUT


def nack_for(snapshot: SnapshotReceived, exc: BaseException) -> Nack:
    """A nack for a snapshot that failed validation or apply, with entity/field errors."""
    if isinstance(exc, DeclarativeError):
        errors: list[EntityError] = []
        for entity in exc.flattened:
            for problem in entity.get("errors") or ():
                errors.append(
                    EntityError(
                        entity_type=_text(entity.get("entity_type")),
                        entity_id=_text(entity.get("entity_id")),
                        entity_name=_text(entity.get("entity_name")),
                        field=_text(problem.get("field")),
                        message=str(problem.get("message") or "invalid"),
                    )
                )
        if not errors:
            errors = [EntityError(message=m) for m in exc.messages]
        return Nack(
            config_version=snapshot.config_version,
            config_hash=snapshot.config_hash,
            code=NackCode.INVALID_CONFIG,
            message=str(exc),
            errors=tuple(errors[:MAX_NACK_ERRORS]),
            omitted_errors=max(0, len(errors) - MAX_NACK_ERRORS),
        )
    code = NackCode.INVALID_CONFIG if isinstance(exc, ValueError | TypeError) else None
    return Nack(
        config_version=snapshot.config_version,
        config_hash=snapshot.config_hash,
        code=code or NackCode.APPLY_FAILED,
        message=f"{type(exc).__name__}: {exc}",
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class SyncClient:
    """Keeps a data plane in sync with its control plane(s)."""

    def __init__(
        self,
        *,
        options: SyncClientOptions,
        tls: ClusterTLS,
        state: NodeState,
        applier: ConfigApplier,
        cache: ConfigCache | None,
        on_applied: Callable[[int, str], Awaitable[None]] | None = None,
        on_received: Callable[[int], None] | None = None,
        material: ClusterMaterial | None = None,
    ) -> None:
        """``material``, when given, supplies the TLS material of each new connection
        (rotation without restart); ``tls`` is then only the initial value."""
        self.options = options
        self.tls = tls
        self.material = material
        self.state = state
        self.applier = applier
        self.cache = cache
        self.on_applied = on_applied
        #: Called with the config version when a snapshot arrived and decoded (bench).
        self.on_received = on_received
        self.backoff = Backoff(options.backoff_min, options.backoff_max)
        self.connections = 0  # successful websocket sessions (tests, bench)
        self.bytes_received = 0  # websocket payload bytes from control planes (bench)
        self._running_version = state.config_version or 0
        self._running_hash = state.config_hash
        self._current: _Session | None = None
        self._session_tls: ClusterTLS | None = None  # the material of the current session
        self._reconnect_now = False

    @property
    def current_tls(self) -> ClusterTLS:
        """The material a new connection uses (the latest reloaded one)."""
        return self.material.current if self.material is not None else self.tls

    def reconnect_if_stale(self, reason: str) -> bool:
        """Close the current session if it was made with older TLS material than
        ``current_tls`` (a reload happened since), and connect again at once, so that the
        new certificate is presented now. The proxy keeps serving meanwhile. True when a
        session is being closed."""
        session = self._current
        if session is None or self._session_tls is self.current_tls:
            return False
        self._reconnect_now = True
        log.info("closing the control plane link: %s", reason)
        session.stop(reason)
        return True

    # -- the reconnect loop -----------------------------------------------------------------

    async def run(self) -> None:
        endpoints = list(self.options.endpoints)
        index = 0
        while True:
            endpoint = endpoints[index % len(endpoints)]
            established = False
            try:
                established = await self._connect_once(endpoint)
            except Exception as exc:  # never let the client die: log and retry
                self._link_down(endpoint, f"unexpected error: {exc!r}")
                log.exception("sync with control plane %s failed unexpectedly", endpoint)
            if established:
                self.backoff.reset()
                if self._reconnect_now:
                    self._reconnect_now = False
                    continue
            else:
                index += 1
                if index % len(endpoints) != 0:
                    continue  # try the next address at once
            delay = self.backoff.next_delay()
            log.info("reconnecting to the control plane in %.2f s", delay)
            await trio.sleep(delay)

    def _link_down(self, endpoint: Endpoint, reason: str) -> None:
        link = self.state.control_plane
        if link.connected:
            link.disconnected_at = time.time()
        link.connected = False
        link.address = str(endpoint)
        link.last_error = reason

    async def _connect_once(self, endpoint: Endpoint) -> bool:
        """One connection attempt and session; True if a session was established."""
        address = str(endpoint)
        tls = self.current_tls
        try:
            peer, server_name = await dial_control_plane(
                endpoint,
                tls,
                server_name=self.options.server_name,
                timeout=self.options.connect_timeout,
                proxy_server=self.options.proxy_server,
                proxy_ssl_verify=self.options.proxy_ssl_verify,
            )
        except DialFailed as exc:
            if not exc.logged:
                log.warning("control plane %s: %s", address, exc.reason)
            self._link_down(endpoint, exc.reason)
            return False
        established = False
        try:
            with absorb_reader_errors():
                async with trio.open_nursery() as nursery:  # hosts the websocket reader task
                    try:
                        ws = await connect_websocket(
                            nursery,
                            peer.stream,
                            host=server_name or endpoint.host,
                            path=WEBSOCKET_PATH,
                            subprotocol=SUBPROTOCOL,
                            max_message_size=max_frame_size(self.options.max_payload),
                            timeout=self.options.connect_timeout,
                        )
                    except LinkRefused as exc:
                        reason = f"websocket upgrade with {address} failed: {exc}"
                        log.warning("control plane %s: %s", address, reason)
                        self._link_down(endpoint, reason)
                        nursery.cancel_scope.cancel()
                        return False
                    established = True
                    await self._session(ws, endpoint, tls)
                    nursery.cancel_scope.cancel()
        except* trio_websocket.ConnectionRejected as group:
            status = getattr(group.exceptions[0], "status_code", "?")
            reason = f"the control plane {address} refused the websocket upgrade (HTTP {status})"
            log.warning("%s", reason)
            self._link_down(endpoint, reason)
        finally:
            await trio.aclose_forcefully(peer.stream)
        return established

    # -- one session ------------------------------------------------------------------------

    async def _session(self, ws: ClusterWebSocket, endpoint: Endpoint, tls: ClusterTLS) -> None:
        session = _Session(self, ws, endpoint)
        self.connections += 1
        link = self.state.control_plane
        link.connected = True
        link.address = str(endpoint)
        link.connected_since = time.time()
        link.last_error = None
        log.info("connected to control plane %s", endpoint)
        self._current = session
        self._session_tls = tls
        self._reconnect_now = False
        try:
            await session.run()
        finally:
            self._current = None
            self._session_tls = None
            reason = session.close_reason or "connection closed"
            link.connected = False
            link.disconnected_at = time.time()
            # A stop, or a reconnect we asked for (a reloaded certificate), is no error.
            stopping = reason == "data plane stopping" or self._reconnect_now
            if not stopping:
                link.last_error = reason
            log.log(
                logging.INFO if stopping else logging.WARNING,
                "disconnected from control plane %s: %s",
                endpoint,
                reason,
            )

    def hello(self) -> Hello:
        return Hello(
            node_id=self.options.node_id,
            hostname=self.options.hostname,
            version=self.options.version,
            plugins=self.options.plugins,
            labels=self.options.labels,
            config_version=self._running_version,
            config_hash=self._running_hash or EMPTY_CONFIG_HASH,
            max_payload=self.options.max_payload,
        )

    async def apply(self, snapshot: SnapshotReceived) -> Message:
        """Validate, swap in, cache; the ack or nack to send."""
        started = trio.current_time()
        try:
            prepared = await self.applier.prepare(
                snapshot.config, version=snapshot.config_version, validate=True
            )
        except Exception as exc:
            nack = nack_for(snapshot, exc)
            self.state.last_apply_error = nack.message
            log.error(
                "config version %d from the control plane refused (%s), keeping version %s: %s",
                snapshot.config_version,
                nack.code.value,
                self.state.config_version,
                nack.message,
            )
            return nack
        # The data plane reports the control plane's hash of what it runs (the hash of the
        # payload), so that operators compare one value across the cluster.
        prepared = attrs.evolve(prepared, hash=snapshot.config_hash)
        self.applier.install(prepared, source="control_plane")
        # Ack only once every proxy process runs it (worker processes apply asynchronously).
        await self.applier.settle(prepared.version)
        self._running_version = snapshot.config_version
        self._running_hash = snapshot.config_hash
        self.state.control_plane.last_sync_at = time.time()
        if self.cache is not None:
            cached = CachedConfig(
                config=snapshot.config,
                version=snapshot.config_version,
                hash=snapshot.config_hash,
            )
            try:
                await trio.to_thread.run_sync(self.cache.store, cached)
            except Exception as exc:  # the config runs; only the restart copy is stale
                log.error("writing the config cache failed: %s", exc)
                self.state.last_apply_error = f"config cache not written: {exc}"
        log.info(
            "config version %d applied in %.0f ms",
            snapshot.config_version,
            (trio.current_time() - started) * 1000,
        )
        if self.on_applied is not None:
            await self.on_applied(snapshot.config_version, snapshot.config_hash)
        return Ack(config_version=snapshot.config_version, config_hash=snapshot.config_hash)


class _Session:
    """Reader, writer and applier around one ``DataPlaneConnection``."""

    def __init__(self, client: SyncClient, ws: ClusterWebSocket, endpoint: Endpoint) -> None:
        self.client = client
        self.ws = ws
        self.endpoint = endpoint
        self.core = DataPlaneConnection(hello=client.hello(), now=trio.current_time())
        self.close_reason = ""
        self._close: tuple[int, str] | None = None
        self._outbox: deque[Message] = deque()
        self._kick = trio.Event()
        send, receive = trio.open_memory_channel[SnapshotReceived](1)
        self._snapshots_in = send
        self._snapshots_out = receive
        self._scope = trio.CancelScope()

    def stop(self, reason: str) -> None:
        """End the session with a normal close (the client then reconnects)."""
        self._fail(1000, reason)
        self._scope.cancel()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                for task in (self._reader, self._writer, self._applier):
                    nursery.start_soon(self._until_done, task, nursery.cancel_scope)
        finally:
            if self._close is None:  # cancelled: this data plane is stopping
                self.close_reason = self.close_reason or "data plane stopping"
                await self.ws.close(1001, "data plane stopping", wait=0.2)
            else:
                await self.ws.close(*self._close)

    async def _until_done(
        self, task: Callable[[], Awaitable[None]], scope: trio.CancelScope
    ) -> None:
        try:
            await task()
        except LinkClosed as exc:
            if not self.close_reason:
                self.close_reason = str(exc)
        finally:
            scope.cancel()

    def _fail(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)
        if not self.close_reason:
            self.close_reason = reason

    async def _reader(self) -> None:
        while True:
            data = await self.ws.receive()
            self.client.bytes_received += len(data)
            try:
                self.core.receive_message(data, now=trio.current_time())
            except ProtocolError as exc:
                log.error("control plane %s: protocol error: %s", self.endpoint, exc)
                self._fail(*close_code_for(exc))
                return
            while not isinstance(event := self.core.next_event(), NeedData):
                await self._handle(event)
            self._kick.set()

    async def _handle(self, event: Event) -> None:
        link = self.client.state.control_plane
        if isinstance(event, Welcome | StatusUpdate):
            link.sync_status = event.sync_status.value
            if event.sync_status in (SyncStatus.NORMAL, SyncStatus.UNKNOWN):
                log.info("sync status from the control plane: %s", event.sync_status.value)
            else:
                link.last_error = f"{event.sync_status.value}: {event.reason}"
                log.error(
                    "the control plane will not send configuration to this data plane: %s (%s)",
                    event.sync_status.value,
                    event.reason,
                )
        elif isinstance(event, Heartbeat):
            if event.sync_status is not None:
                link.sync_status = event.sync_status.value
        elif isinstance(event, SnapshotReceived):
            if self.client.on_received is not None:
                self.client.on_received(event.config_version)
            log.info(
                "config version %d received (%d bytes, hash %s)",
                event.config_version,
                event.size,
                event.config_hash,
            )
            # The core allows one snapshot in flight, so the channel never blocks for long.
            await self._snapshots_in.send(event)
        elif isinstance(event, SnapshotRejected):
            self.client.state.last_apply_error = event.nack.message
            log.error("config version %d refused: %s", event.config_version, event.nack.message)

    async def _applier(self) -> None:
        async for snapshot in self._snapshots_out:
            answer = await self.client.apply(snapshot)
            self._outbox.append(answer)
            self._kick.set()

    async def _writer(self) -> None:
        while True:
            now = trio.current_time()
            if self.core.peer_timed_out(now):
                reason = "peer_timeout: nothing from the control plane for too long"
                log.warning("control plane %s: %s; reconnecting", self.endpoint, reason)
                self._fail(4408, reason)
                return
            while True:
                message = self._outbox.popleft() if self._outbox else self.core.next_outbound(now)
                if message is None:
                    break
                try:
                    payload = self.core.send(message)
                except ProtocolError as exc:
                    log.error("cannot send %s: %s", type(message).__name__, exc)
                    self._fail(1011, "internal error")
                    return
                await self.ws.send(payload)
            with trio.move_on_at(self.core.next_deadline()):
                await self._kick.wait()
            self._kick = trio.Event()


def default_hostname() -> str:
    return socket.gethostname()
