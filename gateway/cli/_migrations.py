"""``python -m gateway migrations bootstrap|up|list|reset [--yes]`` (as ``kong migrations``).

SQLite bootstraps itself when a node opens it; PostgreSQL must be bootstrapped once before
any node starts, and ``up`` run after an upgrade that brings new migrations.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from gateway._errors import ConfigError
from gateway.settings import Settings, add_settings_arguments, settings_from_args
from gateway.store import (
    StoreError,
    bootstrap,
    migrate_up,
    migration_state,
    reset,
    sqlite_path,
)

# Exit codes of ``list`` (as ``kong migrations list``): 3 needs bootstrap, 5 has new migrations.
EXIT_NEEDS_BOOTSTRAP = 3
EXIT_PENDING = 5


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "migrations",
        help="bootstrap, upgrade, list or reset the database",
        description="Manage the database schema. bootstrap: create it (PostgreSQL needs this "
        "once; SQLite does it on first start). up: run pending migrations. list: show "
        "executed and pending migrations (exit 3: needs bootstrap, 5: pending). reset: drop "
        "every table (asks for --yes).",
    )
    p.add_argument("action", choices=("bootstrap", "up", "list", "reset"))
    p.add_argument("--yes", "-y", action="store_true", help="confirm reset (drops all data)")
    add_settings_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args, check_files=False)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if settings.database not in ("sqlite", "postgres"):
        print(
            f"Error: database = {settings.database}: migrations need sqlite or postgres",
            file=sys.stderr,
        )
        return 1
    if args.action == "reset" and not args.yes:
        print(
            "Error: reset drops every table and all configuration; run again with --yes",
            file=sys.stderr,
        )
        return 1
    action: Callable[[Settings], Awaitable[int]] = _ACTIONS[args.action]
    try:
        return trio.run(action, settings)
    except StoreError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


def _where(settings: Settings) -> str:
    if settings.database == "sqlite":
        return f"SQLite database {sqlite_path(settings)}"
    where = f"PostgreSQL database '{settings.pg_database}' on {settings.pg_host}:{settings.pg_port}"
    if settings.pg_schema:
        where += f", schema '{settings.pg_schema}'"
    return where


async def _bootstrap(settings: Settings) -> int:
    print(f"Bootstrapping {_where(settings)}...")
    ran = await bootstrap(settings)
    if not ran:
        print("Database already bootstrapped")
        return 0
    for name in ran:
        print(f"migrated: {name}")
    print("Database is up-to-date")
    return 0


async def _up(settings: Settings) -> int:
    state = await migration_state(settings)
    if not state.bootstrapped and settings.database == "postgres":
        print(
            "Error: database needs bootstrapping; run 'python -m gateway migrations bootstrap'",
            file=sys.stderr,
        )
        return 1
    ran = await migrate_up(settings)
    if not ran:
        print("Database is already up-to-date")
        return 0
    for name in ran:
        print(f"migrated: {name}")
    print("Database is up-to-date")
    return 0


async def _list(settings: Settings) -> int:
    state = await migration_state(settings)
    print(f"{_where(settings)}:")
    if not state.bootstrapped:
        print("Database needs bootstrapping")
        return EXIT_NEEDS_BOOTSTRAP
    print("Executed migrations:")
    for name in state.executed:
        print(f"  {name}")
    if state.pending:
        print("New migrations available:")
        for name in state.pending:
            print(f"  {name}")
        print("Run 'python -m gateway migrations up' to proceed")
        return EXIT_PENDING
    print("Database is up-to-date")
    return 0


async def _reset(settings: Settings) -> int:
    await reset(settings)
    print(f"Database reset: {_where(settings)}")
    return 0


_ACTIONS: dict[str, Callable[[Settings], Awaitable[int]]] = {
    "bootstrap": _bootstrap,
    "up": _up,
    "list": _list,
    "reset": _reset,
}
