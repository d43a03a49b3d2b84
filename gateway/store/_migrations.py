"""Schema migrations of both backends.

Each migration has a name (executed in name order) and its statements per backend. The table
``schema_migrations`` records the executed ones; it is created by ``bootstrap`` (PostgreSQL,
run by ``python -m gateway migrations bootstrap``) or on first open (SQLite).
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol

import attrs

from gateway.store._engine import TABLES

Backend = Literal["sqlite", "postgres"]


@attrs.frozen(kw_only=True)
class Migration:
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, backend: Backend) -> tuple[str, ...]:
        return self.sqlite if backend == "sqlite" else self.postgres


@attrs.frozen(kw_only=True)
class MigrationState:
    bootstrapped: bool
    executed: tuple[str, ...]
    pending: tuple[str, ...]


def _base(big: str, real: str) -> tuple[str, ...]:
    return (
        f"CREATE TABLE config_version (id INTEGER PRIMARY KEY CHECK (id = 1),"
        f" version {big} NOT NULL)",
        "INSERT INTO config_version (id, version) VALUES (1, 0)",
        f"CREATE TABLE config_changes (version {big} NOT NULL, seq INTEGER NOT NULL,"
        " entity TEXT NOT NULL, id TEXT NOT NULL, op TEXT NOT NULL,"
        " PRIMARY KEY (version, seq))",
        "CREATE TABLE entities (entity TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL,"
        " PRIMARY KEY (entity, id))",
        "CREATE TABLE entity_keys (entity TEXT NOT NULL, field TEXT NOT NULL,"
        " value TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (entity, field, value),"
        " FOREIGN KEY (entity, id) REFERENCES entities (entity, id) ON DELETE CASCADE)",
        "CREATE INDEX entity_keys_owner ON entity_keys (entity, id)",
        "CREATE TABLE entity_refs (entity TEXT NOT NULL, id TEXT NOT NULL,"
        " field TEXT NOT NULL, ref_entity TEXT NOT NULL, ref_id TEXT NOT NULL,"
        " PRIMARY KEY (entity, id, field),"
        " FOREIGN KEY (entity, id) REFERENCES entities (entity, id) ON DELETE CASCADE,"
        " FOREIGN KEY (ref_entity, ref_id) REFERENCES entities (entity, id))",
        "CREATE INDEX entity_refs_target ON entity_refs (ref_entity, ref_id)",
        "CREATE INDEX entity_refs_filter ON entity_refs (entity, field, ref_id)",
        "CREATE TABLE entity_tags (entity TEXT NOT NULL, id TEXT NOT NULL, tag TEXT NOT NULL,"
        " PRIMARY KEY (entity, tag, id),"
        " FOREIGN KEY (entity, id) REFERENCES entities (entity, id) ON DELETE CASCADE)",
        "CREATE INDEX entity_tags_owner ON entity_tags (entity, id)",
        f"CREATE TABLE clustering_data_planes (id TEXT PRIMARY KEY,"
        f" last_seen {real} NOT NULL, data TEXT NOT NULL)",
        "CREATE INDEX clustering_data_planes_last_seen ON clustering_data_planes (last_seen)",
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        name="000_base",
        sqlite=_base("INTEGER", "REAL"),
        postgres=_base("BIGINT", "DOUBLE PRECISION"),
    ),
)


class Executor(Protocol):
    def rows(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]: ...
    def run(self, sql: str, params: Any = ()) -> int: ...


def _has_table(ex: Executor, backend: Backend) -> bool:
    if backend == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    else:
        sql = "SELECT 1 WHERE to_regclass('schema_migrations') IS NOT NULL"
    return bool(ex.rows(sql))


def read_state(ex: Executor, backend: Backend) -> MigrationState:
    if not _has_table(ex, backend):
        return MigrationState(
            bootstrapped=False, executed=(), pending=tuple(m.name for m in MIGRATIONS)
        )
    done = {name for (name,) in ex.rows("SELECT name FROM schema_migrations")}
    return MigrationState(
        bootstrapped=True,
        executed=tuple(m.name for m in MIGRATIONS if m.name in done),
        pending=tuple(m.name for m in MIGRATIONS if m.name not in done),
    )


def bootstrap(ex: Executor, backend: Backend) -> list[str]:
    """Create the migrations table and run every migration; [] if already bootstrapped."""
    if _has_table(ex, backend):
        return []
    real = "REAL" if backend == "sqlite" else "DOUBLE PRECISION"
    ex.run(f"CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, executed_at {real} NOT NULL)")
    return up(ex, backend)


def up(ex: Executor, backend: Backend) -> list[str]:
    """Run the pending migrations; the names that ran."""
    state = read_state(ex, backend)
    if not state.bootstrapped:
        raise RuntimeError("database not bootstrapped")
    ran: list[str] = []
    for migration in MIGRATIONS:
        if migration.name not in state.pending:
            continue
        for statement in migration.statements(backend):
            ex.run(statement)
        ex.run(
            "INSERT INTO schema_migrations (name, executed_at) VALUES (?, ?)",
            (migration.name, time.time()),
        )
        ran.append(migration.name)
    return ran


def drop_all(ex: Executor) -> None:
    """Drop every table of the store (reverse creation order)."""
    for table in reversed(TABLES):
        ex.run(f"DROP TABLE IF EXISTS {table}")
