"""Encoding and strict decoding of control messages and snapshot headers.

Everything that arrives is untrusted. Every decoding failure raises ``ProtocolError`` (remote
kind) with a code from docs/reference/protocol.md ("Error codes"); no other exception type
escapes (tests/protocol/test_fuzz.py). Unknown *fields* are ignored so that a newer peer can
add optional fields; unknown message *types* and unknown enum values are errors.

The encoder builds the wire dict and runs it through the same decoder before serialising it,
so we never send what a peer of the same version would refuse; a failure there is a local
``ProtocolError`` (a bug in the caller).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn, TypeVar

import attrs

from protocol._errors import ProtocolError
from protocol._hash import is_config_hash
from protocol.sync._compat import SyncStatus
from protocol.sync._constants import (
    MAX_CAPABILITIES,
    MAX_CONFIG_VERSION,
    MAX_CONTROL_MESSAGE,
    MAX_HEARTBEAT_INTERVAL,
    MAX_HEARTBEAT_TIMEOUT,
    MAX_MAX_PAYLOAD,
    MAX_NACK_ERRORS,
    MAX_PLUGINS,
    MAX_PROTOCOL_VERSIONS,
    MAX_SNAPSHOT_HEADER,
    MAX_TEXT,
)
from protocol.sync._labels import validate_labels
from protocol.sync._messages import (
    Ack,
    EntityError,
    Heartbeat,
    Hello,
    Nack,
    NackCode,
    StatusUpdate,
    Welcome,
)
from protocol.sync._snapshot import SNAPSHOT_ENCODING

__all__ = ["ControlMessage", "SnapshotHeader", "decode_control", "encode_control"]

ControlMessage = Hello | Welcome | StatusUpdate | Heartbeat | Ack | Nack

_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,255}", re.ASCII)
_VERSION_TEXT: Final = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no space
_PLUGIN_VERSION: Final = re.compile(r"[\x21-\x7e]{0,64}")
_PLUGIN_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
_PROTOCOL_VERSION: Final = re.compile(r"v[1-9][0-9]{0,3}")
_CAPABILITY: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

T = TypeVar("T")


def _fail(message: str, code: str = "invalid_message") -> NoReturn:
    raise ProtocolError(message, code=code)


_REQUIRED: Final[Any] = object()


class _Fields:
    """Typed, bounded access to the fields of one received JSON object."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self._data = data
        self._where = where

    def _get(self, name: str, default: Any) -> Any:
        if name in self._data:
            return self._data[name]
        if default is _REQUIRED:
            _fail(f"{self._where}: missing field {name!r}")
        return default

    def text(
        self,
        name: str,
        *,
        pattern: re.Pattern[str] | None = None,
        max_len: int = MAX_TEXT,
        default: Any = None,
    ) -> Any:
        value = self._get(name, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str):
            _fail(f"{self._where}: field {name!r} must be a string")
        if len(value) > max_len:
            _fail(f"{self._where}: field {name!r} is longer than {max_len} characters")
        if pattern is not None and pattern.fullmatch(value) is None:
            _fail(f"{self._where}: field {name!r} is not valid")
        _check_encodable(value, self._where, name)
        return value

    def integer(self, name: str, *, low: int, high: int, default: Any = None) -> int:
        value = self._get(name, _REQUIRED if default is None else default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            _fail(f"{self._where}: field {name!r} must be an integer from {low} to {high}")
        return value

    def number(self, name: str, *, low: float, high: float) -> float:
        value = self._get(name, _REQUIRED)
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(f"{self._where}: field {name!r} must be a number")
        number = float(value)
        if not math.isfinite(number) or not low < number <= high:
            _fail(f"{self._where}: field {name!r} must be a number above {low} up to {high}")
        return number

    def config_hash(self, name: str) -> str:
        value = self._get(name, _REQUIRED)
        if not is_config_hash(value):
            _fail(f"{self._where}: field {name!r} must be 32 lower-case hex digits")
        return str(value)

    def enum(self, name: str, kind: Callable[[str], T]) -> T:
        value = self._get(name, _REQUIRED)
        try:
            return kind(value)
        except (ValueError, TypeError):
            _fail(f"{self._where}: field {name!r} has an unknown value")

    def string_list(
        self, name: str, *, pattern: re.Pattern[str], max_items: int, default: Any = _REQUIRED
    ) -> tuple[str, ...]:
        value = self._get(name, default)
        if not isinstance(value, list) or len(value) > max_items:
            _fail(f"{self._where}: field {name!r} must be a list of at most {max_items} items")
        if not all(isinstance(v, str) and pattern.fullmatch(v) for v in value):
            _fail(f"{self._where}: field {name!r} has an invalid item")
        if len(set(value)) != len(value):
            _fail(f"{self._where}: field {name!r} has duplicate items")
        return tuple(value)

    def string_map(self, name: str, *, max_items: int) -> dict[str, str]:
        value = self._get(name, {})
        if not isinstance(value, dict) or len(value) > max_items:
            _fail(f"{self._where}: field {name!r} must be an object of at most {max_items} items")
        for key, item in value.items():
            if not isinstance(item, str) or len(key) > MAX_TEXT or len(item) > MAX_TEXT:
                _fail(f"{self._where}: field {name!r} must map strings to strings")
            _check_encodable(key, self._where, name)
            _check_encodable(item, self._where, name)
        return dict(value)


def _check_encodable(value: str, where: str, name: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(f"{where}: field {name!r} contains a lone surrogate")


def _reject_constant(name: str) -> NoReturn:
    _fail(f"JSON constant {name} is not allowed")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        _fail("duplicate key in JSON object")
    return result


def parse_json_object(text: str, where: str) -> dict[str, Any]:
    """Parse a control message's JSON strictly: no NaN, no duplicate keys, an object."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_object)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ProtocolError(f"{where}: invalid JSON: {exc}", code="invalid_message") from exc
    if not isinstance(value, dict):
        _fail(f"{where}: a message must be a JSON object")
    return value


# ---------------------------------------------------------------------------------------
# Control messages


def _hello(f: _Fields) -> Hello:
    labels = f.string_map("labels", max_items=64)
    problems = validate_labels(labels)
    if problems:
        _fail("hello: " + "; ".join(problems))
    plugins = f.string_map("plugins", max_items=MAX_PLUGINS)
    for name, version in plugins.items():
        if _PLUGIN_NAME.fullmatch(name) is None or _PLUGIN_VERSION.fullmatch(version) is None:
            _fail(f"hello: invalid plugin entry {name[:64]!r}")
    return Hello(
        node_id=f.text("node_id", pattern=_UUID, default=_REQUIRED),
        hostname=f.text("hostname", pattern=_HOSTNAME, default=_REQUIRED),
        version=f.text("version", pattern=_VERSION_TEXT, default=_REQUIRED),
        plugins=plugins,
        labels=labels,
        config_version=f.integer("config_version", low=0, high=MAX_CONFIG_VERSION),
        config_hash=f.config_hash("config_hash"),
        max_payload=f.integer("max_payload", low=1, high=MAX_MAX_PAYLOAD),
        protocol_versions=_nonempty(
            f.string_list(
                "protocol_versions", pattern=_PROTOCOL_VERSION, max_items=MAX_PROTOCOL_VERSIONS
            ),
            "hello: field 'protocol_versions' must not be empty",
        ),
        capabilities=f.string_list(
            "capabilities", pattern=_CAPABILITY, max_items=MAX_CAPABILITIES, default=[]
        ),
    )


def _nonempty(value: tuple[str, ...], message: str) -> tuple[str, ...]:
    if not value:
        _fail(message)
    return value


def _welcome(f: _Fields) -> Welcome:
    interval = f.number("heartbeat_interval", low=0.0, high=MAX_HEARTBEAT_INTERVAL)
    timeout = f.number("heartbeat_timeout", low=0.0, high=MAX_HEARTBEAT_TIMEOUT)
    if timeout <= interval:
        _fail("welcome: heartbeat_timeout must be greater than heartbeat_interval")
    return Welcome(
        protocol_version=f.text("protocol_version", pattern=_PROTOCOL_VERSION, default=_REQUIRED),
        capabilities=f.string_list(
            "capabilities", pattern=_CAPABILITY, max_items=MAX_CAPABILITIES, default=[]
        ),
        node_id=f.text("node_id", pattern=_UUID, default=_REQUIRED),
        version=f.text("version", pattern=_VERSION_TEXT, default=_REQUIRED),
        sync_status=f.enum("sync_status", SyncStatus),
        reason=f.text("reason", default=""),
        heartbeat_interval=interval,
        heartbeat_timeout=timeout,
        max_payload=f.integer("max_payload", low=1, high=MAX_MAX_PAYLOAD),
    )


def _status(f: _Fields) -> StatusUpdate:
    return StatusUpdate(
        sync_status=f.enum("sync_status", SyncStatus),
        reason=f.text("reason", default=""),
        config_version=f.integer("config_version", low=0, high=MAX_CONFIG_VERSION),
    )


def _heartbeat(f: _Fields) -> Heartbeat:
    status = None if f._get("sync_status", None) is None else f.enum("sync_status", SyncStatus)
    return Heartbeat(
        config_version=f.integer("config_version", low=0, high=MAX_CONFIG_VERSION),
        config_hash=f.config_hash("config_hash"),
        sync_status=status,
    )


def _ack(f: _Fields) -> Ack:
    return Ack(
        config_version=f.integer("config_version", low=1, high=MAX_CONFIG_VERSION),
        config_hash=f.config_hash("config_hash"),
    )


def _entity_error(value: Any) -> EntityError:
    if not isinstance(value, dict):
        _fail("nack: every error must be an object")
    f = _Fields(value, "nack error")
    return EntityError(
        entity_type=f.text("entity_type", max_len=256),
        entity_id=f.text("entity_id", max_len=256),
        entity_name=f.text("entity_name", max_len=256),
        field=f.text("field", max_len=256),
        message=f.text("message", default=_REQUIRED),
    )


def _nack(f: _Fields) -> Nack:
    errors = f._get("errors", [])
    if not isinstance(errors, list) or len(errors) > MAX_NACK_ERRORS:
        _fail(f"nack: field 'errors' must be a list of at most {MAX_NACK_ERRORS} items")
    return Nack(
        config_version=f.integer("config_version", low=1, high=MAX_CONFIG_VERSION),
        config_hash=f.config_hash("config_hash"),
        code=f.enum("code", NackCode),
        message=f.text("message", default=_REQUIRED),
        errors=tuple(_entity_error(e) for e in errors),
        omitted_errors=f.integer("omitted_errors", low=0, high=MAX_CONFIG_VERSION, default=0),
    )


_DECODERS: Final[dict[str, Callable[[_Fields], ControlMessage]]] = {
    "hello": _hello,
    "welcome": _welcome,
    "status": _status,
    "heartbeat": _heartbeat,
    "ack": _ack,
    "nack": _nack,
}


def decode_object(data: Mapping[str, Any]) -> ControlMessage:
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in _DECODERS:
        _fail("unknown or missing message type")
    return _DECODERS[kind](_Fields(data, kind))


def decode_control(text: str) -> ControlMessage:
    """Decode one control message (the payload of one text frame)."""
    if len(text) > MAX_CONTROL_MESSAGE:
        _fail(
            f"control message is longer than {MAX_CONTROL_MESSAGE} characters",
            code="message_too_large",
        )
    return decode_object(parse_json_object(text, "message"))


def _to_wire(message: ControlMessage) -> dict[str, Any]:
    data: dict[str, Any]
    match message:
        case Hello():
            data = {
                "node_id": message.node_id,
                "hostname": message.hostname,
                "version": message.version,
                "plugins": dict(message.plugins),
                "labels": dict(message.labels),
                "config_version": message.config_version,
                "config_hash": message.config_hash,
                "max_payload": message.max_payload,
                "protocol_versions": list(message.protocol_versions),
                "capabilities": list(message.capabilities),
            }
        case Welcome():
            data = {
                "protocol_version": message.protocol_version,
                "capabilities": list(message.capabilities),
                "node_id": message.node_id,
                "version": message.version,
                "sync_status": message.sync_status.value,
                "reason": _clip(message.reason),
                "heartbeat_interval": message.heartbeat_interval,
                "heartbeat_timeout": message.heartbeat_timeout,
                "max_payload": message.max_payload,
            }
        case StatusUpdate():
            data = {
                "sync_status": message.sync_status.value,
                "reason": _clip(message.reason),
                "config_version": message.config_version,
            }
        case Heartbeat():
            data = {"config_version": message.config_version, "config_hash": message.config_hash}
            if message.sync_status is not None:
                data["sync_status"] = message.sync_status.value
        case Ack():
            data = {"config_version": message.config_version, "config_hash": message.config_hash}
        case Nack():
            errors = message.errors[:MAX_NACK_ERRORS]
            data = {
                "config_version": message.config_version,
                "config_hash": message.config_hash,
                "code": message.code.value,
                "message": _clip(message.message),
                "errors": [
                    {
                        "entity_type": _clip_optional(e.entity_type, 256),
                        "entity_id": _clip_optional(e.entity_id, 256),
                        "entity_name": _clip_optional(e.entity_name, 256),
                        "field": _clip_optional(e.field, 256),
                        "message": _clip(e.message),
                    }
                    for e in errors
                ],
                "omitted_errors": message.omitted_errors + len(message.errors) - len(errors),
            }
    return {"type": message.TYPE, **data}


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    """Shorten free text to *limit* characters: a long reason must not make a send fail."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip_optional(text: str | None, limit: int) -> str | None:
    return None if text is None else _clip(text, limit)


def encode_control(message: ControlMessage) -> str:
    """Encode one control message as the text of one frame (validated, see module doc)."""
    data = _to_wire(message)
    try:
        decode_object(data)
    except ProtocolError as exc:
        raise ProtocolError(
            f"refusing to send an invalid {message.TYPE}: {exc}", local=True, code=exc.code
        ) from exc
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if len(text) > MAX_CONTROL_MESSAGE:
        raise ProtocolError(
            f"{message.TYPE} is longer than {MAX_CONTROL_MESSAGE} characters",
            local=True,
            code="message_too_large",
        )
    return text


# ---------------------------------------------------------------------------------------
# Snapshot header


@attrs.frozen(kw_only=True)
class SnapshotHeader:
    """The JSON header of a snapshot frame."""

    config_version: int
    config_hash: str
    size: int


def split_snapshot_frame(frame: bytes) -> tuple[SnapshotHeader, memoryview]:
    """Split a snapshot frame (or its first bytes) into its validated header and payload."""
    end = frame.find(b"\n", 0, MAX_SNAPSHOT_HEADER + 1)
    if end < 0:
        _fail("snapshot: no header line in the first bytes of the frame", "invalid_snapshot")
    try:
        text = bytes(frame[:end]).decode("utf-8")
        data = parse_json_object(text, "snapshot header")
        if data.get("type") != "snapshot":
            _fail("snapshot header: type must be 'snapshot'")
        f = _Fields(data, "snapshot header")
        if f.text("encoding", default=_REQUIRED) != SNAPSHOT_ENCODING:
            _fail("snapshot header: unsupported encoding")
        header = SnapshotHeader(
            config_version=f.integer("config_version", low=1, high=MAX_CONFIG_VERSION),
            config_hash=f.config_hash("config_hash"),
            size=f.integer("size", low=0, high=MAX_CONFIG_VERSION),
        )
    except UnicodeDecodeError as exc:
        raise ProtocolError("snapshot header is not UTF-8", code="invalid_snapshot") from exc
    except ProtocolError as exc:
        raise ProtocolError(str(exc), code="invalid_snapshot") from exc
    return header, memoryview(frame)[end + 1 :]
