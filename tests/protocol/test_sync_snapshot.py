"""encode_snapshot, the snapshot frame, bounded gunzip (gzip bombs), max_frame_size."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from sync_link import make_config

from protocol import ProtocolError, config_hash
from protocol.sync import (
    DEFAULT_MAX_PAYLOAD,
    EncodedSnapshot,
    encode_snapshot,
    gunzip_bounded,
    gzip_compress,
    max_frame_size,
)


def test_encode_snapshot_builds_one_frame() -> None:
    config = make_config(routes=3, plugins=("key-auth", "cors", "key-auth"))
    snapshot = encode_snapshot(config, 7)
    assert snapshot.config_version == 7
    assert snapshot.config_hash == config_hash(config)
    assert snapshot.configured_plugins == frozenset({"key-auth", "cors"})
    header_line, _, payload = snapshot.frame.partition(b"\n")
    header = json.loads(header_line)
    assert header == {
        "type": "snapshot",
        "config_version": 7,
        "config_hash": snapshot.config_hash,
        "encoding": "gzip",
        "size": snapshot.size,
    }
    body = gzip.decompress(payload)
    assert len(body) == snapshot.size
    assert json.loads(body) == config
    assert snapshot.compressed_size == len(snapshot.frame)
    assert "frame" not in repr(snapshot)


def test_encoding_is_deterministic() -> None:
    config = make_config(routes=5)
    assert encode_snapshot(config, 1).frame == encode_snapshot(config, 1).frame


def test_encode_snapshot_rejects_bad_versions_and_values() -> None:
    for version in (0, -1, True):
        with pytest.raises(ValueError, match="version"):
            encode_snapshot({}, version)
    with pytest.raises(ValueError, match="JSON"):
        encode_snapshot({"services": [{"id": "a", "w": float("inf")}]}, 1)


def test_non_ascii_and_lone_surrogates_encode() -> None:
    snapshot = encode_snapshot({"services": [{"id": "a", "name": "caf\u00e9 \ud800"}]}, 1)
    assert isinstance(snapshot, EncodedSnapshot)


def test_gunzip_roundtrip_and_exact_limit() -> None:
    data = b"x" * 1000
    assert gunzip_bounded(gzip_compress(data), limit=1000) == data
    with pytest.raises(ProtocolError) as info:
        gunzip_bounded(gzip_compress(data), limit=999)
    assert info.value.code == "payload_too_large"
    assert not info.value.local


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    # 16 MiB of zeros compresses to ~16 KiB; the limit stops it after 1 MiB + 1 byte.
    bomb = gzip_compress(bytes(16 * 1024 * 1024), level=9)
    assert len(bomb) < 100_000
    with pytest.raises(ProtocolError) as info:
        gunzip_bounded(bomb, limit=1024 * 1024)
    assert info.value.code == "payload_too_large"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not gzip at all", id="garbage"),
        pytest.param(gzip_compress(b"hello")[:-5], id="truncated"),
        pytest.param(gzip_compress(b"hello") + b"extra", id="trailing-bytes"),
        pytest.param(gzip_compress(b"a") + gzip_compress(b"b"), id="two-members"),
        pytest.param(zlib.compress(b"hello"), id="zlib-not-gzip"),
        pytest.param(gzip_compress(b"hello")[:-8] + b"\0" * 8, id="bad-crc"),
    ],
)
def test_invalid_gzip(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        gunzip_bounded(data, limit=1000)
    assert info.value.code == "invalid_payload"


def test_max_frame_size_covers_incompressible_payloads() -> None:
    import os

    raw = os.urandom(256 * 1024)
    frame = b"h" * 200 + b"\n" + gzip_compress(raw)
    assert len(frame) <= max_frame_size(len(raw))
    assert max_frame_size(DEFAULT_MAX_PAYLOAD) < DEFAULT_MAX_PAYLOAD * 1.01
