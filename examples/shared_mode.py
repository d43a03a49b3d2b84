"""Hybrid mode, shared certificate: one control plane (SQLite), one data plane.

Run it: ``python examples/shared_mode.py``. It generates the shared cluster certificate
(as ``python -m gateway hybrid gen_cert`` does), starts both nodes in this process through
the embedding API, configures a service and a route on the control plane's Admin API, shows
the data plane serving them, deletes the route, and stops.
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


def write_shared_certificate(directory: Path) -> dict[str, str]:
    cert_pem, key_pem = certs.generate_cluster_certificate(datetime.now(UTC))
    (directory / "cluster.crt").write_bytes(cert_pem)
    fd = os.open(directory / "cluster.key", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    return {
        "cluster_cert": str(directory / "cluster.crt"),
        "cluster_cert_key": str(directory / "cluster.key"),
    }


async def main(data_planes: int = 1) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        cluster = write_shared_certificate(directory)
        async with trio.open_nursery() as nursery:
            upstream = await nursery.start(serve_echo)
            cp, dps = await start_cluster(
                nursery, directory, cp=cluster, dps=[cluster] * data_planes
            )
            print(f"control plane Admin API: {cp.url('admin')}")
            for i, dp in enumerate(dps, 1):
                print(f"data plane {i} proxy:     {dp.url('proxy')}")
            await demo_traffic(cp.url("admin"), [dp.url("proxy") for dp in dps], upstream)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
