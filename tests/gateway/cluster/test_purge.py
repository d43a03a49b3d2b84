"""Rows of data planes not seen for ``cluster_data_plane_purge_delay`` are removed."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import trio

from gateway.cluster._control_plane import ControlPlane
from gateway.schema.entities import ENTITIES
from gateway.settings import load_settings
from gateway.store import open_store


async def test_purge_loop_removes_only_rows_older_than_the_delay(tmp_path: Path) -> None:
    settings = load_settings(
        env={},
        overrides={"prefix": str(tmp_path), "cluster_data_plane_purge_delay": "60"},
        check_files=False,
    )
    now = time.time()
    stale, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    async with open_store(settings, ENTITIES) as store:
        for dp_id, seen in ((stale, now - 61), (fresh, now - 30)):
            await store.upsert_data_plane(
                {"id": dp_id, "hostname": "h", "ip": "127.0.0.1", "last_seen": seen}
            )
        plane = SimpleNamespace(settings=settings, store=store)
        async with trio.open_nursery() as nursery:
            # The loop purges at once, then every min(60 s, delay / 4).
            nursery.start_soon(ControlPlane.purge_loop, plane)
            with trio.fail_after(10):
                while await store.get_data_plane(stale) is not None:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert await store.get_data_plane(fresh) is not None
