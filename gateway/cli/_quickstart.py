"""``python -m gateway quickstart``: a local hybrid cluster in one command.

One control plane (SQLite) and two data planes, in one process through the embedding API
(``gateway.serve_node``), with a shared-mode cluster certificate generated on first use.
Everything lives under ``--dir`` (default ``./gateway-quickstart``), so a second run reuses
the database, the certificate and the data planes' caches. Kong's ports are used when they
are free (admin 8001, cluster 8005, telemetry 8006, proxies 8000 and 8010); a taken port is
replaced by a free one, and the banner says where everything listens.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

import certs
from gateway._build import hot_path_build
from gateway._errors import ConfigError
from gateway._logging import configure_logging
from gateway.settings import Settings, load_settings


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "quickstart",
        help="run a local hybrid cluster (1 control plane, 2 data planes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dir",
        default="gateway-quickstart",
        help="directory for the database, certificates and caches (default: %(default)s)",
    )
    p.add_argument("--data-planes", type=int, default=2, help="number of data planes (default: 2)")
    p.add_argument("--log-level", default="warn", help="log level (default: %(default)s)")
    p.set_defaults(func=_run)


def _free(port: int) -> int:
    """``port`` if nothing listens there on 127.0.0.1, else 0 (an ephemeral port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def ensure_cluster_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cluster.crt", directory / "cluster.key"
    if cert.exists() and key.exists():
        return cert, key
    directory.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = certs.generate_cluster_certificate(datetime.now(UTC))
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert.write_bytes(cert_pem)
    return cert, key


def cluster_settings(
    directory: Path, data_planes: int, log_level: str
) -> tuple[Settings, list[dict[str, str]]]:
    """The control plane's settings, and the data planes' overrides (minus the CP address)."""
    cert, key = ensure_cluster_certificate(directory)
    common = {
        "cluster_cert": str(cert),
        "cluster_cert_key": str(key),
        "log_level": log_level,
        "worker_processes": "1",
    }
    cp = load_settings(
        env={},
        overrides={
            **common,
            "role": "control_plane",
            "prefix": str(directory / "control-plane"),
            "admin_listen": f"127.0.0.1:{_free(8001)}",
            "cluster_listen": f"127.0.0.1:{_free(8005)}",
            "cluster_telemetry_listen": f"127.0.0.1:{_free(8006)}",
            "status_listen": "off",
        },
    )
    dps = []
    for i in range(data_planes):
        dps.append(
            {
                **common,
                "role": "data_plane",
                "database": "off",
                "prefix": str(directory / f"data-plane-{i + 1}"),
                "proxy_listen": f"127.0.0.1:{_free(8000 + 10 * i)}",
                "status_listen": f"127.0.0.1:{_free(8100 + 10 * i)}",
            }
        )
    return cp, dps


async def run_cluster(directory: Path, data_planes: int, log_level: str) -> None:
    from gateway._echo import serve_echo
    from gateway._node import NodeInfo, serve_node

    cp_settings, dp_overrides = cluster_settings(directory, data_planes, log_level)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        # One nursery holds the whole cluster; a signal cancels it and every node drains.
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_echo, "127.0.0.1", _free(9000))
            cp: NodeInfo = await nursery.start(serve_node, cp_settings)
            host, port = cp.first("cluster")
            dps: list[NodeInfo] = []
            for overrides in dp_overrides:
                settings = load_settings(
                    env={}, overrides={**overrides, "cluster_control_plane": f"{host}:{port}"}
                )
                dps.append(await nursery.start(serve_node, settings))
            print(_banner(directory, cp, dps, echo), flush=True)
            async for _ in signals:
                print("\nstopping the cluster...", flush=True)
                nursery.cancel_scope.cancel()
                break


def _banner(directory: Path, cp: Any, dps: list[Any], echo: tuple[str, int]) -> str:
    admin = cp.url("admin")
    lines = [
        "",
        "Local hybrid cluster is up (Ctrl-C stops it).",
        f"  files:          {directory.resolve()}",
        f"  control plane:  Admin API {admin}   cluster {cp.url('cluster', 'wss')}",
        f"  echo upstream:  http://{echo[0]}:{echo[1]} (answers with what it received)",
    ]
    for i, dp in enumerate(dps, 1):
        status = f"   status {dp.url('status')}" if "status" in dp.addresses else ""
        lines.append(f"  data plane {i}:   proxy {dp.url('proxy')}{status}")
    lines.append(f"  proxy hot path: {hot_path_build().describe()}")
    proxy = dps[0].url("proxy") if dps else "http://127.0.0.1:8000"
    lines += [
        "",
        "Try it:",
        f"  curl -s {admin}/clustering/data-planes",
        f"  curl -s -X POST {admin}/services -d name=example -d url=http://{echo[0]}:{echo[1]}",
        f"  curl -s -X POST {admin}/services/example/routes -d 'paths[]=/example'",
        f"  curl -s -i {proxy}/example/anything",
        "",
    ]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    from gateway.proxy import fair_scheduling  # (here: other commands skip the import)

    fair_scheduling()  # the data planes proxy: first come, first served, as `start` does
    try:
        trio.run(run_cluster, Path(args.dir), args.data_planes, args.log_level)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
