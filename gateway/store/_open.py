"""Choosing a backend from the settings, and the migration commands."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from gateway.schema import EntitySchema
from gateway.store import _migrations, _sqlite
from gateway.store._api import Store, StoreSettings
from gateway.store._errors import StoreError
from gateway.store._migrations import MigrationState

_MigrationFn = Callable[[_migrations.Executor, _migrations.Backend], list[str]]


def _pg() -> Any:
    """The PostgreSQL backend, imported on first use (psycopg costs ~0.5 s to import, and
    SQLite nodes and every CLI command should not pay it)."""
    from gateway.store import _postgres

    return _postgres


def sqlite_path(settings: StoreSettings) -> Path:
    """``sqlite_path``, or ``<prefix>/gateway.db`` when it is unset."""
    if settings.sqlite_path:
        return Path(os.fspath(settings.sqlite_path))
    return Path(os.fspath(settings.prefix)) / "gateway.db"


def _backend(settings: StoreSettings) -> _migrations.Backend:
    if settings.database == "sqlite":
        return "sqlite"
    if settings.database == "postgres":
        return "postgres"
    raise StoreError(f"database = {settings.database}: there is no database to use")


@asynccontextmanager
async def open_store(
    settings: StoreSettings, schemas: Mapping[str, EntitySchema]
) -> AsyncIterator[Store]:
    """Open the store ``settings.database`` names; closed when the block exits.

    SQLite bootstraps itself (and runs pending migrations) on first open. PostgreSQL must
    have been bootstrapped (``python -m gateway migrations bootstrap``): ``DatabaseNotReady``
    says so otherwise. The PostgreSQL store runs its notification listener in a nursery
    owned by this context manager.
    """
    if _backend(settings) == "sqlite":
        store = await _sqlite.SQLiteStore.open(sqlite_path(settings), schemas)
        try:
            yield store
        finally:
            await store.aclose()
        return
    try:
        # The nursery runs the store's LISTEN task beside the caller's block.
        async with trio.open_nursery() as nursery:
            pg = await _pg().PostgresStore.open(nursery, settings, schemas)
            try:
                yield pg
            finally:
                nursery.cancel_scope.cancel()
                await pg.aclose()
    except BaseExceptionGroup as group:
        # The listener never raises: a lone exception is the caller's (or open's) own.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise


# -- migrations -------------------------------------------------------------------------------


async def migration_state(settings: StoreSettings) -> MigrationState:
    """Which migrations ran and which are pending."""
    if _backend(settings) == "postgres":
        return await trio.to_thread.run_sync(_pg().read_state, settings)

    def work() -> MigrationState:
        path = sqlite_path(settings)
        if not path.exists():
            return _migrations.read_state(_NoTables(), "sqlite")
        db = _sqlite.connect(path)
        try:
            return _migrations.read_state(_sqlite.SQLiteTx(db), "sqlite")
        finally:
            db.close()

    return await trio.to_thread.run_sync(_sqlite.with_retry, work)


async def bootstrap(settings: StoreSettings) -> list[str]:
    """Create the tables; the migrations that ran ([] if it was bootstrapped already)."""
    if _backend(settings) == "postgres":
        return await trio.to_thread.run_sync(_pg().bootstrap, settings)
    return await _sqlite_migrate(settings, _migrations.bootstrap)


async def migrate_up(settings: StoreSettings) -> list[str]:
    """Run the pending migrations; the ones that ran."""
    if _backend(settings) == "postgres":
        return await trio.to_thread.run_sync(_pg().up, settings)
    return await _sqlite_migrate(settings, _up_or_bootstrap)


async def reset(settings: StoreSettings) -> None:
    """Drop every table of the store (PostgreSQL with ``pg_schema``: the whole schema)."""
    if _backend(settings) == "postgres":
        await trio.to_thread.run_sync(_pg().reset, settings)
        return

    def drop(ex: _migrations.Executor, backend: _migrations.Backend) -> list[str]:
        _migrations.drop_all(ex)
        return []

    await _sqlite_migrate(settings, drop)


def _up_or_bootstrap(ex: _migrations.Executor, backend: _migrations.Backend) -> list[str]:
    return _migrations.bootstrap(ex, backend) or _migrations.up(ex, backend)


async def _sqlite_migrate(
    settings: StoreSettings,
    fn: _MigrationFn,
) -> list[str]:
    def work() -> list[str]:
        db = _sqlite.connect(sqlite_path(settings))
        try:
            return _sqlite.with_retry(
                lambda: _sqlite.in_transaction(db, lambda tx: fn(tx, "sqlite"), "BEGIN IMMEDIATE")
            )
        finally:
            db.close()

    return await trio.to_thread.run_sync(work)


class _NoTables:
    def rows(self, sql: str, params: object = ()) -> list[tuple[object, ...]]:
        return []

    def run(self, sql: str, params: object = ()) -> int:
        return 0
