from __future__ import annotations

import gzip
import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cluster._cache import CachedConfig, ConfigCache, derive_cache_key

CONFIG = {"_format_version": "3.0", "services": [{"id": "s1", "name": "a"}], "routes": []}


def _key() -> bytes:
    return derive_cache_key(ec.generate_private_key(ec.SECP384R1()))


@pytest.mark.parametrize("mode", ["unencrypted", "encrypted"])
def test_round_trip_and_file_mode(tmp_path: Path, mode: str) -> None:
    cache = ConfigCache(tmp_path, mode, _key() if mode == "encrypted" else None)
    cache.store(CachedConfig(config=CONFIG, version=7, hash="h" * 32))
    loaded = cache.load()
    assert loaded == CachedConfig(config=CONFIG, version=7, hash="h" * 32)
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_encrypted_cache_is_not_readable_without_the_key(tmp_path: Path) -> None:
    ConfigCache(tmp_path, "encrypted", _key()).store(
        CachedConfig(config=CONFIG, version=1, hash="x" * 32)
    )
    raw = (tmp_path / ".config.cache.enc").read_bytes()
    assert b"services" not in raw
    assert ConfigCache(tmp_path, "encrypted", _key()).load() is None


def test_unencrypted_cache_is_gzip_json(tmp_path: Path) -> None:
    ConfigCache(tmp_path, "unencrypted").store(CachedConfig(config=CONFIG, version=1, hash="x"))
    raw = (tmp_path / "config.cache.json.gz").read_bytes()
    assert b'"services"' in gzip.decompress(raw)


def test_off_writes_and_reads_nothing(tmp_path: Path) -> None:
    ConfigCache(tmp_path, "unencrypted").store(CachedConfig(config=CONFIG, version=1, hash="x"))
    off = ConfigCache(tmp_path, "off")
    assert off.load() is None
    off.store(CachedConfig(config={}, version=2, hash="y"))
    assert ConfigCache(tmp_path, "unencrypted").load() is not None


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[:-3] + b"xyz",  # tampered tail
        lambda b: b"garbage",
        lambda b: b"",
    ],
)
@pytest.mark.parametrize("mode", ["unencrypted", "encrypted"])
def test_damaged_cache_is_ignored_with_an_error(
    tmp_path: Path, mode: str, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    key = _key()
    cache = ConfigCache(tmp_path, mode, key if mode == "encrypted" else None)
    cache.store(CachedConfig(config=CONFIG, version=1, hash="x"))
    assert callable(damage)
    cache.path.write_bytes(damage(cache.path.read_bytes()))
    with caplog.at_level(logging.ERROR, logger="gateway.cluster.cache"):
        assert cache.load() is None
    assert "ignored" in caplog.text


def test_wrong_content_is_refused(tmp_path: Path) -> None:
    ConfigCache(tmp_path, "unencrypted").store(CachedConfig(config=CONFIG, version=1, hash="x"))
    sealed = ConfigCache(tmp_path, "encrypted", _key())
    sealed.path.write_bytes((tmp_path / "config.cache.json.gz").read_bytes())
    assert sealed.load() is None


def test_gzip_bomb_is_refused(tmp_path: Path) -> None:
    cache = ConfigCache(tmp_path, "unencrypted")
    import gateway.cluster._cache as mod

    bomb = gzip.compress(b"{" + b" " * (2 * 1024 * 1024))
    old = mod._MAX_CACHE_BYTES
    mod._MAX_CACHE_BYTES = 1024 * 1024
    try:
        cache.path.write_bytes(bomb)
        assert cache.load() is None
    finally:
        mod._MAX_CACHE_BYTES = old
