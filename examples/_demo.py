"""Shared pieces of the example scripts: HTTP calls and waiting, with the standard library.

The examples run every node inside one Trio program through the embedding API
(``gateway.serve_node``); each node gets its own prefix under a temporary directory and
ephemeral ports on 127.0.0.1.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from gateway.settings import Settings, load_settings


def settings(directory: Path, name: str, **overrides: str) -> Settings:
    return load_settings(
        env={},
        overrides={
            "prefix": str(directory / name),
            "log_level": "warn",
            "worker_processes": "1",
            **overrides,
        },
    )


def _call(method: str, url: str, data: dict[str, Any] | None) -> tuple[int, Any]:
    body = None
    headers = {}
    if data is not None:
        body = json.dumps(data).encode()
        headers["content-type"] = "application/json"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


async def http(method: str, url: str, data: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One HTTP request, off the Trio thread."""
    return await trio.to_thread.run_sync(_call, method, url, data)


async def wait_until(what: str, check: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll ``check`` (an async callable returning truthy) until it holds or time runs out."""
    with trio.move_on_after(timeout):
        while True:
            if await check():
                return
            await trio.sleep(0.05)
    raise SystemExit(f"timed out waiting for: {what}")


async def start_cluster(
    nursery: trio.Nursery,
    directory: Path,
    *,
    cp: dict[str, str],
    dps: list[dict[str, str]],
) -> tuple[Any, list[Any]]:
    """Start a control plane, then data planes pointed at its cluster listener."""
    from gateway import serve_node

    cp_info = await nursery.start(
        serve_node,
        settings(
            directory,
            "cp",
            role="control_plane",
            admin_listen="127.0.0.1:0",
            cluster_listen="127.0.0.1:0",
            cluster_telemetry_listen="127.0.0.1:0",
            **cp,
        ),
    )
    host, port = cp_info.first("cluster")
    dp_infos = []
    for i, overrides in enumerate(dps, 1):
        dp_infos.append(
            await nursery.start(
                serve_node,
                settings(
                    directory,
                    f"dp{i}",
                    role="data_plane",
                    database="off",
                    proxy_listen="127.0.0.1:0",
                    status_listen="127.0.0.1:0",
                    cluster_control_plane=f"{host}:{port}",
                    **overrides,
                ),
            )
        )
    return cp_info, dp_infos


async def demo_traffic(admin: str, proxies: list[str], upstream: tuple[str, int]) -> None:
    """Wait for every DP to connect, add a service and route, show every DP serving it."""

    async def all_connected() -> bool:
        _, body = await http("GET", f"{admin}/clustering/data-planes")
        rows = body["data"] if isinstance(body, dict) else []
        return len(rows) >= len(proxies) and all(r.get("connected", True) for r in rows)

    await wait_until("every data plane to connect", all_connected)
    url = f"http://{upstream[0]}:{upstream[1]}"
    await http("POST", f"{admin}/services", {"name": "echo", "url": url})
    await http("POST", f"{admin}/services/echo/routes", {"name": "echo", "paths": ["/echo"]})
    for proxy in proxies:

        async def served(proxy: str = proxy) -> bool:
            status, _ = await http("GET", f"{proxy}/echo/hello")
            return status == 200

        await wait_until(f"{proxy} to serve /echo", served)
        status, body = await http("GET", f"{proxy}/echo/hello")
        print(f"GET {proxy}/echo/hello -> {status}, upstream saw path {body['path']!r}")
    _, cp_status = await http("GET", f"{admin}/status")
    print(f"control plane config hash: {cp_status['configuration_hash']}")
    _, planes = await http("GET", f"{admin}/clustering/data-planes")
    for row in planes["data"]:
        print(
            f"data plane {row['id']}: connected={row.get('connected')} "
            f"sync_status={row['sync_status']} config_hash={row['config_hash']}"
        )
    await http("DELETE", f"{admin}/routes/echo")
    for proxy in proxies:

        async def gone(proxy: str = proxy) -> bool:
            status, _ = await http("GET", f"{proxy}/echo/hello")
            return status == 404

        await wait_until(f"{proxy} to drop /echo", gone)
    print("route deleted on the control plane: every data plane answers 404")
