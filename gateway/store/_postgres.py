"""PostgreSQL backend: psycopg 3's synchronous API and a ``psycopg_pool.ConnectionPool``,
every operation one ``trio.to_thread`` hop (psycopg's async API is asyncio-only).

Theory of operation:

* Writers serialize on the row of ``config_version`` (``SELECT ... FOR UPDATE`` as the first
  statement of every write, see ``_engine``), so several control planes on one database
  allocate unique, gap-free versions and never lose a write.
* Cancellation: a worker thread cannot be interrupted, so when the caller is cancelled the
  store sends a server-side cancel (``cancel_safe``) to the connection running its query and
  waits for the thread; the transaction rolls back. ``statement_timeout`` (``pg_timeout``)
  bounds every statement as a backstop.
* Notifications: each write that bumps the version runs ``pg_notify(channel, version)``,
  delivered at commit. One listener task per store keeps a dedicated autocommit connection
  that ``LISTEN``s, waits for its socket with ``trio.lowlevel.wait_readable`` (no thread) and
  wakes the watchers, which re-read the version. After a reconnect it wakes them as well
  (a resync: notifications sent while disconnected are lost). Watchers also re-read the
  version every ``poll_interval`` seconds as a safety net.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import outcome
import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg.sql
import psycopg_pool
import trio

from gateway.schema import EntityError, EntitySchema, ErrorCode
from gateway.store import _migrations
from gateway.store._api import StoreSettings
from gateway.store._base import SQLStore
from gateway.store._engine import Tx
from gateway.store._errors import DatabaseNotReady, StoreError

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

log = logging.getLogger("gateway.store")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
BOOTSTRAP_HINT = "database needs bootstrapping; run 'python -m gateway migrations bootstrap'"
UP_HINT = "database has pending migrations; run 'python -m gateway migrations up'"


@lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresTx:
    def __init__(self, conn: Conn, channel: str) -> None:
        self._conn = conn
        self._channel = channel

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self._conn.execute(_pg(sql), params)
        return cur.fetchall() if cur.description is not None else []

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(_pg(sql), params).rowcount

    def many(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(_pg(sql), list(params))

    def lock_version(self) -> int:
        return int(self.rows("SELECT version FROM config_version WHERE id = 1 FOR UPDATE")[0][0])

    def notify(self, version: int) -> None:
        self.rows("SELECT pg_notify(?, ?)", (self._channel, str(version)))


def schema_name(settings: StoreSettings) -> str | None:
    schema = settings.pg_schema or None
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise StoreError(
            f"pg_schema: {schema!r} is not a plain lower-case identifier ([a-z_][a-z0-9_]*)"
        )
    return schema


def conninfo(settings: StoreSettings, *, application_name: str = "gateway") -> str:
    options = [f"-c statement_timeout={int(settings.pg_timeout)}"]
    schema = schema_name(settings)
    if schema is not None:
        options.append(f"-c search_path={schema}")
    params: dict[str, Any] = {
        "host": settings.pg_host,
        "port": settings.pg_port,
        "user": settings.pg_user,
        "dbname": settings.pg_database,
        "sslmode": "require" if settings.pg_ssl else "disable",
        "connect_timeout": max(1, math.ceil(settings.pg_timeout / 1000)),
        "application_name": application_name,
        "options": " ".join(options),
    }
    if settings.pg_password:
        params["password"] = settings.pg_password
    return psycopg.conninfo.make_conninfo(**params)


def channel_name(settings: StoreSettings) -> str:
    schema = schema_name(settings)
    return "gateway_config" if schema is None else f"gateway_config_{schema}"[:63]


def describe(settings: StoreSettings) -> str:
    where = f"{settings.pg_host}:{settings.pg_port}/{settings.pg_database}"
    schema = schema_name(settings)
    return where if schema is None else f"{where} (schema {schema})"


def connect(settings: StoreSettings, *, autocommit: bool = False) -> Conn:
    try:
        return psycopg.connect(conninfo(settings), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise StoreError(f"cannot connect to PostgreSQL at {describe(settings)}: {exc}") from exc


def translate(exc: psycopg.Error) -> Exception:
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return StoreError(f"PostgreSQL statement cancelled or timed out: {exc}")
    if isinstance(exc, psycopg.errors.IntegrityError):
        return EntityError(ErrorCode.DATABASE_ERROR, f"database error: {exc}", status=500)
    return StoreError(f"PostgreSQL error: {exc}")


class _Running:
    """The connection an operation runs on, for a server-side cancel from the trio side."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Conn | None = None

    def cancel(self) -> None:
        with self.lock:  # held: the connection cannot go back to the pool meanwhile
            if self.conn is not None:
                try:
                    self.conn.cancel_safe(timeout=5)
                except psycopg.Error:
                    pass


async def run_cancellable(fn: Callable[[_Running], T]) -> T:
    """Run ``fn`` in a worker thread; on cancellation, cancel its query on the server."""
    running = _Running()
    done = trio.Event()
    result: list[outcome.Outcome[T]] = []

    async def runner() -> None:
        result.append(await outcome.acapture(trio.to_thread.run_sync, fn, running))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        try:
            await done.wait()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(running.cancel)
            raise
    return result[0].unwrap()


class PostgresStore(SQLStore):
    poll_interval = 1.0  # safety net only: notifications wake watchers within milliseconds

    def __init__(
        self,
        settings: StoreSettings,
        pool: psycopg_pool.ConnectionPool[Conn],
        schemas: Mapping[str, EntitySchema],
    ) -> None:
        super().__init__(schemas)
        self._settings = settings
        self._pool = pool
        self._channel = channel_name(settings)

    @classmethod
    async def open(
        cls,
        nursery: trio.Nursery,
        settings: StoreSettings,
        schemas: Mapping[str, EntitySchema],
        *,
        max_connections: int = 8,
    ) -> PostgresStore:
        """Check the migrations, open the pool and start the listener in ``nursery``."""
        state = await trio.to_thread.run_sync(read_state, settings)
        if not state.bootstrapped:
            raise DatabaseNotReady(f"{BOOTSTRAP_HINT} ({describe(settings)})")
        if state.pending:
            raise DatabaseNotReady(f"{UP_HINT} (pending: {', '.join(state.pending)})")
        pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
            conninfo(settings),
            min_size=1,
            max_size=max_connections,
            open=False,
            timeout=max(1.0, settings.pg_timeout / 1000),
            name="gateway-store",
        )
        try:
            await trio.to_thread.run_sync(
                lambda: pool.open(wait=True, timeout=max(1.0, settings.pg_timeout / 1000))
            )
        except psycopg_pool.PoolTimeout as exc:
            await trio.to_thread.run_sync(pool.close)
            raise StoreError(f"cannot connect to PostgreSQL at {describe(settings)}") from exc
        store = cls(settings, pool, schemas)
        await nursery.start(store._listen)
        return store

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._pool.close)

    # -- transactions ---------------------------------------------------------------------
    async def _call(self, fn: Callable[[Conn], T]) -> T:
        pool = self._pool

        def work(running: _Running) -> T:
            try:
                with pool.connection() as conn:
                    with running.lock:
                        running.conn = conn
                    try:
                        return fn(conn)
                    finally:
                        with running.lock:
                            running.conn = None
            except psycopg.Error as exc:
                raise translate(exc) from exc
            except psycopg_pool.PoolTimeout as exc:
                raise StoreError(f"no PostgreSQL connection available: {exc}") from exc

        return await run_cancellable(work)

    async def _read(self, fn: Callable[[Tx], T]) -> T:
        channel = self._channel
        return await self._call(lambda conn: fn(PostgresTx(conn, channel)))

    async def _read_snapshot(self, fn: Callable[[Tx], T]) -> T:
        channel = self._channel

        def work(conn: Conn) -> T:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return fn(PostgresTx(conn, channel))

        return await self._call(work)

    async def _transaction(self, fn: Callable[[Tx], T]) -> T:
        # The pool's connection context commits when ``fn`` returns, rolls back if it raises.
        return await self._read(fn)

    # -- notifications --------------------------------------------------------------------
    async def _listen(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """LISTEN for new versions; reconnect with backoff; wake watchers on each event."""
        started = False
        backoff = 0.1
        listen = psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self._channel))
        settings = self._settings
        while True:
            conn: Conn | None = None
            try:
                conn = await trio.to_thread.run_sync(
                    lambda: psycopg.connect(
                        conninfo(settings, application_name="gateway-listen"), autocommit=True
                    )
                )
                await trio.to_thread.run_sync(conn.execute, listen)
                backoff = 0.1
                if not started:
                    started = True
                    task_status.started()
                self._wake()  # resync: anything sent while we were not listening is lost
                while True:
                    await trio.lowlevel.wait_readable(conn.fileno())
                    conn.pgconn.consume_input()  # non-blocking; raises when the link is gone
                    notified = False
                    while conn.pgconn.notifies() is not None:
                        notified = True
                    if notified:
                        self._wake()
            except (psycopg.Error, OSError) as exc:
                log.warning("PostgreSQL listener: %s; reconnecting in %.1f s", exc, backoff)
            finally:
                if conn is not None:
                    conn.close()
            if not started:
                started = True
                task_status.started()
            self._wake()
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


# -- migrations (used by open_store and the CLI) ----------------------------------------------


def read_state(settings: StoreSettings) -> _migrations.MigrationState:
    with connect(settings) as conn:
        return _migrations.read_state(PostgresTx(conn, ""), "postgres")


def _locked(conn: Conn) -> PostgresTx:
    # One migrator at a time (several control planes may start together).
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('gateway_migrations'))")
    return PostgresTx(conn, "")


def bootstrap(settings: StoreSettings) -> list[str]:
    schema = schema_name(settings)
    with connect(settings) as conn:
        tx = _locked(conn)
        if schema is not None:
            conn.execute(
                psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    psycopg.sql.Identifier(schema)
                )
            )
        return _migrations.bootstrap(tx, "postgres")


def up(settings: StoreSettings) -> list[str]:
    with connect(settings) as conn:
        tx = _locked(conn)
        if not _migrations.read_state(tx, "postgres").bootstrapped:
            raise DatabaseNotReady(BOOTSTRAP_HINT)
        return _migrations.up(tx, "postgres")


def reset(settings: StoreSettings) -> None:
    schema = schema_name(settings)
    with connect(settings) as conn:
        tx = _locked(conn)
        if schema is not None:
            conn.execute(
                psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    psycopg.sql.Identifier(schema)
                )
            )
        else:
            _migrations.drop_all(tx)
