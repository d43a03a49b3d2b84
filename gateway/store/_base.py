"""The async half shared by both backends: each operation is one call into a worker thread
running one function of ``_engine`` inside one transaction; watchers of the version wait on
an in-process event (set by local writes and, on PostgreSQL, by notifications) and re-read
the version at least every ``poll_interval`` seconds."""

from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import trio

from gateway.schema import EntitySchema
from gateway.store import _engine
from gateway.store._api import DEFAULT_PAGE_SIZE, Change, Row, StoreSnapshot, TagsMode
from gateway.store._engine import Tx, Write

T = TypeVar("T")


class SQLStore(abc.ABC):
    """Implements ``Store`` on top of three transaction runners the backends provide."""

    poll_interval: float = 0.1

    def __init__(self, schemas: Mapping[str, EntitySchema]) -> None:
        self._model = _engine.build_model(schemas)
        self._changed = trio.Event()

    # -- what a backend provides ----------------------------------------------------------
    @abc.abstractmethod
    async def _read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a worker thread (one statement or a read-only transaction)."""

    @abc.abstractmethod
    async def _read_snapshot(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in one read transaction that sees a single consistent snapshot."""

    @abc.abstractmethod
    async def _transaction(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in one write transaction: committed if it returns, else rolled back."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections."""

    # -- plumbing -------------------------------------------------------------------------
    def _wake(self) -> None:
        """Wake every watcher (they re-read the version)."""
        self._changed.set()
        self._changed = trio.Event()

    async def _write(self, fn: Callable[[Write], T]) -> tuple[T, int | None]:
        model = self._model
        result, version = await self._transaction(lambda tx: _engine.run_write(tx, model, fn))
        if version is not None:
            self._wake()
        return result, version

    # -- entities -------------------------------------------------------------------------
    async def get(self, entity: str, id: str) -> Row | None:
        return await self._read(lambda tx: _engine.get(tx, self._model, entity, id))

    async def get_by(self, entity: str, field: str, value: Any) -> Row | None:
        return await self._read(lambda tx: _engine.get_by(tx, self._model, entity, field, value))

    async def page(
        self,
        entity: str,
        *,
        size: int = DEFAULT_PAGE_SIZE,
        offset: str | None = None,
        tags: Sequence[str] | None = None,
        tags_mode: TagsMode = "and",
        filters: Mapping[str, str] | None = None,
    ) -> tuple[list[Row], str | None]:
        def fn(tx: Tx) -> tuple[list[Row], str | None]:
            return _engine.page(
                tx,
                self._model,
                entity,
                size=size,
                offset=offset,
                tags=tags,
                tags_mode=tags_mode,
                filters=filters,
            )

        return await self._read(fn)

    async def count(self, entity: str) -> int:
        return await self._read(lambda tx: _engine.count(tx, self._model, entity))

    async def insert(self, entity: str, row: Row) -> Row:
        result, _ = await self._write(lambda w: _engine.insert(w, entity, row))
        return result

    async def update(self, entity: str, row: Row) -> Row:
        result, _ = await self._write(lambda w: _engine.update(w, entity, row))
        return result

    async def upsert(self, entity: str, row: Row) -> Row:
        result, _ = await self._write(lambda w: _engine.upsert(w, entity, row))
        return result

    async def delete(self, entity: str, id: str) -> bool:
        result, _ = await self._write(lambda w: _engine.delete(w, entity, id))
        return result

    async def replace_all(self, config: Mapping[str, Sequence[Row]]) -> int:
        def fn(w: Write) -> int:
            _engine.replace_all(w, config)
            return w.base

        base, version = await self._write(fn)
        return base if version is None else version

    async def export(self) -> tuple[int, dict[str, list[Row]]]:
        return await self._read_snapshot(lambda tx: _engine.export(tx, self._model))

    async def snapshot(self) -> StoreSnapshot:
        version, entities = await self.export()
        return StoreSnapshot(version=version, entities=entities)

    # -- versions -------------------------------------------------------------------------
    async def current_version(self) -> int:
        return await self._read(_engine.current_version)

    async def changes_since(self, version: int) -> list[Change]:
        return await self._read(lambda tx: _engine.changes_since(tx, version))

    async def wait_for_version(self, after: int, timeout: float) -> int:
        deadline = trio.current_time() + timeout
        while True:
            changed = self._changed  # taken before reading: a wake-up in between is kept
            version = await self.current_version()
            remaining = deadline - trio.current_time()
            if version > after or remaining <= 0:
                return version
            with trio.move_on_after(min(remaining, self.poll_interval)):
                await changed.wait()

    def watch(self, after_version: int) -> AsyncIterator[int]:
        return VersionWatch(self, after_version)

    # -- data planes ----------------------------------------------------------------------
    async def upsert_data_plane(self, row: Row) -> None:
        await self._transaction(lambda tx: _engine.upsert_data_plane(tx, row))

    async def get_data_plane(self, id: str) -> Row | None:
        return await self._read(lambda tx: _engine.get_data_plane(tx, id))

    async def page_data_planes(
        self, *, size: int = DEFAULT_PAGE_SIZE, offset: str | None = None
    ) -> tuple[list[Row], str | None]:
        return await self._read(lambda tx: _engine.page_data_planes(tx, size, offset))

    async def purge_data_planes(self, older_than: float) -> int:
        return await self._transaction(lambda tx: _engine.purge_data_planes(tx, older_than))


class VersionWatch:
    """``async for version in store.watch(v)``: an iterator, not an async generator, so
    leaving the loop early needs no ``aclose`` (nothing is left to finalize)."""

    def __init__(self, store: SQLStore, after_version: int) -> None:
        self._store = store
        self._last = after_version

    def __aiter__(self) -> VersionWatch:
        return self

    async def __anext__(self) -> int:
        version = await self._store.wait_for_version(self._last, math.inf)
        self._last = version
        return version
