"""One data plane session on the control plane: the shell around ``ControlPlaneConnection``.

Theory of operation (task tree, one nursery per data plane)::

    DataPlaneSession.run
    ├── reader        link.receive -> core.receive_message -> events -> row
    ├── writer        core.next_outbound -> core.send -> link.send; heartbeats; peer timeout
    ├── config        publisher.wait_changed -> core.set_config (status, snapshot due)
    ├── row writer    writes the data plane's status row (coalesced, heartbeats throttled)
    └── revocation    (optional) returns when the DP certificate is revoked: close 1008

The sans-I/O core decides everything protocol-related (what may be sent, the sync status,
drift, one snapshot in flight, timing); this module only moves bytes, reads the clock and
keeps the status row. The first task to finish (link closed, protocol error, peer silent)
cancels the others; the row is then marked disconnected, but only if it still belongs to
this session (the data plane may already be connected to another control plane node).

The link is anything with ``receive``/``send``/``close`` (:class:`MessageLink`): the real
:class:`gateway.cluster._websocket.ClusterWebSocket` or a memory fake in unit tests. A
session only ever starts on a link whose peer passed mutual TLS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

from gateway.cluster._publisher import ConfigPublisher
from gateway.cluster._websocket import LinkClosed
from gateway.store import Store
from protocol import ProtocolError
from protocol.sync import (
    CLOSE_PEER_TIMEOUT,
    Ack,
    ControlPlaneConnection,
    DriftDetected,
    Event,
    Heartbeat,
    Hello,
    Nack,
    NeedData,
    Snapshot,
    StatusChanged,
    SyncStatus,
    close_code_for,
)

__all__ = ["DataPlaneSession", "MessageLink", "SessionOptions"]

log = logging.getLogger("gateway.cluster")

#: Close code when this control plane stops (websocket "going away").
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
#: Close code when the data plane's certificate was revoked (websocket "policy violation").
CLOSE_POLICY_VIOLATION = 1008
#: Most nack entity errors kept in the status row.
_ROW_ERRORS = 20


class MessageLink(Protocol):
    """What a session needs from its websocket."""

    async def receive(self) -> bytes | str: ...
    async def send(self, payload: bytes | str) -> None: ...
    async def close(self, code: int = 1000, reason: str = "", *, wait: float = 2.0) -> None: ...


@attrs.frozen(kw_only=True)
class SessionOptions:
    """What every session of one control plane shares."""

    node_id: str
    version: str
    plugins: Mapping[str, str]
    max_payload: int
    heartbeat_interval: float
    heartbeat_timeout: float
    hello_timeout: float = 10.0
    #: At most one row write per this many seconds for heartbeats alone.
    row_write_interval: float = 5.0


@attrs.frozen(kw_only=True)
class PeerInfo:
    """Who is on the other end, from the TLS layer and the socket."""

    ip: str
    address: str
    cert_expiry: float | None = None


class DataPlaneSession:
    def __init__(
        self,
        link: MessageLink,
        *,
        peer: PeerInfo,
        publisher: ConfigPublisher,
        store: Store,
        options: SessionOptions,
        on_open: Callable[[DataPlaneSession], Awaitable[None]] | None = None,
        revocation_watch: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        """``revocation_watch`` returns (with the reason) only when the data plane's
        certificate was found revoked; the session then closes the link (1008)."""
        self.link = link
        self.peer = peer
        self.publisher = publisher
        self.store = store
        self.options = options
        self.core = ControlPlaneConnection(
            node_id=options.node_id,
            version=options.version,
            plugins=options.plugins,
            now=trio.current_time(),
            config=publisher.current,
            max_payload=options.max_payload,
            heartbeat_interval=options.heartbeat_interval,
            heartbeat_timeout=options.heartbeat_timeout,
            hello_timeout=options.hello_timeout,
        )
        self.row: dict[str, Any] | None = None
        self.close_reason = ""
        self._close: tuple[int, str] | None = None
        self._writer_kick = trio.Event()
        self._row_kick = trio.Event()
        self._row_dirty = False
        self._last_row_write = -float("inf")
        self._on_open = on_open
        self._revocation_watch = revocation_watch

    @property
    def node_label(self) -> str:
        hello = self.core.hello
        if hello is None:
            return self.peer.address
        return f"{hello.node_id} ({hello.hostname}, {self.peer.address})"

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the data plane until the link ends; never raises for peer behaviour."""
        try:
            async with trio.open_nursery() as nursery:
                for task in (self._reader, self._writer, self._follow_config, self._row_writer):
                    nursery.start_soon(self._until_done, task, nursery.cancel_scope)
                if self._revocation_watch is not None:
                    nursery.start_soon(self._until_done, self._revoked, nursery.cancel_scope)
        finally:
            with trio.CancelScope(shield=True):
                if self._close is None:  # cancelled: this control plane is stopping
                    self.close_reason = self.close_reason or "control plane stopping"
                    await self.link.close(CLOSE_GOING_AWAY, "control plane stopping", wait=0.2)
                else:
                    await self.link.close(*self._close)
                await self._mark_disconnected()

    async def _until_done(
        self, task: Callable[[], Awaitable[None]], scope: trio.CancelScope
    ) -> None:
        try:
            await task()
        except LinkClosed as exc:
            self.close_reason = str(exc)
            if self._close is None:
                self._close = (exc.code, exc.reason)
        finally:
            scope.cancel()

    def _fail(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)
        self.close_reason = reason

    async def _revoked(self) -> None:
        assert self._revocation_watch is not None
        reason = await self._revocation_watch()
        log.warning("data plane %s disconnected: %s", self.node_label, reason)
        self._fail(CLOSE_POLICY_VIOLATION, "data plane certificate revoked")
        self.close_reason = reason
        self._note_error(reason)

    async def _reader(self) -> None:
        while True:
            data = await self.link.receive()
            try:
                self.core.receive_message(data, now=trio.current_time())
            except ProtocolError as exc:
                log.warning("data plane %s: protocol error, closing: %s", self.node_label, exc)
                self._fail(*close_code_for(exc))
                self._note_error(f"protocol error: {exc}")
                return
            await self._drain_events()
            self._writer_kick.set()

    async def _writer(self) -> None:
        while True:
            now = trio.current_time()
            if self.core.peer_timed_out(now):
                what = "hello" if self.core.hello is None else "message"
                waited = (
                    self.options.hello_timeout
                    if self.core.hello is None
                    else self.options.heartbeat_timeout
                )
                reason = f"peer_timeout: no {what} from the data plane for {waited:g} s"
                log.warning("data plane %s: %s; closing", self.node_label, reason)
                self._fail(CLOSE_PEER_TIMEOUT, reason)
                self._note_error(reason)
                return
            while (message := self.core.next_outbound(now)) is not None:
                try:
                    payload = self.core.send(message)
                except ProtocolError as exc:  # a bug on our side: do not loop on it
                    log.error("data plane %s: cannot send %s: %s", self.node_label, message, exc)
                    self._fail(CLOSE_INTERNAL_ERROR, "internal error")
                    return
                await self.link.send(payload)
                if isinstance(message, Snapshot):
                    log.info(
                        "config version %d sent to data plane %s",
                        message.snapshot.config_version,
                        self.node_label,
                    )
            with trio.move_on_at(self.core.next_deadline()):
                await self._writer_kick.wait()
            self._writer_kick = trio.Event()

    async def _follow_config(self) -> None:
        seen = self.core.config
        while True:
            seen = await self.publisher.wait_changed(seen)
            self.core.set_config(seen)
            await self._drain_events()
            self._writer_kick.set()

    # -- events -> status row ------------------------------------------------------------

    async def _drain_events(self) -> None:
        while not isinstance(event := self.core.next_event(), NeedData):
            await self._handle(event)

    async def _handle(self, event: Event) -> None:
        if isinstance(event, Hello):
            await self._opened(event)
        elif isinstance(event, StatusChanged):
            self._status_changed(event)
        elif isinstance(event, Heartbeat):
            self._update(
                config_hash=self.core.dp_config_hash,
                config_version=self.core.dp_config_version,
                urgent=False,
            )
        elif isinstance(event, Ack):
            log.info(
                "data plane %s runs config version %d (%s)",
                self.node_label,
                event.config_version,
                event.config_hash,
            )
            self._update(
                config_hash=event.config_hash,
                config_version=event.config_version,
                last_synced_at=time.time(),
            )
        elif isinstance(event, Nack):
            errors = [attrs.asdict(e) for e in event.errors[:_ROW_ERRORS]]
            message = f"config version {event.config_version} refused ({event.code.value}): "
            message += event.message
            log.warning("data plane %s %s", self.node_label, message)
            self._note_error(message, errors=errors)
        elif isinstance(event, DriftDetected):
            log.warning(
                "data plane %s runs config version %d (%s), expected %d (%s)%s",
                self.node_label,
                event.reported_version,
                event.reported_hash,
                event.expected_version,
                event.expected_hash,
                "; sending it again" if event.resend else "",
            )
            self._update(config_hash=event.reported_hash, config_version=event.reported_version)

    async def _opened(self, hello: Hello) -> None:
        now = time.time()
        # Build the row before awaiting anything: events handled meanwhile update it.
        self.row = {
            "id": hello.node_id,
            "hostname": hello.hostname,
            "ip": self.peer.ip,
            "version": hello.version,
            "labels": dict(hello.labels),
            "cert_details": {
                "expiry_timestamp": None
                if self.peer.cert_expiry is None
                else int(self.peer.cert_expiry)
            },
            "plugins": dict(hello.plugins),
            "protocol_version": self.core.protocol_version,
            "sync_status": self.core.sync_status.value,
            "status_reason": self.core.status_reason,
            "status": "connected",
            "connected": True,
            "connected_since": now,
            "disconnected_at": None,
            "last_seen": now,
            "updated_at": int(now),
            "config_hash": hello.config_hash,
            "config_version": hello.config_version,
            "last_synced_at": None,
            "last_error": None,
            "last_error_at": None,
            "last_error_details": None,
            "cp_node_id": self.options.node_id,
        }
        try:
            previous = await self.store.get_data_plane(hello.node_id)
        except Exception as exc:
            log.error("reading the status row of data plane %s failed: %s", hello.node_id, exc)
            previous = None
        for key in ("last_synced_at", "last_error", "last_error_at", "last_error_details"):
            if self.row.get(key) is None and previous is not None:
                self.row[key] = previous.get(key)
        log.info(
            "data plane %s connected: version %s, running config version %d (%s), status %s",
            self.node_label,
            hello.version,
            hello.config_version,
            hello.config_hash,
            self.core.sync_status.value,
        )
        self._row_dirty = True
        self._row_kick.set()
        if self._on_open is not None:
            await self._on_open(self)

    def _status_changed(self, event: StatusChanged) -> None:
        status = event.sync_status
        if status in (SyncStatus.NORMAL, SyncStatus.UNKNOWN):
            log.info("data plane %s sync status: %s", self.node_label, status.value)
            self._update(sync_status=status.value, status_reason=event.reason)
            return
        log.warning(
            "data plane %s sync status: %s (%s); config version %d not sent",
            self.node_label,
            status.value,
            event.reason,
            event.config_version,
        )
        self._update(sync_status=status.value, status_reason=event.reason)
        if status is not SyncStatus.CONFIG_REJECTED:  # the nack already said it
            self._note_error(f"{status.value}: {event.reason}")

    def _note_error(self, message: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        self._update(last_error=message, last_error_at=time.time(), last_error_details=errors)

    def _update(self, *, urgent: bool = True, **fields: Any) -> None:
        if self.row is None:
            return
        now = time.time()
        self.row.update(fields, last_seen=now, updated_at=int(now))
        self._row_dirty = True
        if urgent or trio.current_time() - self._last_row_write >= self.options.row_write_interval:
            self._row_kick.set()

    async def _row_writer(self) -> None:
        while True:
            await self._row_kick.wait()
            self._row_kick = trio.Event()
            await self._flush_row()

    async def _flush_row(self) -> None:
        if self.row is None or not self._row_dirty:
            return
        self._row_dirty = False
        self._last_row_write = trio.current_time()
        try:
            await self.store.upsert_data_plane(dict(self.row))
        except Exception as exc:
            log.error("writing the status row of data plane %s failed: %s", self.node_label, exc)

    async def _mark_disconnected(self) -> None:
        row = self.row
        if row is None:
            return
        now = time.time()
        with trio.move_on_after(5):
            try:
                current = await self.store.get_data_plane(row["id"])
                if current is not None and (
                    current.get("cp_node_id") != row["cp_node_id"]
                    or current.get("connected_since") != row["connected_since"]
                ):
                    return  # a newer session (here or on another CP) owns the row now
                row.update(
                    status="disconnected",
                    connected=False,
                    disconnected_at=now,
                    disconnect_reason=self.close_reason or None,
                    last_seen=now,
                    updated_at=int(now),
                )
                await self.store.upsert_data_plane(dict(row))
            except Exception as exc:
                log.error("marking data plane %s disconnected failed: %s", row["id"], exc)
        log.info(
            "data plane %s disconnected%s",
            self.node_label,
            f": {self.close_reason}" if self.close_reason else "",
        )
