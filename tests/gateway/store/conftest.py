"""Fixtures of the storage contract suite: every test runs on SQLite and on PostgreSQL.

PostgreSQL tests use a fresh schema per test (``gwtest_<pid>_<n>``), dropped afterwards. When
the server on 127.0.0.1:5432 is unreachable they are skipped, unless ``CI=true``, where that
is a failure.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
import trio

from gateway.schema import EntitySchema, Foreign, Integer, Set, String
from gateway.store import Store, bootstrap, open_store, reset

PG_HOST = "127.0.0.1"
PG_PORT = 5432


@attrs.frozen(kw_only=True)
class DBSettings:
    """The attributes ``open_store`` reads (``gateway.settings.Settings`` has them too)."""

    database: str = "sqlite"
    prefix: Path = Path(".")
    sqlite_path: Path | None = None
    pg_host: str = PG_HOST
    pg_port: int = PG_PORT
    pg_user: str = "postgres"
    pg_password: str | None = None
    pg_database: str = "test"
    pg_schema: str | None = None
    pg_ssl: bool = False
    pg_timeout: int = 5000


def _tags() -> Set:
    return Set(String())


SERVICES = EntitySchema(
    "services",
    [("name", String(unique=True)), ("host", String()), ("port", Integer()), ("tags", _tags())],
    endpoint_key="name",
)
ROUTES = EntitySchema(
    "routes",
    [
        ("name", String(unique=True)),
        ("service", Foreign("services", on_delete="restrict")),
        ("tags", _tags()),
    ],
    endpoint_key="name",
)
CONSUMERS = EntitySchema(
    "consumers",
    [("username", String(unique=True)), ("custom_id", String(unique=True)), ("tags", _tags())],
    endpoint_key="username",
)
CREDENTIALS = EntitySchema(
    "credentials",
    [("consumer", Foreign("consumers", on_delete="cascade")), ("key", String(unique=True))],
    owner="consumer",
    endpoint_key="key",
)
PLUGINS = EntitySchema(
    "plugins",
    [
        ("name", String()),
        ("route", Foreign("routes", on_delete="cascade")),
        ("service", Foreign("services", on_delete="cascade")),
        ("consumer", Foreign("consumers", on_delete="cascade")),
        ("tags", _tags()),
    ],
    cache_key=("name", "route", "service", "consumer"),
)
NOTES = EntitySchema(
    "notes",
    [("text", String()), ("service", Foreign("services", on_delete="null"))],
    endpoint_key="text",  # not unique: get_by falls back to the first match by id
)
SCHEMAS: dict[str, EntitySchema] = {
    s.name: s for s in (SERVICES, ROUTES, CONSUMERS, CREDENTIALS, PLUGINS, NOTES)
}


def new_id() -> str:
    return str(uuid.uuid4())


def service(name: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"id": new_id(), "name": name, "host": "example.com", "port": 80, "tags": None, **kw}


def route(service_id: str | None, name: str | None = None, **kw: Any) -> dict[str, Any]:
    ref = {"id": service_id} if service_id else None
    return {"id": new_id(), "name": name, "service": ref, "tags": None, **kw}


def consumer(username: str, **kw: Any) -> dict[str, Any]:
    return {"id": new_id(), "username": username, "custom_id": None, "tags": None, **kw}


def credential(consumer_id: str, key: str) -> dict[str, Any]:
    return {"id": new_id(), "consumer": {"id": consumer_id}, "key": key}


def plugin(name: str, **refs: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": new_id(), "name": name, "tags": None}
    for field in ("route", "service", "consumer"):
        target = refs.get(field)
        row[field] = {"id": target} if target else None
    return row


# -- PostgreSQL availability ------------------------------------------------------------------

_pg_error: str | None = None
_pg_checked = False


def pg_unavailable() -> str | None:
    global _pg_checked, _pg_error
    if not _pg_checked:
        _pg_checked = True
        try:
            psycopg.connect(
                f"host={PG_HOST} port={PG_PORT} user=postgres dbname=test connect_timeout=3"
            ).close()
        except psycopg.Error as exc:
            _pg_error = str(exc).strip() or type(exc).__name__
    return _pg_error


def require_pg() -> None:
    error = pg_unavailable()
    if error is None:
        return
    message = f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT}: {error}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


_schema_numbers = itertools.count()


def pg_settings(schema: str | None = None) -> DBSettings:
    if schema is None:
        schema = f"gwtest_{os.getpid()}_{next(_schema_numbers)}"
    return DBSettings(database="postgres", pg_schema=schema)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgres":
        require_pg()
    return name


@pytest.fixture
def settings(backend: str, tmp_path: Path) -> Iterator[DBSettings]:
    if backend == "sqlite":
        yield DBSettings(database="sqlite", prefix=tmp_path)
        return
    s = pg_settings()
    trio.run(bootstrap, s)
    try:
        yield s
    finally:
        trio.run(reset, s)


@pytest.fixture
async def store(settings: DBSettings) -> AsyncIterator[Store]:
    async with open_store(settings, SCHEMAS) as opened:
        yield opened
