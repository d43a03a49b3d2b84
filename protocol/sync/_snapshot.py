"""Snapshots: one export, one JSON encoding and one compression per config version.

A snapshot travels as one binary websocket message::

    <header: compact JSON object, UTF-8, at most MAX_SNAPSHOT_HEADER bytes> "\\n" <gzip stream>

Compact JSON never contains a raw newline, so the first ``\\n`` ends the header. The header
says what the payload is (version, hash, uncompressed size) so that a data plane can refuse
an oversized or unwanted snapshot *before* decompressing anything. The whole frame is built
once by :func:`encode_snapshot` and every session sends the very same ``bytes`` object.

Bounds: ``cluster_max_payload`` limits the *uncompressed* JSON configuration (what costs
memory and CPU on the data plane; a compressed bound would let a 16 MiB frame inflate to
gigabytes). The decompressor stops one byte past the limit, so a gzip bomb costs at most
``limit + 1`` bytes of memory.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping
from typing import Any, Final

import attrs

from protocol._errors import ProtocolError
from protocol._hash import config_hash

__all__ = [
    "SNAPSHOT_ENCODING",
    "EncodedSnapshot",
    "encode_snapshot",
    "gunzip_bounded",
    "gzip_compress",
]

SNAPSHOT_ENCODING: Final = "gzip"
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS  # gzip wrapper only, not raw deflate or zlib


def gzip_compress(data: bytes, *, level: int = 6) -> bytes:
    """Gzip *data* deterministically (mtime 0, no file name): same input, same bytes."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def gunzip_bounded(data: bytes | bytearray | memoryview, *, limit: int) -> bytes:
    """Decompress exactly one gzip member of at most *limit* bytes.

    Raises ``ProtocolError`` with code ``payload_too_large`` past the limit (after
    producing at most ``limit + 1`` bytes), ``invalid_payload`` for anything that is not
    exactly one complete gzip member (bad header or CRC, truncation, trailing bytes).
    """
    decompressor = zlib.decompressobj(_GZIP_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"invalid gzip data: {exc}", code="invalid_payload") from exc
    if len(out) > limit:
        raise ProtocolError(
            f"decompressed payload exceeds the limit of {limit} bytes", code="payload_too_large"
        )
    if not decompressor.eof:
        raise ProtocolError("truncated gzip data", code="invalid_payload")
    if decompressor.unused_data:
        raise ProtocolError("trailing data after the gzip stream", code="invalid_payload")
    return out


def _configured_plugins(config: Mapping[str, Any]) -> frozenset[str]:
    plugins = config.get("plugins") or ()
    return frozenset(
        p["name"] for p in plugins if isinstance(p, Mapping) and isinstance(p.get("name"), str)
    )


@attrs.frozen(kw_only=True)
class EncodedSnapshot:
    """A config version ready to send: build once, share between every session."""

    config_version: int
    config_hash: str
    #: Size of the uncompressed JSON configuration (what ``cluster_max_payload`` bounds).
    size: int
    #: Names of the plugins the configuration uses (for the compatibility check).
    configured_plugins: frozenset[str]
    #: The complete binary websocket message (header, newline, gzip stream).
    frame: bytes = attrs.field(repr=False)

    @property
    def compressed_size(self) -> int:
        return len(self.frame)


def snapshot_header(*, config_version: int, config_hash: str, size: int) -> bytes:
    header = {
        "type": "snapshot",
        "config_version": config_version,
        "config_hash": config_hash,
        "encoding": SNAPSHOT_ENCODING,
        "size": size,
    }
    return json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def encode_snapshot(
    config: Mapping[str, Any], version: int, *, compress_level: int = 6
) -> EncodedSnapshot:
    """Encode, hash and compress *config* as config *version* (an integer >= 1).

    The JSON body is ASCII-escaped (``ensure_ascii``), like the hash's canonical form, so
    every string a store can hold encodes. Raises ``ValueError``/``TypeError`` for a
    config that is not JSON-serialisable, ``ValueError`` for a version below 1.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"config version must be an integer >= 1, not {version!r}")
    body = json.dumps(config, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    raw = body.encode("ascii")
    digest = config_hash(config)
    header = snapshot_header(config_version=version, config_hash=digest, size=len(raw))
    return EncodedSnapshot(
        config_version=version,
        config_hash=digest,
        size=len(raw),
        configured_plugins=_configured_plugins(config),
        frame=header + b"\n" + gzip_compress(raw, level=compress_level),
    )
