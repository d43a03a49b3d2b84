"""The transition table, message encoding round trips, close codes, the push coalescer."""

from __future__ import annotations

import json

import pytest
from sync_link import CP_ID, make_hello

from protocol import ProtocolError
from protocol.sync import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    SUBPROTOCOL,
    TRANSITIONS,
    WEBSOCKET_PATH,
    Ack,
    ConversationState,
    EntityError,
    Heartbeat,
    Nack,
    NackCode,
    PushCoalescer,
    Role,
    StatusUpdate,
    SyncStatus,
    Welcome,
    close_code_for,
    decode_control,
    encode_control,
)

CP, DP = Role.CONTROL_PLANE, Role.DATA_PLANE
S = ConversationState


def test_names() -> None:
    assert WEBSOCKET_PATH == "/cluster/v1/sync"
    assert SUBPROTOCOL == "gateway.sync.v1"


def test_transition_table() -> None:
    assert TRANSITIONS == {
        (DP, "hello"): {S.AWAIT_HELLO: S.AWAIT_WELCOME},
        (CP, "welcome"): {S.AWAIT_WELCOME: S.OPEN},
        (CP, "status"): {S.OPEN: S.OPEN},
        (CP, "snapshot"): {S.OPEN: S.OPEN},
        (CP, "heartbeat"): {S.OPEN: S.OPEN},
        (DP, "heartbeat"): {S.OPEN: S.OPEN},
        (DP, "ack"): {S.OPEN: S.OPEN},
        (DP, "nack"): {S.OPEN: S.OPEN},
    }
    # Nothing leaves ERROR, and every message type has exactly one sender.
    assert all(S.ERROR not in states for states in TRANSITIONS.values())
    senders: dict[str, set[Role]] = {}
    for role, kind in TRANSITIONS:
        senders.setdefault(kind, set()).add(role)
    assert {k for k, v in senders.items() if len(v) > 1} == {"heartbeat"}


MESSAGES = [
    make_hello(capabilities=("deltas",), config_version=3, config_hash="a" * 32),
    Welcome(
        protocol_version="v1",
        node_id=CP_ID,
        version="3.10.0",
        sync_status=SyncStatus.NORMAL,
        heartbeat_interval=30.0,
        heartbeat_timeout=45.0,
        max_payload=16777216,
    ),
    StatusUpdate(sync_status=SyncStatus.PLUGIN_SET_INCOMPATIBLE, reason="x", config_version=2),
    Heartbeat(config_version=2, config_hash="b" * 32),
    Heartbeat(config_version=2, config_hash="b" * 32, sync_status=SyncStatus.NORMAL),
    Ack(config_version=2, config_hash="b" * 32),
    Nack(
        config_version=2,
        config_hash="b" * 32,
        code=NackCode.INVALID_CONFIG,
        message="bad",
        errors=(
            EntityError(entity_type="routes", entity_id="r1", field="paths.0", message="m"),
            EntityError(
                entity_type="plugins", entity_name="key-auth", field="config.key_names", message="m"
            ),
            EntityError(message="global problem"),
        ),
    ),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.TYPE)
def test_round_trip(message: object) -> None:
    text = encode_control(message)  # type: ignore[arg-type]
    assert "\n" not in text
    assert ": " not in text
    assert decode_control(text) == message
    assert json.loads(text)["type"] == getattr(message, "TYPE", None)


def test_unknown_fields_are_ignored_unknown_types_are_not() -> None:
    data = json.loads(encode_control(Ack(config_version=2, config_hash="b" * 32)))
    assert decode_control(json.dumps({**data, "future_field": [1, 2]})) == Ack(
        config_version=2, config_hash="b" * 32
    )
    with pytest.raises(ProtocolError) as info:
        decode_control(json.dumps({**data, "type": "delta"}))
    assert info.value.code == "invalid_message"


def test_too_large_control_message() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_control(" " * (1024 * 1024 + 1))
    assert info.value.code == "message_too_large"
    assert close_code_for(info.value)[0] == CLOSE_MESSAGE_TOO_BIG


def test_close_reason_is_bounded() -> None:
    code, reason = close_code_for(ProtocolError("é" * 500, code="invalid_message"))
    assert code == CLOSE_PROTOCOL_ERROR
    assert len(reason.encode()) <= 123
    assert reason.startswith("invalid_message: ")


def test_coalescer_pushes_first_change_at_once_then_batches() -> None:
    c = PushCoalescer(window=5.0)
    assert c.due_at() is None
    assert not c.take(0.0)
    c.changed(10.0)
    assert c.due_at() == 10.0
    assert c.take(10.0)
    c.changed(11.0)
    c.changed(12.0)
    c.changed(14.0)
    assert c.pending
    assert c.due_at() == 15.0
    assert not c.take(14.9)
    assert c.take(15.0)
    assert c.due_at() is None
    c.changed(40.0)  # long after: immediate again
    assert c.due_at() == 40.0
    with pytest.raises(ValueError, match="window"):
        PushCoalescer(window=-1)
