"""Messages of the sync protocol and the events the connection cores return.

Messages are what travels on the websocket (docs/reference/protocol.md, "Messages"); each
has a ``TYPE`` (the ``type`` field on the wire). Events are what ``next_event()`` returns:
received messages themselves, plus a few events the cores derive (``SnapshotReceived``,
``SnapshotRejected``, ``StatusChanged``, ``DriftDetected``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import attrs

from protocol._hash import EMPTY_CONFIG_HASH
from protocol.sync._compat import SyncStatus
from protocol.sync._constants import DEFAULT_MAX_PAYLOAD, PROTOCOL_VERSIONS
from protocol.sync._snapshot import EncodedSnapshot

__all__ = [
    "NEED_DATA",
    "Ack",
    "DriftDetected",
    "EntityError",
    "Event",
    "Heartbeat",
    "Hello",
    "Message",
    "Nack",
    "NackCode",
    "NeedData",
    "Snapshot",
    "SnapshotReceived",
    "SnapshotRejected",
    "StatusChanged",
    "StatusUpdate",
    "Welcome",
]


def _str_dict(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


@attrs.frozen(kw_only=True)
class Hello:
    """DP -> CP, first message: who the data plane is and what it runs."""

    TYPE: ClassVar[str] = "hello"
    node_id: str
    hostname: str
    version: str
    plugins: dict[str, str] = attrs.field(factory=dict, converter=_str_dict)
    labels: dict[str, str] = attrs.field(factory=dict, converter=_str_dict)
    config_version: int = 0
    config_hash: str = EMPTY_CONFIG_HASH
    max_payload: int = DEFAULT_MAX_PAYLOAD
    protocol_versions: tuple[str, ...] = PROTOCOL_VERSIONS
    capabilities: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Welcome:
    """CP -> DP, answer to the hello: negotiated version, timing, initial sync status."""

    TYPE: ClassVar[str] = "welcome"
    protocol_version: str
    capabilities: tuple[str, ...] = ()
    node_id: str
    version: str
    sync_status: SyncStatus
    reason: str = ""
    heartbeat_interval: float
    heartbeat_timeout: float
    max_payload: int


@attrs.frozen(kw_only=True)
class StatusUpdate:
    """CP -> DP: the data plane's sync status changed (for example it became incompatible)."""

    TYPE: ClassVar[str] = "status"
    sync_status: SyncStatus
    reason: str = ""
    #: The CP config version the status was computed for (0: none yet).
    config_version: int = 0


@attrs.frozen(kw_only=True)
class Heartbeat:
    """Both ways, periodic. DP: the config it runs. CP: its current config and the status."""

    TYPE: ClassVar[str] = "heartbeat"
    config_version: int
    config_hash: str
    #: Set by the control plane, absent (None) from the data plane.
    sync_status: SyncStatus | None = None


@attrs.frozen(kw_only=True)
class Ack:
    """DP -> CP: the snapshot was validated and swapped in; the DP now runs it."""

    TYPE: ClassVar[str] = "ack"
    config_version: int
    config_hash: str


class NackCode(enum.Enum):
    """Why a data plane refused a snapshot."""

    #: The configuration failed validation; ``errors`` lists entity/field problems.
    INVALID_CONFIG = "invalid_config"
    #: Not gzip, truncated, trailing data, not UTF-8 JSON, or not a JSON object.
    INVALID_PAYLOAD = "invalid_payload"
    #: Over the data plane's ``cluster_max_payload`` (frame or decompressed size).
    PAYLOAD_TOO_LARGE = "payload_too_large"
    #: The decompressed configuration does not hash to the announced hash.
    HASH_MISMATCH = "hash_mismatch"
    #: Valid, but storing or swapping it in failed (disk full, internal error).
    APPLY_FAILED = "apply_failed"


@attrs.frozen(kw_only=True)
class EntityError:
    """One problem in a refused configuration."""

    entity_type: str | None = None  # "routes", "plugins"... (the config's collection name)
    entity_id: str | None = None
    entity_name: str | None = None
    field: str | None = None  # dotted path inside the entity, "config.minute", "paths.0"
    message: str


@attrs.frozen(kw_only=True)
class Nack:
    """DP -> CP: the snapshot was refused; the DP keeps running its previous config."""

    TYPE: ClassVar[str] = "nack"
    config_version: int
    config_hash: str
    code: NackCode
    message: str
    errors: tuple[EntityError, ...] = ()
    #: Errors left out because of ``MAX_NACK_ERRORS`` (``send`` fills this in).
    omitted_errors: int = 0


@attrs.frozen(kw_only=True)
class Snapshot:
    """CP -> DP, binary frame: a whole configuration. Send-side event only."""

    TYPE: ClassVar[str] = "snapshot"
    snapshot: EncodedSnapshot


Message = Hello | Welcome | StatusUpdate | Heartbeat | Ack | Nack | Snapshot


@attrs.frozen(kw_only=True)
class SnapshotReceived:
    """DP event: a snapshot arrived and decoded; validate, apply, then send Ack or Nack."""

    config_version: int
    config_hash: str
    config: dict[str, Any] = attrs.field(repr=False)
    size: int


@attrs.frozen(kw_only=True)
class SnapshotRejected:
    """DP event: a snapshot could not be decoded; ``next_outbound`` returns ``nack``."""

    config_version: int
    config_hash: str
    nack: Nack


@attrs.frozen(kw_only=True)
class StatusChanged:
    """CP event: the data plane's sync status is now ``sync_status`` (update its row)."""

    sync_status: SyncStatus
    reason: str
    config_version: int


@attrs.frozen(kw_only=True)
class DriftDetected:
    """CP event: the DP reports running something else than what it last acknowledged.

    ``resend`` tells whether the core will send the current snapshot again (it does so at
    most once per config version, and only to a compatible DP).
    """

    expected_version: int
    expected_hash: str
    reported_version: int
    reported_hash: str
    resend: bool


class NeedData:
    """Sentinel type of :data:`NEED_DATA`: no event until more data is received."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()

Event = (
    Hello
    | Welcome
    | StatusUpdate
    | Heartbeat
    | Ack
    | Nack
    | SnapshotReceived
    | SnapshotRejected
    | StatusChanged
    | DriftDetected
)
