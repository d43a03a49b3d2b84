"""SQLite backend: stdlib ``sqlite3`` in WAL mode, one connection guarded by a lock, every
operation one ``trio.to_thread`` hop.

Writes run in ``BEGIN IMMEDIATE`` transactions: SQLite's write lock serializes them, also
against other processes using the same file (``busy_timeout`` makes them wait). Worker
threads are never abandoned on cancellation, so a write either commits or rolls back before
the cancelled caller continues. Watchers poll the version every ``poll_interval`` (writes by
other processes) and are woken at once by writes of this store.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from gateway.schema import EntityError, EntitySchema, ErrorCode
from gateway.store import _engine, _migrations
from gateway.store._base import SQLStore
from gateway.store._engine import Tx
from gateway.store._errors import StoreError

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000


class SQLiteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, params).rowcount

    def many(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, params)

    def lock_version(self) -> int:
        # BEGIN IMMEDIATE already holds the database's write lock.
        return _engine.current_version(self)

    def notify(self, version: int) -> None:
        pass


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (creating the directory) with the pragmas the store relies on."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: trio's thread cache runs successive calls on different
        # threads; the store's lock makes sure only one runs at a time.
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "busy_timeout=0",  # see with_retry
            "foreign_keys=ON",
        ):
            db.execute(f"PRAGMA {pragma}")
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open SQLite database {target}: {exc}") from exc
    return db


def in_transaction(db: sqlite3.Connection, fn: Callable[[SQLiteTx], T], begin: str) -> T:
    db.execute(begin)
    try:
        result = fn(SQLiteTx(db))
    except BaseException:
        if db.in_transaction:  # some errors (SQLITE_FULL, ...) already rolled back
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def with_retry(fn: Callable[[], T]) -> T:
    """Run one whole operation, retrying it while another process holds the write lock.

    NOTE: SQLite's own busy handler sleeps up to 100 ms between attempts, which made
    several processes writing at once crawl; an operation here is one transaction (or one
    statement), so it is retried as a whole with short sleeps instead (busy_timeout = 0).
    Pinned by test_several_processes_never_lose_or_duplicate_versions.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.0005
    while True:
        try:
            return fn()
        except sqlite3.IntegrityError as exc:
            raise EntityError(
                ErrorCode.DATABASE_ERROR, f"database error: {exc}", status=500
            ) from exc
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise StoreError(f"SQLite error: {exc}") from exc
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.01)


class SQLiteStore(SQLStore):
    poll_interval = 0.05

    def __init__(self, db: sqlite3.Connection, schemas: Mapping[str, EntitySchema]) -> None:
        super().__init__(schemas)
        self._db: sqlite3.Connection | None = db
        self._lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], schemas: Mapping[str, EntitySchema]
    ) -> SQLiteStore:
        """Open, bootstrapping the database or running pending migrations if needed."""

        def work() -> sqlite3.Connection:
            db = connect(path)
            try:
                in_transaction(db, _migrate, "BEGIN IMMEDIATE")
            except BaseException:
                db.close()
                raise
            return db

        db = await trio.to_thread.run_sync(lambda: with_retry(work))
        return cls(db, schemas)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            db = self._db
            if db is None:
                raise StoreError("the store is closed")
            return await trio.to_thread.run_sync(
                lambda: with_retry(lambda: fn(db)), limiter=self._limiter
            )

    async def _read(self, fn: Callable[[Tx], T]) -> T:
        return await self._call(lambda db: fn(SQLiteTx(db)))

    async def _read_snapshot(self, fn: Callable[[Tx], T]) -> T:
        return await self._call(lambda db: in_transaction(db, fn, "BEGIN"))

    async def _transaction(self, fn: Callable[[Tx], T]) -> T:
        return await self._call(lambda db: in_transaction(db, fn, "BEGIN IMMEDIATE"))

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            async with self._lock:
                db, self._db = self._db, None
                if db is not None:
                    await trio.to_thread.run_sync(db.close)


def _migrate(tx: SQLiteTx) -> None:
    if not _migrations.bootstrap(tx, "sqlite"):
        _migrations.up(tx, "sqlite")
