"""The data plane's on-disk configuration cache.

Theory of operation: after every successful apply the DP writes the configuration it now
runs (the runtime config dict, its version and hash) to a file in
``data_plane_config_cache_path``, so a restart with the control plane unreachable comes back
serving the same configuration.

Modes (``data_plane_config_cache_mode``):

* ``unencrypted``: ``config.cache.json.gz``, gzip-compressed JSON (``zcat`` reads it),
  file mode 0600.
* ``encrypted``: ``.config.cache.enc``, the same bytes sealed with AES-256-GCM; the key is
  derived with HKDF-SHA256 from the DER of the cluster private key (``cluster_cert_key``),
  so only a node holding the cluster key can read the cache. A fresh 96-bit nonce per
  write; the header is bound as associated data.
* ``off``: nothing is written; an existing cache file is left alone but never read.

Writes are atomic (temp file in the same directory, fsync, rename, fsync of the directory).
A cache that fails to decrypt, decompress or parse is ignored with a logged error: the DP
then starts from ``declarative_config`` or empty, and never crashes because of the cache.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import secrets
import zlib
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger("gateway.cluster.cache")

#: File names by mode (the unencrypted one as in Kong's docs; ``zcat`` reads it).
CACHE_FILES = {"unencrypted": "config.cache.json.gz", "encrypted": ".config.cache.enc"}
_GZIP_MAGIC = b"\x1f\x8b"
_MAGIC_SEALED = b"GWC1E"
_HKDF_INFO = b"trio-gateway data plane config cache v1"
# A cache never legitimately exceeds the largest payload a CP may send; bound reads anyway.
_MAX_CACHE_BYTES = 512 * 1024 * 1024


class CacheError(Exception):
    """The cache exists but cannot be used (reason in the message)."""


@attrs.frozen(kw_only=True)
class CachedConfig:
    config: dict[str, Any]
    version: int
    hash: str


def derive_cache_key(private_key: PrivateKeyTypes) -> bytes:
    """AES-256 key from the cluster private key (HKDF-SHA256, fixed info string)."""
    der = private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(der)


class ConfigCache:
    """Reads and writes the cache file for one mode."""

    def __init__(self, directory: Path, mode: str, key: bytes | None = None) -> None:
        if mode not in ("unencrypted", "encrypted", "off"):
            raise ValueError(f"unknown cache mode {mode!r}")
        if mode == "encrypted" and key is None:
            raise ValueError("the encrypted cache needs a key")
        self.directory = directory
        self.mode = mode
        self._key = key

    @property
    def path(self) -> Path:
        return self.directory / CACHE_FILES.get(self.mode, CACHE_FILES["unencrypted"])

    def encode(self, cached: CachedConfig) -> bytes:
        doc = {"version": cached.version, "hash": cached.hash, "config": cached.config}
        packed = gzip.compress(
            json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(), mtime=0
        )
        if self.mode == "encrypted":
            assert self._key is not None
            nonce = secrets.token_bytes(12)
            sealed = AESGCM(self._key).encrypt(nonce, packed, _MAGIC_SEALED)
            return _MAGIC_SEALED + nonce + sealed
        return packed

    def decode(self, data: bytes) -> CachedConfig:
        if self.mode == "encrypted":
            if not data.startswith(_MAGIC_SEALED):
                raise CacheError("not an encrypted cache file (mode is 'encrypted')")
            assert self._key is not None
            nonce, sealed = data[5:17], data[17:]
            try:
                packed = AESGCM(self._key).decrypt(nonce, sealed, _MAGIC_SEALED)
            except Exception as exc:  # InvalidTag: wrong key or tampered file
                raise CacheError("cannot decrypt (another cluster key, or a damaged file)") from exc
        else:
            if not data.startswith(_GZIP_MAGIC):
                raise CacheError("not a gzip file (mode is 'unencrypted')")
            packed = data
        try:
            raw = _bounded_gunzip(packed, _MAX_CACHE_BYTES)
            doc = json.loads(raw)
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise CacheError(f"damaged cache content: {exc}") from exc
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("config"), dict)
            or not isinstance(doc.get("version"), int)
            or not isinstance(doc.get("hash"), str)
        ):
            raise CacheError("damaged cache content: unexpected structure")
        return CachedConfig(config=doc["config"], version=doc["version"], hash=doc["hash"])

    def load(self) -> CachedConfig | None:
        """The cached configuration, or None (absent, mode off, or unusable: logged)."""
        if self.mode == "off":
            return None
        try:
            with self.path.open("rb") as fh:
                data = fh.read(_MAX_CACHE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("config cache %s ignored: cannot read it: %s", self.path, exc)
            return None
        try:
            return self.decode(data)
        except CacheError as exc:
            log.error("config cache %s ignored: %s", self.path, exc)
            return None

    def rekey(self, key: bytes) -> None:
        """Use ``key`` from now on and re-encrypt the file in place (cluster key rotation:
        a restart with the new key must still read the cache). No-op unless encrypted."""
        if self.mode != "encrypted" or key == self._key:
            return
        cached = self.load()
        self._key = key
        if cached is not None:
            self.store(cached)
            log.info("config cache %s re-encrypted with the new cluster key", self.path)

    def store(self, cached: CachedConfig) -> None:
        """Write atomically (temp file, fsync, rename); mode 0600. No-op when off."""
        if self.mode == "off":
            return
        data = self.encode(cached)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _bounded_gunzip(data: bytes, limit: int) -> bytes:
    decomp = zlib.decompressobj(wbits=31)
    out = decomp.decompress(data, limit + 1)
    if len(out) > limit or decomp.unconsumed_tail:
        raise ValueError("cache content too large")
    if not decomp.eof:
        raise EOFError("truncated cache content")
    return out
