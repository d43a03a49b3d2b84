from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from settings_helpers import ClusterFiles

import certs


@pytest.fixture(scope="session")
def cluster_files(tmp_path_factory: pytest.TempPathFactory) -> ClusterFiles:
    directory = tmp_path_factory.mktemp("cluster")
    now = datetime.now(UTC)
    cert_pem, key_pem = certs.generate_cluster_certificate(now)
    pki = certs.build_dev_pki(now)
    other = certs.key_pem(certs.new_private_key())
    files = {
        "cluster.crt": cert_pem,
        "cluster.key": key_pem,
        "ca.crt": certs.cert_pem(pki.root.certificate),
        "dp.crt": pki.data_planes[0].cert_pem,
        "dp.key": pki.data_planes[0].key_pem,
        "other.key": other,
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)

    def path(name: str) -> str:
        return str(directory / name)

    return ClusterFiles(
        cert=path("cluster.crt"),
        key=path("cluster.key"),
        pki_ca=path("ca.crt"),
        pki_cert=path("dp.crt"),
        pki_key=path("dp.key"),
        cert_base64=base64.b64encode(cert_pem).decode(),
        key_inline=key_pem.decode(),
        other_key=path("other.key"),
    )


@pytest.fixture
def dp(cluster_files: ClusterFiles) -> dict[str, str]:
    """Overrides of a valid shared-mode data plane."""
    return {
        "role": "data_plane",
        "database": "off",
        "cluster_cert": cluster_files.cert,
        "cluster_cert_key": cluster_files.key,
    }


@pytest.fixture
def cp(cluster_files: ClusterFiles) -> dict[str, str]:
    """Overrides of a valid shared-mode control plane."""
    return {
        "role": "control_plane",
        "cluster_cert": cluster_files.cert,
        "cluster_cert_key": cluster_files.key,
    }


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative defaults (the prefix) land in a fresh directory."""
    monkeypatch.chdir(tmp_path)
