"""Cluster certificate material: start checks, expiry warnings, rotation without restart."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from certs import generate_cluster_certificate
from gateway._errors import ConfigError
from gateway._state import NodeState
from gateway.cluster._material import ClusterMaterial
from gateway.settings import load_settings


def _write_pair(directory: Path, *, days: int = 30, start: datetime | None = None) -> None:
    cert, key = generate_cluster_certificate(start or datetime.now(UTC), days=days)
    (directory / "cluster.crt").write_bytes(cert)
    fd = os.open(directory / "cluster.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)


def _settings(directory: Path, **extra: str) -> object:
    return load_settings(
        env={},
        overrides={
            "role": "control_plane",
            "prefix": str(directory / "prefix"),
            "cluster_cert": str(directory / "cluster.crt"),
            "cluster_cert_key": str(directory / "cluster.key"),
            **extra,
        },
    )


def test_rotation_installs_new_material_and_refuses_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_pair(tmp_path)
    material = ClusterMaterial(_settings(tmp_path))  # type: ignore[arg-type]
    first = material.current
    _write_pair(tmp_path)
    assert material.files_changed()
    assert material.reload() is True
    assert material.current is not first
    assert material.generation == 2
    second = material.current
    # Bad material: a key that does not match the certificate.
    cert, _ = generate_cluster_certificate(datetime.now(UTC))
    (tmp_path / "cluster.crt").write_bytes(cert)
    with caplog.at_level(logging.ERROR, logger="gateway.cluster"):
        assert material.reload() is False
    assert material.current is second
    assert "reload refused" in caplog.text
    assert material.last_reload_error


def test_expired_material_is_refused_at_start_and_on_reload(tmp_path: Path) -> None:
    _write_pair(tmp_path, days=1, start=datetime.now(UTC) - timedelta(days=3))
    # One loader for start and reload: ConfigError at start (the CLI prints "Error: ...").
    with pytest.raises(ConfigError, match="expired"):
        ClusterMaterial(_settings(tmp_path))  # type: ignore[arg-type]
    _write_pair(tmp_path)
    material = ClusterMaterial(_settings(tmp_path))  # type: ignore[arg-type]
    first = material.current
    _write_pair(tmp_path, days=1, start=datetime.now(UTC) - timedelta(days=3))
    report = material.reload_report()
    assert report["reloaded"] is False
    assert "expired" in report["error"]
    assert report["generation"] == 1
    assert material.current is first


def test_unchanged_material_is_not_swapped(tmp_path: Path) -> None:
    _write_pair(tmp_path)
    material = ClusterMaterial(_settings(tmp_path))  # type: ignore[arg-type]
    first = material.current
    assert material.reload() is False
    assert material.current is first


def test_expiry_warning_and_status(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_pair(tmp_path, days=10)
    state = NodeState(role="control_plane", node_id="n")
    with caplog.at_level(logging.WARNING, logger="gateway.cluster"):
        material = ClusterMaterial(
            _settings(tmp_path, cluster_cert_expiry_warning="30"),  # type: ignore[arg-type]
            state,
        )
    assert "expires on" in caplog.text
    assert state.cluster_cert_expiring_soon
    assert state.status_document()["cluster_certificate"]["expiring_soon"] is True
    assert material.check_expiry(datetime.now(UTC) - timedelta(days=365)) is False


async def test_file_watch_reloads(tmp_path: Path) -> None:
    _write_pair(tmp_path)
    material = ClusterMaterial(_settings(tmp_path))  # type: ignore[arg-type]
    first = material.current
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: material.watch(poll_interval=0.01, task_status=task_status)
        )
        _write_pair(tmp_path)
        # bump the mtime in case the filesystem clock is coarse
        os.utime(tmp_path / "cluster.crt", (1, 1))
        with trio.fail_after(5):
            while material.current is first:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert material.generation == 2
