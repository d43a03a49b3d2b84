"""Untrusted input never raises anything but a remote ProtocolError (hypothesis)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sync_link import Link, make_config

from protocol import ProtocolError
from protocol.sync import (
    NEED_DATA,
    ControlPlaneConnection,
    DataPlaneConnection,
    Snapshot,
    SnapshotReceived,
    SnapshotRejected,
    decode_control,
    encode_control,
    encode_snapshot,
)

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Core = ControlPlaneConnection | DataPlaneConnection


def cp_awaiting_hello() -> Core:
    return Link().cp


SNAPSHOT = encode_snapshot(make_config(), 1)


def cp_open() -> Core:
    link = Link(config=SNAPSHOT, auto_ack=False)
    link.pump()
    return link.cp


def dp_awaiting_welcome() -> Core:
    link = Link()
    link.cp.receive_message(link.dp.send(link.dp.hello), now=link.now)
    return link.dp


def dp_open() -> Core:
    link = Link()
    link.pump()
    return link.dp


FACTORIES: list[Callable[[], Core]] = [cp_awaiting_hello, cp_open, dp_awaiting_welcome, dp_open]
factories = st.sampled_from(FACTORIES)


def _remote_error_or_none(action: Callable[[], object]) -> ProtocolError | None:
    """Run *action*; return the ProtocolError it raised. Any other exception fails the test."""
    try:
        action()
    except ProtocolError as exc:
        return exc
    return None


def feed(core: Core, data: bytes | str) -> None:
    def run() -> None:
        core.receive_message(data, now=2000.0)
        while core.next_event() is not NEED_DATA:
            pass
        core.next_outbound(2000.0)

    error = _remote_error_or_none(run)
    if error is not None:
        assert not error.local, error
        assert error.code, error


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["v1", "0" * 32, "a" * 32, "3.10.0", "normal", "gzip", "hello"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=8,
)
FIELDS = [
    "node_id",
    "hostname",
    "version",
    "plugins",
    "labels",
    "config_version",
    "config_hash",
    "max_payload",
    "protocol_versions",
    "capabilities",
    "protocol_version",
    "sync_status",
    "reason",
    "heartbeat_interval",
    "heartbeat_timeout",
    "code",
    "message",
    "errors",
    "omitted_errors",
    "encoding",
    "size",
]
TYPES = ["hello", "welcome", "status", "heartbeat", "ack", "nack", "snapshot", "bogus"]
messages = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(TYPES) | json_values,
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=10),
)


@FUZZ
@given(factories, st.text(max_size=300))
def test_arbitrary_text(factory: Callable[[], Core], text: str) -> None:
    feed(factory(), text)


@FUZZ
@given(factories, st.binary(max_size=300))
def test_arbitrary_bytes(factory: Callable[[], Core], data: bytes) -> None:
    feed(factory(), data)


@FUZZ
@given(factories, messages)
def test_arbitrary_json_messages(factory: Callable[[], Core], message: dict[str, Any]) -> None:
    feed(factory(), json.dumps(message))


def _valid_messages() -> list[dict[str, Any]]:
    link = Link(config=encode_snapshot(make_config(), 1))
    link.pump()
    link.advance(30)
    link.pump()
    return [
        json.loads(encode_control(message))
        for message in [*link.to_cp, *link.to_dp]
        if not isinstance(message, Snapshot)
    ]


VALID = _valid_messages()


@FUZZ
@given(factories, st.sampled_from(VALID), st.sampled_from(FIELDS), json_values)
def test_one_field_mutated(
    factory: Callable[[], Core], message: dict[str, Any], field: str, value: Any
) -> None:
    feed(factory(), json.dumps({**message, field: value}))


@FUZZ
@given(factories, st.sampled_from(VALID), st.sampled_from(FIELDS))
def test_one_field_missing(
    factory: Callable[[], Core], message: dict[str, Any], field: str
) -> None:
    feed(factory(), json.dumps({k: v for k, v in message.items() if k != field}))


headers = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["snapshot", "hello"]) | json_values,
        "config_version": st.integers(min_value=-2, max_value=2**64) | json_values,
        "config_hash": st.sampled_from(["a" * 32, "0" * 32, "A" * 32]) | json_values,
        "encoding": st.sampled_from(["gzip", "br"]) | json_values,
        "size": st.integers(min_value=-1, max_value=5000) | json_values,
    },
)
payloads = st.binary(max_size=200) | json_values.map(
    lambda v: gzip.compress(json.dumps(v).encode())
)


@FUZZ
@given(headers, payloads, st.booleans())
def test_arbitrary_snapshot_frames(header: dict[str, Any], payload: bytes, fragment: bool) -> None:
    dp = dp_open()
    frame = json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload

    def run() -> None:
        if fragment:
            for i in range(0, len(frame), 17):
                dp.receive_message(frame[i : i + 17], now=2000.0, final=i + 17 >= len(frame))
        else:
            dp.receive_message(frame, now=2000.0)

    error = _remote_error_or_none(run)
    if error is not None:
        assert not error.local
        assert error.code == "invalid_snapshot"
        return
    event = dp.next_event()
    assert isinstance(event, SnapshotReceived | SnapshotRejected)
    if isinstance(event, SnapshotRejected):
        assert dp.next_outbound(2000.0) == event.nack


@FUZZ
@given(st.text(max_size=500))
def test_decode_control_only_raises_protocol_error(text: str) -> None:
    error = _remote_error_or_none(lambda: decode_control(text))
    assert error is None or not error.local


def test_pathological_json() -> None:
    for text in [
        "[" * 100_000,
        '{"type":"hello","a":' * 50_000,
        '{"type": "heartbeat", "config_version": ' + "9" * 5000 + "}",
        '{"type":"hello","type":"hello"}',
        '{"type":"heartbeat","config_version":NaN}',
        '{"type":"heartbeat","config_version":Infinity}',
        '{"type":"hello","hostname":"\\ud800"}',
        "\ufeff{}",
        "x" * 2_000_000,
    ]:
        for factory in FACTORIES:
            feed(factory(), text)


@FUZZ
@given(st.data())
def test_any_split_of_a_valid_conversation_is_equivalent(data: st.DataObject) -> None:
    chunk = data.draw(st.integers(min_value=1, max_value=64))
    link = Link(config=encode_snapshot(make_config(routes=3), 1), chunk=chunk)
    link.pump()
    assert link.dp.running_version == 1
