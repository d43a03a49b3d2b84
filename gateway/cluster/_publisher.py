"""The control plane's config publisher: store changes -> one encoded snapshot per version.

Theory of operation
-------------------
One publisher per control plane node. It follows ``store.watch``, and for every version it
decides to publish it exports the store once, takes the runtime view (disabled services,
their routes and plugins are not synced), and encodes the snapshot once
(``encode_snapshot``: JSON, hash, gzip) in a worker thread. Every data plane session reads
:attr:`ConfigPublisher.current` and sends the very same ``bytes`` object, so N data planes
cost one export, not N (Kong exports once per worker).

Timing is Kong's ``db_update_frequency`` behaviour with our own window
(``cluster_sync_coalesce``, through :class:`protocol.sync.PushCoalescer`): the first change
after a quiet period is published at once, changes that follow within the window travel
together at its end.

Several control planes on one database each run their own publisher on the shared store,
so a write on any of them reaches the data planes of all of them. If the export fails
(database down), the last published snapshot stays current (new data planes still get it)
and the publisher retries on the next change or after a second.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from gateway._config_apply import count_entities
from gateway._state import NodeState
from gateway.declarative import runtime_view
from gateway.store import Store
from protocol.sync import EncodedSnapshot, PushCoalescer, encode_snapshot

__all__ = ["ConfigPublisher", "build_snapshot", "snapshot_version"]

log = logging.getLogger("gateway.cluster.publisher")

_RETRY_AFTER_FAILURE = 1.0


def build_snapshot(version: int, entities: dict[str, Any]) -> tuple[EncodedSnapshot, int]:
    """Runtime view + encoding of one exported version (CPU-bound: run it in a thread).

    The config version is the store's change-log version plus one: the empty database
    (store version 0) is config version 1, so that a data plane with an old cache still
    learns that the cluster is empty, and every control plane on the same database numbers
    the same content the same way.
    """
    config = runtime_view({"_format_version": "3.0", **entities})
    return encode_snapshot(config, snapshot_version(version)), count_entities(config)


def snapshot_version(store_version: int) -> int:
    """The config version data planes see for a store version."""
    return store_version + 1


class ConfigPublisher:
    """Holds the newest snapshot and wakes the sessions when it changes."""

    def __init__(
        self, store: Store, state: NodeState, *, coalesce: float, encode_in_thread: bool = True
    ) -> None:
        """``encode_in_thread=False`` encodes on the event loop (unit tests on virtual time,
        where a worker thread would let the clock jump past every deadline)."""
        self.store = store
        self._encode_in_thread = encode_in_thread
        self.state = state
        self.current: EncodedSnapshot | None = None
        self._coalescer = PushCoalescer(coalesce)
        self._changed = trio.Event()
        self._kick = trio.Event()
        self.sessions = 0  # connected data planes (for the push log line)
        self.published = 0  # how many versions were encoded (tests and benchmarks)

    async def wait_changed(self, seen: EncodedSnapshot | None) -> EncodedSnapshot | None:
        """Return :attr:`current` once it is not *seen*."""
        while self.current is seen:
            await self._changed.wait()
        return self.current

    async def publish_now(self) -> bool:
        """Export and encode the store's current version; False if nothing new or failed."""
        try:
            version, entities = await self.store.export()
        except Exception as exc:
            log.error("config export failed (keeping the last published version): %s", exc)
            self._coalescer.changed(trio.current_time() + _RETRY_AFTER_FAILURE)
            self._kick.set()
            return False
        current = self.current
        if current is not None and snapshot_version(version) <= current.config_version:
            return False
        try:
            if self._encode_in_thread:
                snapshot, entities_count = await trio.to_thread.run_sync(
                    build_snapshot, version, entities
                )
            else:
                snapshot, entities_count = build_snapshot(version, entities)
        except (ValueError, TypeError) as exc:
            log.error("config version %d cannot be encoded: %s", version, exc)
            return False
        if current is not None and snapshot.config_hash == current.config_hash:
            # Same content (for example only a disabled service changed): keep the bytes
            # the data planes already run, no push.
            return False
        self.current = snapshot
        self.published += 1
        self.state.config_applied(
            version=snapshot.config_version,
            config_hash=snapshot.config_hash,
            source="database",
            entities=entities_count,
        )
        log.info(
            "config version %d published (hash %s, %d bytes, %d compressed) to %d data plane(s)",
            snapshot.config_version,
            snapshot.config_hash,
            snapshot.size,
            snapshot.compressed_size,
            self.sessions,
        )
        self._changed.set()
        self._changed = trio.Event()
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish the current version, report started, then follow the store forever."""
        await self.publish_now()
        task_status.started()
        # The watcher only records changes; the pusher decides when to export.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch)
            await self._push_loop()

    async def _watch(self) -> None:
        after = 0 if self.current is None else self.current.config_version - 1
        while True:
            try:
                async for _ in self.store.watch(after):
                    self._coalescer.changed(trio.current_time())
                    self._kick.set()
            except Exception as exc:
                log.error("watching the store failed (retrying in 1 s): %s", exc)
                self._coalescer.changed(trio.current_time())
                self._kick.set()
                await trio.sleep(_RETRY_AFTER_FAILURE)

    async def _push_loop(self) -> None:
        while True:
            due = self._coalescer.due_at()
            if due is None:
                await self._kick.wait()
                self._kick = trio.Event()
                continue
            await trio.sleep_until(due)
            if not self._coalescer.take(trio.current_time()):
                continue
            try:
                await self.publish_now()
            except Exception:  # never let one bad version stop publishing
                log.exception("publishing the configuration failed")
