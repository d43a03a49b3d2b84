"""Names and limits of the sync protocol (docs/reference/protocol.md, "Limits")."""

from __future__ import annotations

from typing import Final

#: Path of the sync websocket on ``cluster_listen``.
WEBSOCKET_PATH: Final = "/cluster/v1/sync"
#: Websocket subprotocol: names the envelope (JSON text frames with a ``type``, binary
#: snapshot frames, hello/welcome). It changes only if that envelope changes incompatibly;
#: sync protocol versions inside it are negotiated in the hello.
SUBPROTOCOL: Final = "gateway.sync.v1"

#: Sync protocol versions this implementation speaks, oldest first. ``v1`` = full snapshots.
PROTOCOL_VERSIONS: Final = ("v1",)
#: Capability reserved for incremental (delta) sync. Never granted by this implementation.
CAPABILITY_DELTAS: Final = "deltas"
#: Capabilities this implementation can grant (none yet).
SUPPORTED_CAPABILITIES: Final[frozenset[str]] = frozenset()

#: ``cluster_max_payload`` default: bound on the *uncompressed* configuration, in bytes.
DEFAULT_MAX_PAYLOAD: Final = 16 * 1024 * 1024
#: Largest accepted ``max_payload`` in a hello (1 TiB: a sanity bound, not a recommendation).
MAX_MAX_PAYLOAD: Final = 1 << 40
#: Largest control (text) message, in characters.
MAX_CONTROL_MESSAGE: Final = 1024 * 1024
#: Largest JSON header at the start of a snapshot frame, newline excluded.
MAX_SNAPSHOT_HEADER: Final = 4096
#: Largest number of entity errors carried by one nack (the rest are counted, not listed).
MAX_NACK_ERRORS: Final = 100
#: Longest free-text field (reasons, error messages).
MAX_TEXT: Final = 1024
#: Most plugins a hello may list, most capabilities / protocol versions it may offer.
MAX_PLUGINS: Final = 1024
MAX_CAPABILITIES: Final = 32
MAX_PROTOCOL_VERSIONS: Final = 16
#: Largest config version (PostgreSQL ``bigint``).
MAX_CONFIG_VERSION: Final = (1 << 63) - 1

DEFAULT_HEARTBEAT_INTERVAL: Final = 30.0
DEFAULT_HEARTBEAT_TIMEOUT: Final = 45.0
#: Time allowed for the first message (the hello on the CP, the welcome on the DP).
DEFAULT_HELLO_TIMEOUT: Final = 10.0
#: Time a data plane has to answer a snapshot (ack or nack) before the CP drops it.
DEFAULT_ANSWER_TIMEOUT: Final = 300.0
#: Sanity bounds on the heartbeat values a welcome may carry.
MAX_HEARTBEAT_INTERVAL: Final = 3600.0
MAX_HEARTBEAT_TIMEOUT: Final = 7200.0


def max_frame_size(max_payload: int) -> int:
    """Largest websocket message a peer must accept for a given ``max_payload``.

    A snapshot frame is a small header plus a gzip stream of at most ``max_payload``
    uncompressed bytes; deflate's worst-case expansion is 5 bytes per 16 KiB stored block
    plus 18 bytes of gzip framing, well under 1/1024. Shells configure their websocket
    library with this value so that a slightly-over-the-limit snapshot reaches the core,
    which answers with a nack instead of the library closing the connection.
    """
    return max_payload + max_payload // 1024 + MAX_SNAPSHOT_HEADER + 1024
