"""A real control plane and a real data plane in one Trio run (no subprocesses).

The interesting case: a configuration the control plane stores but the data plane refuses.
It is produced honestly by writing a row straight into the database, bypassing the Admin
API's validation, as a newer control plane version or a hand-edited database would.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import trio
from cluster_support import poll, settings, write_shared_cert
from test_data_plane_scripted import http_get, valid_config

from gateway._node import open_node_store
from gateway.cluster._control_plane import serve_control_plane
from gateway.cluster._data_plane import serve_data_plane
from gateway.store import Store


async def dp_row(store: Store) -> dict[str, Any]:
    page, _ = await store.page_data_planes()
    return page[0] if page else {}


async def test_refused_config_is_nacked_shown_at_the_cp_and_old_config_kept(
    tmp_path: Path,
) -> None:
    cert, key = write_shared_cert(tmp_path)
    cp_settings = settings(tmp_path, "control_plane", cert, key, cluster_sync_coalesce=0)
    config = valid_config("/e2e")
    async with open_node_store(cp_settings) as store:
        await store.insert("services", config["services"][0])
        await store.insert("routes", config["routes"][0])
    async with trio.open_nursery() as nursery:
        cp = await nursery.start(serve_control_plane, cp_settings)
        dp_settings = settings(
            tmp_path,
            "data_plane",
            cert,
            key,
            cluster_control_plane=f"127.0.0.1:{cp.first('cluster')[1]}",
            status_listen="127.0.0.1:0",
        )
        dp = await nursery.start(serve_data_plane, dp_settings)
        proxy_port, status_port = dp.first("proxy")[1], dp.first("status")[1]
        async with open_node_store(cp_settings) as store:
            # Two writes: store version 2, config version 3 (the empty database is 1).
            async def synced() -> dict[str, Any] | None:
                row = await dp_row(store)
                return row if row.get("config_version") == 3 else None

            good = await poll(synced)
            assert good["sync_status"] == "normal"
            assert (await http_get(proxy_port, "/e2e"))[0] == 502  # routed; upstream down

            bad = copy.deepcopy(config["routes"][0])
            bad |= {"id": str(uuid.uuid4()), "name": "bad", "paths": ["no-leading-slash"]}
            await store.insert("routes", bad)

            async def rejected() -> dict[str, Any] | None:
                row = await dp_row(store)
                return row if row.get("sync_status") == "config_rejected" else None

            row = await poll(rejected)
            assert "invalid_config" in row["last_error"]
            detail = row["last_error_details"][0]
            assert (detail["entity_type"], detail["entity_id"]) == ("route", bad["id"])
            assert detail["field"].startswith("paths")
            assert row["config_version"] == 3  # still running the old one
            status, doc = await http_get(status_port, "/status")
            assert status == 200
            assert isinstance(doc, dict)
            assert doc["configuration"]["version"] == 3
            assert (await http_get(proxy_port, "/e2e"))[0] == 502

            # Fixing the database makes the next version flow again.
            await store.delete("routes", bad["id"])

            async def recovered() -> dict[str, Any] | None:
                row = await dp_row(store)
                return row if row.get("config_version") == 5 else None

            row = await poll(recovered)
            assert row["sync_status"] == "normal"
            assert row["last_error"]  # kept as history
        nursery.cancel_scope.cancel()
