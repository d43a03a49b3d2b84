"""Whole conversations between a control plane core and a data plane core, no sockets."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence

import pytest
from sync_link import PLUGINS, Link, make_config, make_hello

from protocol import EMPTY_CONFIG_HASH, ProtocolError
from protocol.sync import (
    CLOSE_PEER_TIMEOUT,
    CLOSE_UNSUPPORTED_VERSION,
    Ack,
    ControlPlaneConnection,
    ConversationState,
    DataPlaneConnection,
    DriftDetected,
    EntityError,
    Heartbeat,
    Hello,
    Nack,
    NackCode,
    Snapshot,
    SnapshotReceived,
    SnapshotRejected,
    StatusChanged,
    StatusUpdate,
    SyncStatus,
    Welcome,
    close_code_for,
    encode_snapshot,
    gzip_compress,
    max_frame_size,
)


def _status(core: ControlPlaneConnection | DataPlaneConnection) -> SyncStatus:
    return core.sync_status  # a call, so that mypy does not keep an earlier narrowing


def _state(core: ControlPlaneConnection | DataPlaneConnection) -> ConversationState:
    return core.state


def _status_events(events: Sequence[object]) -> list[SyncStatus]:
    return [e.sync_status for e in events if isinstance(e, StatusChanged)]


@pytest.mark.parametrize("chunk", [None, 1, 7], ids=["whole", "byte-by-byte", "chunks-of-7"])
def test_hello_welcome_snapshot_ack(chunk: int | None) -> None:
    config = make_config(routes=2)
    snapshot = encode_snapshot(config, 5)
    link = Link(config=snapshot, chunk=chunk)
    link.pump()

    assert link.sent_types(link.to_cp) == ["hello", "ack"]
    assert link.sent_types(link.to_dp) == ["welcome", "snapshot"]
    hello, status = link.cp_events[:2]
    assert isinstance(hello, Hello)
    assert hello.node_id == link.dp.hello.node_id
    assert hello.labels == {"region": "eu-west-1"}
    assert status == StatusChanged(sync_status=SyncStatus.NORMAL, reason="", config_version=5)
    assert isinstance(link.cp_events[2], Ack)

    welcome, received = link.dp_events
    assert isinstance(welcome, Welcome)
    assert welcome.sync_status is SyncStatus.NORMAL
    assert isinstance(received, SnapshotReceived)
    assert received.config == config
    assert received.config_version == 5

    assert link.cp.state is link.dp.state is ConversationState.OPEN
    assert (link.dp.running_version, link.dp.running_hash) == (5, snapshot.config_hash)
    assert (link.cp.dp_config_version, link.cp.dp_config_hash) == (5, snapshot.config_hash)
    assert link.cp.in_flight_version is None
    assert link.cp.protocol_version == link.dp.protocol_version == "v1"


def test_every_session_sends_the_same_bytes() -> None:
    snapshot = encode_snapshot(make_config(), 1)
    frames = []
    for _ in range(3):
        link = Link(config=snapshot)
        link.pump()
        frames.append(next(f for f in link.frames_to_dp if isinstance(f, bytes)))
    assert all(frame is snapshot.frame for frame in frames)


def test_dp_already_running_the_config_gets_no_snapshot() -> None:
    snapshot = encode_snapshot(make_config(), 9)
    hello = make_hello(config_version=9, config_hash=snapshot.config_hash)
    link = Link(config=snapshot, hello=hello)
    link.pump()
    assert link.sent_types(link.to_dp) == ["welcome"]
    assert link.cp.sync_status is SyncStatus.NORMAL


def test_same_version_other_hash_is_resent() -> None:
    snapshot = encode_snapshot(make_config(), 9)
    link = Link(config=snapshot, hello=make_hello(config_version=9, config_hash="a" * 32))
    link.pump()
    assert link.sent_types(link.to_dp) == ["welcome", "snapshot"]


def test_config_arrives_after_connect() -> None:
    link = Link()
    link.pump()
    welcome = link.dp_events[0]
    assert isinstance(welcome, Welcome)
    assert welcome.sync_status is SyncStatus.UNKNOWN
    assert "no configuration" in welcome.reason

    link.cp.set_config(encode_snapshot(make_config(), 1))
    link.pump()
    assert link.sent_types(link.to_dp) == ["welcome", "status", "snapshot"]
    assert _status_events(link.cp_events) == [SyncStatus.UNKNOWN, SyncStatus.NORMAL]
    assert link.dp.sync_status is SyncStatus.NORMAL
    assert link.dp.running_version == 1


def test_one_snapshot_in_flight_and_latest_wins() -> None:
    link = Link(config=encode_snapshot(make_config(routes=1), 1), auto_ack=False)
    link.pump()
    assert link.cp.in_flight_version == 1
    # Two more versions while the DP is still applying version 1: nothing is queued.
    link.cp.set_config(encode_snapshot(make_config(routes=2), 2))
    link.cp.set_config(encode_snapshot(make_config(routes=3), 3))
    link.pump()
    assert link.sent_types(link.to_dp) == ["welcome", "snapshot"]
    with pytest.raises(ProtocolError) as info:
        link.cp.send(Snapshot(snapshot=link.cp.config))  # type: ignore[arg-type]
    assert info.value.local
    assert info.value.code == "snapshot_in_flight"

    received = link.dp_events[-1]
    assert isinstance(received, SnapshotReceived)
    link.cp.receive_message(
        link.dp.send(Ack(config_version=1, config_hash=received.config_hash)), now=link.now
    )
    link.auto_ack = True
    link.pump()
    versions = [m.snapshot.config_version for m in link.to_dp if isinstance(m, Snapshot)]
    assert versions == [1, 3]
    assert link.dp.running_version == 3


def test_kong_version_incompatible_dp_is_told_and_gets_nothing() -> None:
    link = Link(config=encode_snapshot(make_config(), 1), hello=make_hello(version="4.0.0"))
    link.pump()
    welcome = link.dp_events[0]
    assert isinstance(welcome, Welcome)
    assert welcome.sync_status is SyncStatus.KONG_VERSION_INCOMPATIBLE
    assert "4.0.0" in welcome.reason
    assert link.dp.sync_status is SyncStatus.KONG_VERSION_INCOMPATIBLE
    assert link.sent_types(link.to_dp) == ["welcome"]
    with pytest.raises(ProtocolError) as info:
        link.cp.send(Snapshot(snapshot=encode_snapshot(make_config(), 1)))
    assert info.value.local
    assert info.value.code == "kong_version_incompatible"
    assert link.cp.state is ConversationState.OPEN  # a refused send changes nothing

    # The connection stays up; the CP's heartbeats keep repeating the status.
    link.advance(30)
    link.pump()
    beats = [m for m in link.to_dp if isinstance(m, Heartbeat)]
    assert beats
    assert beats[-1].sync_status is SyncStatus.KONG_VERSION_INCOMPATIBLE
    assert not any(isinstance(m, Snapshot) for m in link.to_dp)


def test_plugin_set_incompatible_then_fixed_by_a_new_config() -> None:
    hello = make_hello(plugins={"key-auth": "3.10.0"})
    link = Link(config=encode_snapshot(make_config(plugins=("cors",)), 1), hello=hello)
    link.pump()
    assert link.dp.sync_status is SyncStatus.PLUGIN_SET_INCOMPATIBLE
    assert link.dp.status_reason == "configured cors plugin is missing from data plane"
    assert link.sent_types(link.to_dp) == ["welcome"]

    link.cp.set_config(encode_snapshot(make_config(plugins=("key-auth",)), 2))
    link.pump()
    assert link.sent_types(link.to_dp) == ["welcome", "status", "snapshot"]
    assert _status(link.dp) is SyncStatus.NORMAL
    assert link.dp.running_version == 2
    assert _status_events(link.cp_events) == [
        SyncStatus.PLUGIN_SET_INCOMPATIBLE,
        SyncStatus.NORMAL,
    ]


def test_becoming_incompatible_sends_an_explicit_status_message() -> None:
    link = Link(
        config=encode_snapshot(make_config(), 1),
        hello=make_hello(plugins={**PLUGINS, "key-auth": "3.99.0"}),
    )
    link.pump()
    assert link.dp.sync_status is SyncStatus.PLUGIN_VERSION_INCOMPATIBLE
    assert not any(isinstance(m, Snapshot) for m in link.to_dp)

    link2 = Link(
        config=encode_snapshot(make_config(plugins=()), 1),
        hello=make_hello(plugins={"cors": "3.10.0"}),
    )
    link2.pump()
    assert link2.dp.running_version == 1
    link2.cp.set_config(encode_snapshot(make_config(plugins=("key-auth",)), 2))
    link2.pump()
    update = link2.to_dp[-1]
    assert isinstance(update, StatusUpdate)
    assert update.sync_status is SyncStatus.PLUGIN_SET_INCOMPATIBLE
    assert update.config_version == 2
    assert link2.dp.running_version == 1  # never received version 2


def test_drift_is_detected_and_resent_once_per_version() -> None:
    snapshot = encode_snapshot(make_config(), 4)
    link = Link(config=snapshot)
    link.pump()
    # Something on the DP replaced its config behind the protocol's back.
    link.dp.running_hash = "f" * 32
    link.advance(30)
    link.pump()
    drift = [e for e in link.cp_events if isinstance(e, DriftDetected)]
    assert drift == [
        DriftDetected(
            expected_version=4,
            expected_hash=snapshot.config_hash,
            reported_version=4,
            reported_hash="f" * 32,
            resend=True,
        )
    ]
    assert [m.TYPE for m in link.to_dp].count("snapshot") == 2
    assert link.dp.running_hash == snapshot.config_hash

    # It drifts again: reported, but not resent a second time for the same version.
    link.dp.running_hash = "e" * 32
    link.advance(30)
    link.pump()
    drift = [e for e in link.cp_events if isinstance(e, DriftDetected)]
    assert len(drift) == 2
    assert drift[-1].resend is False
    link.advance(30)
    link.pump()
    assert len([e for e in link.cp_events if isinstance(e, DriftDetected)]) == 2
    assert [m.TYPE for m in link.to_dp].count("snapshot") == 2


def test_heartbeat_during_apply_is_not_drift() -> None:
    link = Link(config=encode_snapshot(make_config(), 1), auto_ack=False)
    link.pump()
    link.advance(30)
    link.pump()
    assert any(isinstance(m, Heartbeat) for m in link.to_cp)
    assert not any(isinstance(e, DriftDetected) for e in link.cp_events)


def _reject(event: SnapshotReceived) -> Nack:
    return Nack(
        config_version=event.config_version,
        config_hash=event.config_hash,
        code=NackCode.INVALID_CONFIG,
        message="1 entity failed validation",
        errors=(
            EntityError(
                entity_type="routes",
                entity_id=event.config["routes"][0]["id"],
                field="paths.0",
                message="should start with: / (fixed path) or ~/ (regex path)",
            ),
        ),
    )


def test_nack_marks_the_dp_rejected_without_resending() -> None:
    link = Link(config=encode_snapshot(make_config(), 3), validate=_reject)
    link.pump()
    nack = link.cp_events[-2]
    assert isinstance(nack, Nack)
    assert nack.errors[0].field == "paths.0"
    assert link.cp.sync_status is SyncStatus.CONFIG_REJECTED
    assert "rejected config version 3 (invalid_config)" in link.cp.status_reason
    assert isinstance(link.to_dp[-1], StatusUpdate)
    assert link.dp.sync_status is SyncStatus.CONFIG_REJECTED
    assert link.dp.running_version == 0
    assert link.dp.running_hash == EMPTY_CONFIG_HASH

    link.advance(30)
    link.pump()  # heartbeats: the DP still runs its old config, which is what is expected
    assert [m.TYPE for m in link.to_dp].count("snapshot") == 1
    assert not any(isinstance(e, DriftDetected) for e in link.cp_events)

    link.validate = None
    link.cp.set_config(encode_snapshot(make_config(routes=2), 4))
    link.pump()
    assert link.dp.running_version == 4
    assert _status(link.cp) is SyncStatus.NORMAL


def test_nack_errors_are_capped() -> None:
    def many_errors(event: SnapshotReceived) -> Nack:
        errors = tuple(EntityError(entity_type="routes", message=f"e{i}") for i in range(150))
        return Nack(
            config_version=event.config_version,
            config_hash=event.config_hash,
            code=NackCode.INVALID_CONFIG,
            message="x" * 5000,
            errors=errors,
        )

    link = Link(config=encode_snapshot(make_config(), 1), validate=many_errors)
    link.pump()
    nack = next(e for e in link.cp_events if isinstance(e, Nack))
    assert len(nack.errors) == 100
    assert nack.omitted_errors == 50
    assert len(nack.message) == 1024


def test_cp_refuses_an_oversized_config_and_keeps_the_dp_informed() -> None:
    snapshot = encode_snapshot(make_config(routes=50), 1)
    link = Link(config=snapshot, max_payload=snapshot.size - 1)
    link.pump()
    assert link.cp.sync_status is SyncStatus.PAYLOAD_TOO_LARGE
    assert "control plane's cluster_max_payload" in link.cp.status_reason
    assert link.dp.sync_status is SyncStatus.PAYLOAD_TOO_LARGE
    assert link.sent_types(link.to_dp) == ["welcome"]
    with pytest.raises(ProtocolError) as info:
        link.cp.send(Snapshot(snapshot=snapshot))
    assert info.value.code == "payload_too_large"
    assert info.value.local
    link.advance(30)
    link.pump()
    assert link.cp.state is ConversationState.OPEN  # no reconnect loop
    link.cp.set_config(encode_snapshot(make_config(routes=1), 2))
    link.pump()
    assert link.dp.running_version == 2


def test_cp_respects_the_dps_smaller_limit() -> None:
    snapshot = encode_snapshot(make_config(routes=50), 1)
    link = Link(config=snapshot, hello=make_hello(max_payload=snapshot.size - 1))
    link.pump()
    assert link.cp.sync_status is SyncStatus.PAYLOAD_TOO_LARGE
    assert "data plane's cluster_max_payload" in link.cp.status_reason


def _open_dp(max_payload: int = 10_000) -> Link:
    link = Link(hello=make_hello(max_payload=max_payload))
    link.pump()
    assert link.dp.state is ConversationState.OPEN
    return link


def _frame(header: dict[str, object], payload: bytes) -> bytes:
    return json.dumps(header).replace(" ", "").encode() + b"\n" + payload


def _expect_rejection(link: Link, frame: bytes | list[bytes], code: NackCode) -> Nack:
    if isinstance(frame, list):
        for i, piece in enumerate(frame):
            link.dp.receive_message(piece, now=link.now, final=i == len(frame) - 1)
    else:
        link.dp.receive_message(frame, now=link.now)
    event = link.dp.next_event()
    assert isinstance(event, SnapshotRejected), event
    assert event.nack.code is code
    nack = link.dp.next_outbound(link.now)
    assert nack == event.nack
    link.dp.send(nack)
    assert link.dp.pending_version is None
    assert link.dp.running_version == 0
    return event.nack


def test_dp_refuses_a_declared_oversized_snapshot_before_decompressing() -> None:
    link = _open_dp(max_payload=1000)
    header = {
        "type": "snapshot",
        "config_version": 2,
        "config_hash": "a" * 32,
        "encoding": "gzip",
        "size": 1001,
    }
    nack = _expect_rejection(link, _frame(header, b"not even gzip"), NackCode.PAYLOAD_TOO_LARGE)
    assert "1000 bytes" in nack.message
    assert nack.config_version == 2


def test_dp_refuses_an_oversized_frame_while_it_arrives() -> None:
    link = _open_dp(max_payload=1000)
    header = {
        "type": "snapshot",
        "config_version": 2,
        "config_hash": "a" * 32,
        "encoding": "gzip",
        "size": 10,
    }
    frame = _frame(header, b"\0" * (max_frame_size(1000) + 10))
    pieces = [frame[i : i + 512] for i in range(0, len(frame), 512)]
    _expect_rejection(link, pieces, NackCode.PAYLOAD_TOO_LARGE)


def test_dp_refuses_a_gzip_bomb_with_a_lying_header() -> None:
    link = _open_dp(max_payload=100_000)
    header = {
        "type": "snapshot",
        "config_version": 2,
        "config_hash": "a" * 32,
        "encoding": "gzip",
        "size": 1000,
    }
    bomb = gzip_compress(b"[" + b" " * 10_000_000 + b"]", level=9)
    nack = _expect_rejection(link, _frame(header, bomb), NackCode.INVALID_PAYLOAD)
    assert "1000" in nack.message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[1, 2]", NackCode.INVALID_PAYLOAD),
        (b"{bad json", NackCode.INVALID_PAYLOAD),
        (b'{"a": NaN}', NackCode.INVALID_PAYLOAD),
        (b"\xff\xfe{}", NackCode.INVALID_PAYLOAD),
        (b"[" * 100_000 + b"]" * 100_000, NackCode.INVALID_PAYLOAD),
        (b'{"services": [{"id": "x"}]}', NackCode.HASH_MISMATCH),
    ],
)
def test_dp_refuses_undecodable_or_inconsistent_payloads(body: bytes, code: NackCode) -> None:
    link = _open_dp(max_payload=1_000_000)
    header = {
        "type": "snapshot",
        "config_version": 2,
        "config_hash": "a" * 32,
        "encoding": "gzip",
        "size": len(body),
    }
    _expect_rejection(link, _frame(header, gzip.compress(body)), code)


def test_dp_cannot_ack_a_rejected_snapshot_or_a_version_it_never_got() -> None:
    link = _open_dp()
    with pytest.raises(ProtocolError) as info:
        link.dp.send(Ack(config_version=1, config_hash="a" * 32))
    assert info.value.local
    assert info.value.code == "unexpected_message"
    header = {
        "type": "snapshot",
        "config_version": 2,
        "config_hash": "a" * 32,
        "encoding": "gzip",
        "size": 3,
    }
    link.dp.receive_message(_frame(header, b"zzz"), now=link.now)
    with pytest.raises(ProtocolError, match="cannot ack"):
        link.dp.send(Ack(config_version=2, config_hash="a" * 32))
    with pytest.raises(ProtocolError, match="must answer config version 2"):
        link.dp.send(Ack(config_version=3, config_hash="a" * 32))


def test_second_snapshot_before_an_answer_is_a_protocol_error() -> None:
    link = _open_dp(max_payload=1_000_000)
    frame = encode_snapshot(make_config(), 2).frame
    link.dp.receive_message(frame, now=link.now)
    with pytest.raises(ProtocolError) as info:
        link.dp.receive_message(frame, now=link.now)
    assert info.value.code == "unexpected_snapshot"
    assert not info.value.local
    assert link.dp.state is ConversationState.ERROR
    with pytest.raises(ProtocolError) as again:
        link.dp.receive_message("{}", now=link.now)
    assert again.value.code == "connection_failed"


def test_cp_rejects_an_ack_for_something_it_did_not_send() -> None:
    link = Link(config=encode_snapshot(make_config(), 1))
    link.pump()
    stray = '{"type":"ack","config_version":1,"config_hash":"' + "a" * 32 + '"}'
    with pytest.raises(ProtocolError) as info:
        link.cp.receive_message(stray, now=link.now)
    assert info.value.code == "unexpected_ack"
    assert close_code_for(info.value)[0] == 1002


def test_cp_never_accepts_binary_frames() -> None:
    link = Link()
    with pytest.raises(ProtocolError) as info:
        link.cp.receive_message(b"\x00", now=link.now)
    assert info.value.code == "unexpected_message"


def test_messages_out_of_order_are_refused() -> None:
    link = Link()
    beat = '{"type":"heartbeat","config_version":0,"config_hash":"' + "0" * 32 + '"}'
    with pytest.raises(ProtocolError) as info:
        link.cp.receive_message(beat, now=link.now)
    assert info.value.code == "unexpected_message"
    assert not info.value.local
    assert link.cp.state is ConversationState.ERROR
    assert link.cp.next_outbound(link.now) is None


def test_heartbeats_both_ways_and_timeouts() -> None:
    link = Link(
        config=encode_snapshot(make_config(), 1), heartbeat_interval=10, heartbeat_timeout=25
    )
    start = link.now
    assert link.cp.peer_deadline == start + 10.0  # hello timeout
    assert link.dp.peer_deadline == start + 10.0  # welcome timeout
    link.pump()
    # The DP adopted the CP's timing from the welcome.
    assert (link.dp.heartbeat_interval, link.dp.heartbeat_timeout) == (10, 25)
    assert link.cp.next_deadline() == start + 10
    assert link.dp.next_deadline() == start + 10
    assert link.cp.peer_deadline == start + 25

    link.advance(10)
    link.pump()
    assert [m.TYPE for m in link.to_cp].count("heartbeat") == 1
    assert [m.TYPE for m in link.to_dp].count("heartbeat") == 1
    cp_beat = next(m for m in link.to_dp if isinstance(m, Heartbeat))
    assert cp_beat.sync_status is SyncStatus.NORMAL
    assert cp_beat.config_version == 1
    dp_beat = next(m for m in link.to_cp if isinstance(m, Heartbeat))
    assert dp_beat.sync_status is None
    assert dp_beat.config_hash == link.dp.running_hash
    assert link.cp.next_deadline() == link.now + 10

    # The DP goes silent: the CP still heartbeats, then declares it gone.
    link.advance(20)
    assert link.cp.next_outbound(link.now) is not None
    assert not link.cp.peer_timed_out(link.now)
    link.advance(5)
    assert link.cp.peer_timed_out(link.now)
    assert link.cp.next_deadline() <= link.now
    error = ProtocolError("no heartbeat from the data plane", code="peer_timeout")
    assert close_code_for(error) == (
        CLOSE_PEER_TIMEOUT,
        "peer_timeout: no heartbeat from the data plane",
    )


def test_hello_timeout() -> None:
    link = Link()
    link.advance(9.9)
    assert not link.cp.peer_timed_out(link.now)
    link.advance(0.1)
    assert link.cp.peer_timed_out(link.now)


def test_version_negotiation_picks_the_highest_common_version() -> None:
    link = Link(hello=make_hello(protocol_versions=("v1", "v7"), capabilities=("deltas", "zstd")))
    link.pump()
    assert link.cp.protocol_version == "v1"
    welcome = link.dp_events[0]
    assert isinstance(welcome, Welcome)
    assert welcome.capabilities == ()
    assert link.dp.capabilities == ()


def test_no_common_version_closes_with_a_clear_code() -> None:
    link = Link(hello=make_hello(protocol_versions=("v2",)))
    with pytest.raises(ProtocolError) as info:
        link.pump()
    assert info.value.code == "unsupported_protocol_version"
    assert "data plane offers v2, control plane speaks v1" in str(info.value)
    code, reason = close_code_for(info.value)
    assert code == CLOSE_UNSUPPORTED_VERSION
    assert len(reason.encode()) <= 123


def test_dp_refuses_a_welcome_for_a_version_it_did_not_offer() -> None:
    link = Link()
    link.cp.receive_message(link.dp.send(link.dp.hello), now=link.now)
    welcome = link.cp.next_outbound(link.now)
    assert isinstance(welcome, Welcome)
    text = link.cp.send(welcome)
    assert isinstance(text, str)
    with pytest.raises(ProtocolError) as info:
        link.dp.receive_message(text.replace('"v1"', '"v3"'), now=link.now)
    assert info.value.code == "unsupported_protocol_version"
    link2 = Link()
    link2.cp.receive_message(link2.dp.send(link2.dp.hello), now=link2.now)
    text2 = link2.cp.send(link2.cp.next_outbound(link2.now))  # type: ignore[arg-type]
    assert isinstance(text2, str)
    with pytest.raises(ProtocolError):
        link2.dp.receive_message(
            text2.replace('"capabilities":[]', '"capabilities":["deltas"]'), now=link2.now
        )


def test_local_send_errors_leave_the_conversation_alone() -> None:
    link = Link()
    link.cp.receive_message(link.dp.send(link.dp.hello), now=link.now)
    bogus = Welcome(
        protocol_version="v9",
        node_id=link.cp.node_id,
        version="3.10.0",
        sync_status=SyncStatus.NORMAL,
        heartbeat_interval=30,
        heartbeat_timeout=45,
        max_payload=1,
    )
    with pytest.raises(ProtocolError) as info:
        link.cp.send(bogus)
    assert info.value.local
    assert link.cp.state is ConversationState.AWAIT_WELCOME
    with pytest.raises(ProtocolError):
        link.cp.send(
            Heartbeat(config_version=0, config_hash="0" * 32, sync_status=SyncStatus.NORMAL)
        )
    link.pump()
    assert _state(link.cp) is ConversationState.OPEN


def test_invalid_constructor_arguments() -> None:
    with pytest.raises(ProtocolError) as info:
        Link(heartbeat_interval=30, heartbeat_timeout=30)
    assert info.value.local
    with pytest.raises(ProtocolError):
        Link(protocol_versions=("v2",))
    with pytest.raises(ProtocolError):
        Link(capabilities=("deltas",))
    with pytest.raises(ProtocolError):
        Link(hello=make_hello(labels={"kong": "x"}))
    with pytest.raises(ProtocolError):
        Link(hello=make_hello(node_id="not-a-uuid"))


def test_a_dp_that_never_answers_is_dropped_even_if_it_heartbeats() -> None:
    link = Link(
        config=encode_snapshot(make_config(), 1),
        auto_ack=False,
        heartbeat_interval=10,
        heartbeat_timeout=25,
        answer_timeout=60,
    )
    link.pump()
    sent_at = link.now
    assert link.cp.in_flight_version == 1
    for _ in range(5):  # heartbeats keep the connection alive for 50 s
        link.advance(10)
        link.pump()
        assert not link.cp.peer_timed_out(link.now)
    assert link.cp.peer_deadline == sent_at + 60
    link.advance(10)
    assert link.cp.peer_timed_out(link.now)
    assert "config version 1 not answered within 60 seconds" in link.cp.peer_deadline_reason(
        link.now
    )
    assert link.cp.next_deadline() <= link.now


def test_silence_reason() -> None:
    link = Link()
    assert link.cp.peer_deadline_reason(link.now) == "nothing received from the data_plane in time"
    with pytest.raises(ProtocolError):
        Link(answer_timeout=0)
