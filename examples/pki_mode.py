"""Hybrid mode, PKI: a root CA, one intermediate CA, CP and DP certificates.

Run it: ``python examples/pki_mode.py``. The certificates come from the development PKI
builder (what ``python -m gateway pki`` writes): the CP certificate carries EKU serverAuth
and the SANs ``localhost`` / ``127.0.0.1``, each DP certificate EKU clientAuth; node
certificate files hold the leaf followed by the intermediate; both sides trust only the
root. The data plane checks the CP's SAN against ``cluster_server_name``.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import trio
from _demo import demo_traffic, start_cluster

import certs
from gateway._echo import serve_echo


def write(path: Path, data: bytes, mode: int = 0o644) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return str(path)


async def main(data_planes: int = 2) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        pki = certs.build_dev_pki(
            datetime.now(UTC),
            intermediates=1,
            dp_count=data_planes,
            cp_names=("localhost", "127.0.0.1"),
        )
        root = write(directory / "root-ca.crt", certs.cert_pem(pki.root.certificate))
        cp = {
            "cluster_mtls": "pki",
            "cluster_ca_cert": root,
            "cluster_cert": write(directory / "cp.crt", pki.control_plane.cert_pem),
            "cluster_cert_key": write(directory / "cp.key", pki.control_plane.key_pem, 0o600),
        }
        dps = [
            {
                "cluster_mtls": "pki",
                "cluster_ca_cert": root,
                "cluster_server_name": "localhost",
                "cluster_cert": write(directory / f"dp{i}.crt", dp.cert_pem),
                "cluster_cert_key": write(directory / f"dp{i}.key", dp.key_pem, 0o600),
            }
            for i, dp in enumerate(pki.data_planes, 1)
        ]
        async with trio.open_nursery() as nursery:
            upstream = await nursery.start(serve_echo)
            cp_info, dp_infos = await start_cluster(nursery, directory, cp=cp, dps=dps)
            print(f"control plane Admin API: {cp_info.url('admin')} (PKI, 1 intermediate)")
            await demo_traffic(cp_info.url("admin"), [dp.url("proxy") for dp in dp_infos], upstream)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
