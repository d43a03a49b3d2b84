"""Fixtures of the Admin API unit tests: a real SQLite store in a tmp dir, the AdminApp with
its meta endpoints over a fake node, and a small client that speaks ``AdminRequest``."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import attrs
import pytest
import trio

from gateway.admin import AdminApp, AdminRequest, AdminResponse, install_meta_routes
from gateway.admin._dbless import DeclarativeLoader
from gateway.schema.entities import ENTITIES
from gateway.store import Store, open_store


@attrs.frozen(kw_only=True)
class SQLiteSettings:
    """The attributes ``open_store`` reads."""

    database: str = "sqlite"
    prefix: Path
    sqlite_path: Path | None = None
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    pg_password: str | None = None
    pg_database: str = "test"
    pg_schema: str | None = None
    pg_ssl: bool = False
    pg_timeout: int = 5000


class FakeNode:
    """A ``NodeView`` whose answers the tests choose."""

    def __init__(self, store: Any, role: str = "traditional") -> None:
        self.node_id = "11111111-2222-3333-4444-555555555555"
        self.role = role
        self.store = store
        self.health: dict[str, list[dict[str, Any]]] | None = {}
        self.marked: list[tuple[str, str, bool]] = []
        self.planes: list[dict[str, Any]] = []
        self.reachable = True

    def configuration(self) -> dict[str, Any]:
        return {"role": self.role, "pg_password": "******", "database": "sqlite"}

    async def database_reachable(self) -> bool:
        return self.reachable

    def config_state(self) -> dict[str, Any]:
        return {"version": 7, "hash": "0123456789abcdef0123456789abcdef"}

    def server_stats(self) -> dict[str, Any]:
        return {"connections_active": 1, "total_requests": 2}

    async def export_config(self) -> dict[str, Any]:
        raise AssertionError("GET /config reads the Admin API's store")

    def upstream_health(self, upstream: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        if self.health is None:
            return None
        return self.health.get(upstream["name"], [])

    def balancer_health(self, upstream: Mapping[str, Any]) -> dict[str, Any] | None:
        if self.health is None:
            return None
        return {"id": upstream["id"], "health": "HEALTHCHECKS_OFF", "details": {}}

    async def set_target_health(
        self, upstream: Mapping[str, Any], target: Mapping[str, Any], healthy: bool
    ) -> bool:
        if self.health is None:
            return False
        self.marked.append((upstream["name"], target["target"], healthy))
        return True

    async def data_planes(
        self, *, size: int, offset: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        start = int(offset or 0)
        rows = self.planes[start : start + size]
        nxt = str(start + size) if start + size < len(self.planes) else None
        return rows, nxt


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """``await client.post("/services", json={...})`` against an ``AdminApp``."""

    def __init__(self, app: AdminApp) -> None:
        self.app = app

    async def request(
        self,
        method: str,
        target: str,
        *,
        json_body: Any = None,
        form: Mapping[str, Any] | list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> Reply:
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        data = b""
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["content-type"] = "application/json"
        elif form is not None:
            data = urlencode(form, doseq=True).encode()
            headers["content-type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = body
        if content_type is not None:
            headers["content-type"] = content_type
        response: AdminResponse = await self.app.handle(
            AdminRequest(
                method=method,
                path=path,
                raw_path=quote(path, safe="/%:@"),
                query=tuple(parse_qsl(query, keep_blank_values=True)),
                headers=headers,
                body=data,
            )
        )
        return Reply(response.status, dict(response.headers), response.body)

    async def get(self, target: str) -> Reply:
        return await self.request("GET", target)

    async def post(self, target: str, **kw: Any) -> Reply:
        return await self.request("POST", target, **kw)

    async def put(self, target: str, **kw: Any) -> Reply:
        return await self.request("PUT", target, **kw)

    async def patch(self, target: str, **kw: Any) -> Reply:
        return await self.request("PATCH", target, **kw)

    async def delete(self, target: str) -> Reply:
        return await self.request("DELETE", target)

    async def ok(self, method: str, target: str, status: int = 0, **kw: Any) -> Any:
        """The JSON of a successful call (asserting its status)."""
        reply = await self.request(method, target, **kw)
        expected = status or {"POST": 201, "DELETE": 204}.get(method, 200)
        assert reply.status == expected, (method, target, reply.status, reply.body)
        return reply.json if reply.body else None


def build_app(
    store: Any,
    *,
    node: FakeNode | None = None,
    loader: DeclarativeLoader | None = None,
    **kw: Any,
) -> AdminApp:
    app = AdminApp(store=store, schemas=ENTITIES, clock=lambda: 1_700_000_000, **kw)
    install_meta_routes(app, node or FakeNode(store), loader=loader)
    return app


@pytest.fixture(scope="session")
def bootstrapped_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bootstrapped SQLite file that every test copies (migrations run once)."""
    prefix = tmp_path_factory.mktemp("template")

    async def create() -> None:
        async with open_store(SQLiteSettings(prefix=prefix), ENTITIES):
            pass

    trio.run(create)
    return prefix / "gateway.db"


@pytest.fixture
async def store(tmp_path: Path, bootstrapped_db: Path) -> AsyncIterator[Store]:
    shutil.copyfile(bootstrapped_db, tmp_path / "gateway.db")
    async with open_store(SQLiteSettings(prefix=tmp_path), ENTITIES) as s:
        yield s


@pytest.fixture
def node(store: Store) -> FakeNode:
    return FakeNode(store)


@pytest.fixture
def app(store: Store, node: FakeNode) -> AdminApp:
    return build_app(store, node=node)


@pytest.fixture
def client(app: AdminApp) -> Client:
    return Client(app)


async def snapshot(store: Any) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """Version and content, to assert that a rejected request changed nothing."""
    result: tuple[int, dict[str, list[dict[str, Any]]]] = await store.export()
    return result
