"""The two sans-I/O connection cores: ``ControlPlaneConnection`` and ``DataPlaneConnection``.

Theory of operation
-------------------
A core is the whole protocol of one websocket, minus the socket and the clock. The shell
feeds it every received websocket message (``receive_message(data, now=...)``), drains
``next_event()`` until ``NEED_DATA``, and asks ``next_outbound(now)`` what the protocol wants
sent next; it turns that (or any message it builds itself) into the websocket payload with
``send(message)``, which returns ``str`` for a text frame and ``bytes`` for a binary frame.
The shell sleeps until ``next_deadline()``, then calls ``peer_timed_out(now)`` (close the
socket if True) and ``next_outbound(now)`` again (heartbeats).

The control plane core decides, from what the data plane said and from the config the shell
hands it (``set_config``), what the data plane may receive: the sync status is recomputed on
every input, a status change is both an event for the shell (``StatusChanged``: update the
row) and a message for the data plane (``StatusUpdate``), and ``send`` refuses a snapshot the
data plane cannot run. At most one snapshot is in flight per data plane: the next one is sent
after the ack or nack, and it is always the newest config, so a slow data plane never queues
stale 16 MiB frames ("latest wins" without buffering).

The data plane core decodes snapshots completely (bounded gunzip, JSON, hash check) before
reporting them, so the shell only ever validates and applies a complete, intact config; it
then answers with ``Ack`` or ``Nack``. Snapshots the core cannot decode are answered by the
core itself (``SnapshotRejected`` event, the nack comes out of ``next_outbound``).

Any ProtocolError raised while receiving is fatal for the conversation (state ERROR); the
shell closes the websocket with ``close_code_for(error)``. A local ProtocolError from
``send`` leaves the conversation unchanged: nothing was sent.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Final, NoReturn

import attrs

from protocol._errors import ProtocolError
from protocol._hash import EMPTY_CONFIG_HASH, config_hash
from protocol.sync._compat import SyncStatus, check_compatibility
from protocol.sync._constants import (
    DEFAULT_ANSWER_TIMEOUT,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_MAX_PAYLOAD,
    MAX_CONTROL_MESSAGE,
    MAX_SNAPSHOT_HEADER,
    PROTOCOL_VERSIONS,
    SUPPORTED_CAPABILITIES,
    max_frame_size,
)
from protocol.sync._messages import (
    NEED_DATA,
    Ack,
    DriftDetected,
    Event,
    Heartbeat,
    Hello,
    Message,
    Nack,
    NackCode,
    NeedData,
    Snapshot,
    SnapshotReceived,
    SnapshotRejected,
    StatusChanged,
    StatusUpdate,
    Welcome,
)
from protocol.sync._snapshot import EncodedSnapshot, gunzip_bounded
from protocol.sync._state import Conversation, ConversationState, Role
from protocol.sync._wire import ControlMessage, decode_control, encode_control, split_snapshot_frame

__all__ = [
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_PEER_TIMEOUT",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_VERSION",
    "ControlPlaneConnection",
    "DataPlaneConnection",
    "close_code_for",
]

_OPEN: Final = ConversationState.OPEN

#: Websocket close codes for ProtocolError codes (docs/reference/protocol.md, "Error codes").
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_MESSAGE_TOO_BIG: Final = 1009
CLOSE_UNSUPPORTED_VERSION: Final = 4406
CLOSE_PEER_TIMEOUT: Final = 4408
_CLOSE_CODES: Final = {
    "message_too_large": CLOSE_MESSAGE_TOO_BIG,
    "unsupported_protocol_version": CLOSE_UNSUPPORTED_VERSION,
    "peer_timeout": CLOSE_PEER_TIMEOUT,
}


def close_code_for(error: ProtocolError) -> tuple[int, str]:
    """Websocket close code and reason (at most 123 UTF-8 bytes) for a fatal error."""
    code = _CLOSE_CODES.get(error.code, CLOSE_PROTOCOL_ERROR)
    reason = f"{error.code}: {error}".encode()[:123].decode("utf-8", "ignore")
    return code, reason


def _local(message: str, code: str) -> NoReturn:
    raise ProtocolError(message, local=True, code=code)


class _Core:
    """What both roles share: fragment assembly, the state table, timing, the event queue."""

    our_role: Role
    their_role: Role
    _fragment_kind: type[bytes] | type[str] | None
    _text_parts: list[str]
    _text_size: int
    _binary: bytearray
    _binary_overflow: bool

    def __init__(
        self,
        *,
        now: float,
        max_payload: int,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        hello_timeout: float,
    ) -> None:
        for name, value in (
            ("heartbeat_interval", heartbeat_interval),
            ("heartbeat_timeout", heartbeat_timeout),
            ("hello_timeout", hello_timeout),
        ):
            if not (math.isfinite(value) and value > 0):
                _local(f"{name} must be a positive number", "invalid_argument")
        if heartbeat_timeout <= heartbeat_interval:
            _local("heartbeat_timeout must be greater than heartbeat_interval", "invalid_argument")
        if isinstance(max_payload, bool) or not isinstance(max_payload, int) or max_payload < 1:
            _local("max_payload must be a positive integer", "invalid_argument")
        self._conversation = Conversation(self.our_role)
        self._events: deque[Event] = deque()
        self.max_payload = max_payload
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.hello_timeout = hello_timeout
        self._last_received = now
        #: The latest ``now`` the shell passed in (``send`` takes no time argument).
        self._now = now
        self._next_heartbeat: float | None = None
        self._reset_fragments()

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> ConversationState:
        return self._conversation.state

    def _binary_limit(self) -> int:
        return MAX_SNAPSHOT_HEADER

    # -- receiving -----------------------------------------------------------------------

    def receive_message(self, data: bytes | str, *, now: float, final: bool = True) -> None:
        """Feed one received websocket message (or a fragment of one, ``final=False``).

        ``str`` is a text frame, ``bytes`` a binary frame. Raises ``ProtocolError`` (remote)
        for anything the peer should not have sent; the conversation is then over.
        """
        if self.state is ConversationState.ERROR:
            raise ProtocolError("the conversation already failed", code="connection_failed")
        if not isinstance(data, bytes | bytearray | memoryview | str):
            _local(f"data must be bytes or str, not {type(data).__name__}", "invalid_argument")
        self._last_received = now
        self._now = max(self._now, now)
        try:
            assembled = self._assemble(data, final)
            if assembled is None:
                return
            message, oversized = assembled
            if isinstance(message, str):
                self._receive_text(message)
            else:
                self._receive_binary(message, oversized=oversized)
        except ProtocolError:
            self._conversation.state = ConversationState.ERROR
            self._reset_fragments()
            raise

    def _assemble(
        self, data: bytes | bytearray | memoryview | str, final: bool
    ) -> tuple[bytes | str, bool] | None:
        """Join websocket fragments; bound the memory a message in progress may take."""
        kind = str if isinstance(data, str) else bytes
        if self._fragment_kind is not None and self._fragment_kind is not kind:
            raise ProtocolError(
                "fragments of one message mix text and binary", code="invalid_message"
            )
        if final and self._fragment_kind is None:  # the usual case: one whole message
            whole = data if isinstance(data, str) else bytes(data)
            limit = MAX_CONTROL_MESSAGE if isinstance(whole, str) else self._binary_limit()
            if len(whole) <= limit:
                return whole, False
        self._fragment_kind = kind
        if isinstance(data, str):
            if self._text_size + len(data) > MAX_CONTROL_MESSAGE:
                self._reset_fragments()
                raise ProtocolError(
                    f"control message is longer than {MAX_CONTROL_MESSAGE} characters",
                    code="message_too_large",
                )
            self._text_parts.append(data)
            self._text_size += len(data)
        elif not self._binary_overflow:
            self._binary += data
            if len(self._binary) > self._binary_limit():
                # Keep only what is needed to read the snapshot header; drop the rest.
                self._binary_overflow = True
                del self._binary[MAX_SNAPSHOT_HEADER + 1 :]
        if not final:
            return None
        message: bytes | str = "".join(self._text_parts) if kind is str else bytes(self._binary)
        oversized = self._binary_overflow
        self._reset_fragments()
        return message, oversized

    def _reset_fragments(self) -> None:
        self._fragment_kind = None
        self._text_parts = []
        self._text_size = 0
        self._binary = bytearray()
        self._binary_overflow = False

    def _receive_text(self, text: str) -> None:
        message = decode_control(text)
        next_state = self._conversation.check(self.their_role, message.TYPE)
        self._handle(message)
        self._conversation.state = next_state

    def _receive_binary(self, frame: bytes, *, oversized: bool) -> None:
        raise ProtocolError(
            f"a {self.their_role.value} never sends binary frames", code="unexpected_message"
        )

    def _handle(self, message: ControlMessage) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def next_event(self) -> Event | NeedData:
        """The next event, or ``NEED_DATA`` when the received messages are all processed."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    # -- sending -------------------------------------------------------------------------

    def send(self, message: Message) -> bytes | str:
        """Validate *message* against the protocol and return the websocket payload.

        ``str``: send as a text frame; ``bytes``: send as a binary frame. Raises a local
        ``ProtocolError`` if the message may not be sent now (nothing changes then).
        """
        next_state = self._conversation.check(self.our_role, message.TYPE)
        self._check_send(message)
        payload: bytes | str
        if isinstance(message, Snapshot):
            payload = message.snapshot.frame
        else:
            payload = encode_control(message)
        self._after_send(message)
        self._conversation.state = next_state
        return payload

    def _check_send(self, message: Message) -> None:
        pass

    def _after_send(self, message: Message) -> None:
        pass

    def _protocol_message(self, now: float) -> Message | None:  # pragma: no cover
        raise NotImplementedError

    def _heartbeat(self) -> Heartbeat:  # pragma: no cover - overridden
        raise NotImplementedError

    def next_outbound(self, now: float) -> Message | None:
        """The message the protocol wants sent next, or None. Pass it to ``send``.

        Call it after every received message, after ``set_config`` (CP) or an ack/nack
        (DP), and when ``next_deadline()`` passes; send messages until it returns None.
        """
        if self.state is ConversationState.ERROR:
            return None
        self._now = max(self._now, now)
        message = self._protocol_message(now)
        if message is not None:
            return message
        if self.state is _OPEN:
            if self._next_heartbeat is None:
                self._next_heartbeat = now + self.heartbeat_interval
            elif now >= self._next_heartbeat:
                self._next_heartbeat = now + self.heartbeat_interval
                return self._heartbeat()
        return None

    # -- time ----------------------------------------------------------------------------

    @property
    def peer_deadline(self) -> float:
        """When the peer counts as gone if nothing more arrives from it."""
        wait = self.heartbeat_timeout if self.state is _OPEN else self.hello_timeout
        return self._last_received + wait

    def peer_deadline_reason(self, now: float) -> str:
        """Why ``peer_timed_out(now)`` is true, for the close reason and the log."""
        return f"nothing received from the {self.their_role.value} in time"

    def next_deadline(self) -> float:
        """When the shell must wake up at the latest (heartbeat due or peer deadline)."""
        if self._next_heartbeat is None:
            return self.peer_deadline
        return min(self.peer_deadline, self._next_heartbeat)

    def peer_timed_out(self, now: float) -> bool:
        """True if nothing arrived from the peer for too long: close with ``CLOSE_PEER_TIMEOUT``."""
        return now >= self.peer_deadline


# ----------------------------------------------------------------------------------------
# Data plane


@attrs.frozen
class _Pending:
    config_version: int
    config_hash: str
    nack: Nack | None


class DataPlaneConnection(_Core):
    """The data plane's side of one sync websocket.

    *hello* says who we are and what we run (config version 0 and ``EMPTY_CONFIG_HASH`` when
    nothing); its ``max_payload`` is our ``cluster_max_payload``. Heartbeat timing is the
    control plane's, learned from the welcome.
    """

    our_role = Role.DATA_PLANE
    their_role = Role.CONTROL_PLANE

    def __init__(
        self,
        *,
        hello: Hello,
        now: float,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
    ) -> None:
        super().__init__(
            now=now,
            max_payload=hello.max_payload,
            heartbeat_interval=DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout=DEFAULT_HEARTBEAT_TIMEOUT,
            hello_timeout=hello_timeout,
        )
        encode_control(hello)  # validate now: a bad hello is a configuration bug
        self.hello = hello
        self.welcome: Welcome | None = None
        self.sync_status = SyncStatus.UNKNOWN
        self.status_reason = ""
        self.running_version = hello.config_version
        self.running_hash = hello.config_hash
        self._pending: _Pending | None = None

    @property
    def protocol_version(self) -> str | None:
        return None if self.welcome is None else self.welcome.protocol_version

    @property
    def capabilities(self) -> tuple[str, ...]:
        return () if self.welcome is None else self.welcome.capabilities

    @property
    def pending_version(self) -> int | None:
        """The snapshot awaiting our ack or nack, if any."""
        return None if self._pending is None else self._pending.config_version

    def _binary_limit(self) -> int:
        return max_frame_size(self.max_payload)

    def _handle(self, message: ControlMessage) -> None:
        if isinstance(message, Welcome):
            if message.protocol_version not in self.hello.protocol_versions:
                raise ProtocolError(
                    f"control plane chose protocol version {message.protocol_version!r}, "
                    f"which we did not offer",
                    code="unsupported_protocol_version",
                )
            if not set(message.capabilities) <= set(self.hello.capabilities):
                raise ProtocolError(
                    "control plane granted capabilities we did not offer",
                    code="unsupported_protocol_version",
                )
            self.welcome = message
            self.heartbeat_interval = message.heartbeat_interval
            self.heartbeat_timeout = message.heartbeat_timeout
            self.sync_status = message.sync_status
            self.status_reason = message.reason
        elif isinstance(message, StatusUpdate):
            self.sync_status = message.sync_status
            self.status_reason = message.reason
        elif isinstance(message, Heartbeat):
            if message.sync_status is None:
                raise ProtocolError(
                    "control plane heartbeat without sync_status", code="invalid_message"
                )
            self.sync_status = message.sync_status
        self._events.append(message)

    def _receive_binary(self, frame: bytes, *, oversized: bool) -> None:
        next_state = self._conversation.check(self.their_role, "snapshot")
        if self._pending is not None:
            raise ProtocolError(
                f"snapshot received before config version {self._pending.config_version} "
                f"was answered",
                code="unexpected_snapshot",
            )
        header, payload = split_snapshot_frame(frame)
        event = self._decode_snapshot(
            header.config_version, header.config_hash, header.size, payload, oversized
        )
        if isinstance(event, SnapshotRejected):
            self._pending = _Pending(event.config_version, event.config_hash, event.nack)
        else:
            self._pending = _Pending(event.config_version, event.config_hash, None)
        self._events.append(event)
        self._conversation.state = next_state

    def _decode_snapshot(
        self, version: int, digest: str, size: int, payload: memoryview, oversized: bool
    ) -> SnapshotReceived | SnapshotRejected:
        def reject(code: NackCode, message: str) -> SnapshotRejected:
            nack = Nack(config_version=version, config_hash=digest, code=code, message=message)
            return SnapshotRejected(config_version=version, config_hash=digest, nack=nack)

        limit = self.max_payload
        if oversized or size > limit:
            return reject(
                NackCode.PAYLOAD_TOO_LARGE,
                f"config version {version} is over this data plane's cluster_max_payload "
                f"of {limit} bytes",
            )
        try:
            raw = gunzip_bounded(payload, limit=size)
        except ProtocolError as exc:
            return reject(NackCode.INVALID_PAYLOAD, f"config version {version}: {exc}")
        if len(raw) != size:
            return reject(
                NackCode.INVALID_PAYLOAD,
                f"config version {version} is {len(raw)} bytes, the header announced {size}",
            )
        try:
            config = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
            if not isinstance(config, dict):
                raise ValueError("the configuration is not a JSON object")
            actual = config_hash(config)
        except (ValueError, TypeError, RecursionError) as exc:
            return reject(NackCode.INVALID_PAYLOAD, f"config version {version}: {exc}")
        if actual != digest:
            return reject(
                NackCode.HASH_MISMATCH,
                f"config version {version} hashes to {actual}, the header announced {digest}",
            )
        return SnapshotReceived(
            config_version=version, config_hash=digest, config=config, size=size
        )

    def _protocol_message(self, now: float) -> Message | None:
        if self.state is ConversationState.AWAIT_HELLO:
            return self.hello
        if self._pending is not None and self._pending.nack is not None:
            return self._pending.nack
        return None

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(config_version=self.running_version, config_hash=self.running_hash)

    def _check_send(self, message: Message) -> None:
        if isinstance(message, Heartbeat) and message.sync_status is not None:
            _local("a data plane heartbeat carries no sync_status", "invalid_argument")
        if isinstance(message, Hello) and message != self.hello:
            _local("send the hello this connection was created with", "invalid_argument")
        if isinstance(message, Ack | Nack):
            pending = self._pending
            if pending is None:
                _local(f"no snapshot awaits an {message.TYPE}", "unexpected_message")
            if (message.config_version, message.config_hash) != (
                pending.config_version,
                pending.config_hash,
            ):
                _local(
                    f"{message.TYPE} must answer config version {pending.config_version} "
                    f"({pending.config_hash})",
                    "unexpected_message",
                )
            if isinstance(message, Ack) and pending.nack is not None:
                _local("cannot ack a snapshot that failed to decode", "unexpected_message")

    def _after_send(self, message: Message) -> None:
        if isinstance(message, Ack):
            self.running_version = message.config_version
            self.running_hash = message.config_hash
            self._pending = None
        elif isinstance(message, Nack):
            self._pending = None


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"JSON constant {name} is not allowed")


# ----------------------------------------------------------------------------------------
# Control plane


class ControlPlaneConnection(_Core):
    """The control plane's side of one sync websocket (one per connected data plane).

    *node_id*, *version* and *plugins* describe this control plane; *max_payload* is its
    ``cluster_max_payload`` (the smaller of it and the data plane's applies); the heartbeat
    values are announced to the data plane in the welcome and used by both sides.
    """

    our_role = Role.CONTROL_PLANE
    their_role = Role.DATA_PLANE

    def __init__(
        self,
        *,
        node_id: str,
        version: str,
        plugins: Mapping[str, str],
        now: float,
        config: EncodedSnapshot | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        protocol_versions: Iterable[str] = PROTOCOL_VERSIONS,
        capabilities: Iterable[str] = SUPPORTED_CAPABILITIES,
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
    ) -> None:
        if not (math.isfinite(answer_timeout) and answer_timeout > 0):
            _local("answer_timeout must be a positive number", "invalid_argument")
        self.answer_timeout = answer_timeout
        super().__init__(
            now=now,
            max_payload=max_payload,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            hello_timeout=hello_timeout,
        )
        self.node_id = node_id
        self.version = version
        self.plugins = dict(plugins)
        self._protocol_versions = tuple(protocol_versions)
        self._capabilities = frozenset(capabilities)
        if not self._protocol_versions or not set(self._protocol_versions) <= set(
            PROTOCOL_VERSIONS
        ):
            _local(
                "protocol_versions must be a non-empty subset of PROTOCOL_VERSIONS",
                "invalid_argument",
            )
        if not self._capabilities <= SUPPORTED_CAPABILITIES:
            _local("capabilities must be a subset of SUPPORTED_CAPABILITIES", "invalid_argument")
        # Validate our own identity with the welcome's rules.
        encode_control(
            self._welcome_message(SyncStatus.UNKNOWN, "", self._protocol_versions[-1], ())
        )
        self.hello: Hello | None = None
        self.protocol_version: str | None = None
        self.capabilities: tuple[str, ...] = ()
        self.sync_status = SyncStatus.UNKNOWN
        self.status_reason = ""
        self._config = config
        self._gateway_status: tuple[SyncStatus, str] | None = None
        self._told: tuple[SyncStatus, str] | None = None
        self._evaluated = False
        #: What the DP reported running (hello, heartbeat, ack).
        self.dp_config_version = 0
        self.dp_config_hash = EMPTY_CONFIG_HASH
        #: What the DP should be running (hello, then every ack).
        self._expected: tuple[int, str] = (0, EMPTY_CONFIG_HASH)
        self._in_flight: tuple[int, str] | None = None
        self._in_flight_since = 0.0
        self._nacked: Nack | None = None
        self._force_resend = False
        self._drift_resent_version: int | None = None
        self._last_drift_hash: str | None = None

    @property
    def peer_deadline(self) -> float:
        """As for any peer, and: a snapshot must be answered within ``answer_timeout``.

        A data plane that heartbeats but never answers would otherwise block every later
        config version on this connection (one snapshot in flight).
        """
        deadline = super().peer_deadline
        if self._in_flight is not None:
            deadline = min(deadline, self._in_flight_since + self.answer_timeout)
        return deadline

    def peer_deadline_reason(self, now: float) -> str:
        if self._in_flight is not None and now >= self._in_flight_since + self.answer_timeout:
            return (
                f"config version {self._in_flight[0]} not answered within "
                f"{self.answer_timeout:g} seconds"
            )
        return super().peer_deadline_reason(now)

    # -- inputs from the shell -----------------------------------------------------------

    @property
    def config(self) -> EncodedSnapshot | None:
        return self._config

    @property
    def in_flight_version(self) -> int | None:
        """The snapshot sent and not yet answered, if any."""
        return None if self._in_flight is None else self._in_flight[0]

    def set_config(self, config: EncodedSnapshot | None) -> None:
        """Hand the core the newest config version (shared by every session). Idempotent."""
        if config is self._config:
            return
        self._config = config
        self._evaluate()

    # -- status --------------------------------------------------------------------------

    def _payload_limit(self) -> tuple[int, str]:
        assert self.hello is not None
        if self.hello.max_payload < self.max_payload:
            return self.hello.max_payload, "data plane"
        return self.max_payload, "control plane"

    def _status_for(self, config: EncodedSnapshot | None) -> tuple[SyncStatus, str]:
        assert self.hello is not None
        if self._gateway_status is not None:
            return self._gateway_status
        if config is None:
            return SyncStatus.UNKNOWN, "the control plane has no configuration to send yet"
        status = check_compatibility(
            self.version,
            self.plugins,
            self.hello.version,
            self.hello.plugins,
            config.configured_plugins,
        )
        if status[0] is not SyncStatus.NORMAL:
            return status
        limit, whose = self._payload_limit()
        if config.size > limit:
            return (
                SyncStatus.PAYLOAD_TOO_LARGE,
                f"config version {config.config_version} is {config.size} bytes uncompressed, "
                f"over the {whose}'s cluster_max_payload of {limit} bytes",
            )
        nack = self._nacked
        if nack is not None and nack.config_version == config.config_version:
            return (
                SyncStatus.CONFIG_REJECTED,
                f"data plane rejected config version {nack.config_version} "
                f"({nack.code.value}): {nack.message}",
            )
        return SyncStatus.NORMAL, ""

    def _evaluate(self) -> None:
        """Recompute the sync status; queue ``StatusChanged`` on the first and every change."""
        if self.hello is None:
            return
        new = self._status_for(self._config)
        if self._evaluated and new == (self.sync_status, self.status_reason):
            return
        self._evaluated = True
        self.sync_status, self.status_reason = new
        self._events.append(
            StatusChanged(
                sync_status=new[0],
                reason=new[1],
                config_version=0 if self._config is None else self._config.config_version,
            )
        )

    # -- receiving -----------------------------------------------------------------------

    def _handle(self, message: ControlMessage) -> None:
        if isinstance(message, Hello):
            self._handle_hello(message)
        elif isinstance(message, Heartbeat):
            self._handle_heartbeat(message)
        elif isinstance(message, Ack | Nack):
            self._handle_answer(message)

    def _handle_hello(self, hello: Hello) -> None:
        common = [v for v in hello.protocol_versions if v in self._protocol_versions]
        if not common:
            raise ProtocolError(
                f"no common protocol version: data plane offers "
                f"{', '.join(hello.protocol_versions)}, control plane speaks "
                f"{', '.join(self._protocol_versions)}",
                code="unsupported_protocol_version",
            )
        self.protocol_version = max(common, key=lambda v: int(v[1:]))
        self.capabilities = tuple(sorted(set(hello.capabilities) & self._capabilities))
        self.hello = hello
        self.dp_config_version, self.dp_config_hash = hello.config_version, hello.config_hash
        self._expected = (hello.config_version, hello.config_hash)
        gateway = check_compatibility(self.version, {}, hello.version, {}, ())
        self._gateway_status = None if gateway[0] is SyncStatus.NORMAL else gateway
        self._events.append(hello)
        self._evaluate()

    def _handle_heartbeat(self, heartbeat: Heartbeat) -> None:
        if heartbeat.sync_status is not None:
            raise ProtocolError("data plane heartbeat with a sync_status", code="invalid_message")
        self.dp_config_version = heartbeat.config_version
        self.dp_config_hash = heartbeat.config_hash
        self._events.append(heartbeat)
        reported = (heartbeat.config_version, heartbeat.config_hash)
        if self._in_flight is not None or reported == self._expected:
            self._last_drift_hash = None
            return
        if heartbeat.config_hash == self._last_drift_hash:
            return  # already reported
        self._last_drift_hash = heartbeat.config_hash
        config = self._config
        resend = (
            config is not None
            and self.sync_status is SyncStatus.NORMAL
            and self._drift_resent_version != config.config_version
        )
        if resend:
            self._force_resend = True
        self._events.append(
            DriftDetected(
                expected_version=self._expected[0],
                expected_hash=self._expected[1],
                reported_version=heartbeat.config_version,
                reported_hash=heartbeat.config_hash,
                resend=resend,
            )
        )

    def _handle_answer(self, answer: Ack | Nack) -> None:
        if self._in_flight != (answer.config_version, answer.config_hash):
            sent = "nothing" if self._in_flight is None else f"version {self._in_flight[0]}"
            raise ProtocolError(
                f"{answer.TYPE} for config version {answer.config_version} "
                f"({answer.config_hash}) but {sent} awaits an answer",
                code="unexpected_ack",
            )
        self._in_flight = None
        self._force_resend = False
        self._last_drift_hash = None
        if isinstance(answer, Ack):
            self._expected = (answer.config_version, answer.config_hash)
            self.dp_config_version, self.dp_config_hash = self._expected
            self._nacked = None
        else:
            self._nacked = answer
        self._events.append(answer)
        self._evaluate()

    # -- sending -------------------------------------------------------------------------

    def _welcome_message(
        self, status: SyncStatus, reason: str, version: str, capabilities: tuple[str, ...]
    ) -> Welcome:
        return Welcome(
            protocol_version=version,
            capabilities=capabilities,
            node_id=self.node_id,
            version=self.version,
            sync_status=status,
            reason=reason,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            max_payload=self.max_payload,
        )

    def _snapshot_due(self) -> EncodedSnapshot | None:
        config = self._config
        if (
            config is None
            or self.state is not _OPEN
            or self._in_flight is not None
            or self.sync_status is not SyncStatus.NORMAL
        ):
            return None
        if (config.config_version, config.config_hash) == self._expected and not self._force_resend:
            return None
        return config

    def _protocol_message(self, now: float) -> Message | None:
        if self.state is ConversationState.AWAIT_WELCOME:
            assert self.protocol_version is not None
            return self._welcome_message(
                self.sync_status, self.status_reason, self.protocol_version, self.capabilities
            )
        if self.state is not _OPEN:
            return None
        if self._told != (self.sync_status, self.status_reason):
            return StatusUpdate(
                sync_status=self.sync_status,
                reason=self.status_reason,
                config_version=0 if self._config is None else self._config.config_version,
            )
        config = self._snapshot_due()
        return None if config is None else Snapshot(snapshot=config)

    def _heartbeat(self) -> Heartbeat:
        config = self._config
        return Heartbeat(
            config_version=0 if config is None else config.config_version,
            config_hash=EMPTY_CONFIG_HASH if config is None else config.config_hash,
            sync_status=self.sync_status,
        )

    def _check_send(self, message: Message) -> None:
        if isinstance(message, Welcome) and (
            message.protocol_version != self.protocol_version
            or message.capabilities != self.capabilities
        ):
            _local(
                "the welcome must carry the negotiated version and capabilities", "invalid_argument"
            )
        elif isinstance(message, Heartbeat) and message.sync_status is None:
            _local("a control plane heartbeat carries the sync_status", "invalid_argument")
        elif isinstance(message, Snapshot):
            if self._in_flight is not None:
                _local(
                    f"config version {self._in_flight[0]} is still awaiting an answer",
                    "snapshot_in_flight",
                )
            status, reason = self._status_for(message.snapshot)
            if status is not SyncStatus.NORMAL:
                _local(f"refusing to send this snapshot ({status.value}): {reason}", status.value)

    def _after_send(self, message: Message) -> None:
        if isinstance(message, Welcome | StatusUpdate):
            self._told = (message.sync_status, message.reason)
        elif isinstance(message, Snapshot):
            snapshot = message.snapshot
            self._in_flight = (snapshot.config_version, snapshot.config_hash)
            self._in_flight_since = self._now
            if self._force_resend:
                self._drift_resent_version = snapshot.config_version
                self._force_resend = False
