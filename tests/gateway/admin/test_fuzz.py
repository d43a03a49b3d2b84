"""Random requests never make the Admin API answer 5xx, and a rejected one changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.schema.entities import ENTITIES
from gateway.store import open_store

from .conftest import Client, SQLiteSettings, build_app, snapshot

FIELDS = sorted({name for schema in ENTITIES.values() for name in schema.fields} | {"url"})
PATHS = [
    "/services",
    "/services/s1",
    "/services/s1/routes",
    "/services/s1/routes/r1",
    "/routes/r1",
    "/routes/r1/service",
    "/routes/r1/plugins",
    "/consumers",
    "/consumers/bob",
    "/consumers/bob/key-auth",
    "/consumers/bob/key-auth/k1",
    "/key-auths/k1",
    "/plugins",
    "/upstreams",
    "/upstreams/u1/targets",
    "/certificates",
    "/snis",
    "/ca_certificates",
    "/schemas/services/validate",
    "/tags",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["/a", "http", "key-auth", "s1", "r1", "bob", "127.0.0.1:80", "*"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from([*FIELDS, "id", "name", "minute"]), inner, max_size=3)
    ),
    max_leaves=8,
)
JSON_BODIES = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=5)
FORM_BODIES = st.lists(
    st.tuples(
        st.sampled_from([*FIELDS, "config.minute", "paths[]", "hosts[2]", "service.name"]),
        st.text(max_size=8),
    ),
    max_size=5,
)


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("fuzz")

    async def seed() -> None:
        async with open_store(SQLiteSettings(prefix=prefix), ENTITIES) as store:
            client = Client(build_app(store))
            await client.ok("POST", "/services", json_body={"name": "s1", "host": "h"})
            await client.ok("POST", "/services/s1/routes", json_body={"name": "r1", "paths": ["/"]})
            await client.ok("POST", "/consumers", json_body={"username": "bob"})
            await client.ok("POST", "/consumers/bob/key-auth", json_body={"key": "k1"})
            await client.ok("POST", "/upstreams", json_body={"name": "u1"})

    trio.run(seed)
    return prefix / "gateway.db"


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(["POST", "PUT", "PATCH", "GET", "DELETE"]),
    path=st.sampled_from(PATHS),
    body=st.one_of(
        JSON_BODIES.map(lambda d: ("application/json", json.dumps(d).encode())),
        FORM_BODIES.map(lambda p: ("application/x-www-form-urlencoded", urlencode(p).encode())),
        st.binary(max_size=40).map(lambda b: ("application/json", b)),
    ),
)
def test_random_requests_never_fail_the_server(
    tmp_path: Path, seeded_db: Path, method: str, path: str, body: tuple[str, bytes]
) -> None:
    ctype, data = body
    db = tmp_path / "gateway.db"
    shutil.copyfile(seeded_db, db)

    async def run() -> None:
        async with open_store(SQLiteSettings(prefix=tmp_path), ENTITIES) as store:
            client = Client(build_app(store))
            before = await snapshot(store)
            reply = await client.request(method, path, body=data, content_type=ctype)
            assert reply.status < 500, (reply.status, reply.body)
            payload: Any = json.loads(reply.body) if reply.body else None
            if reply.status >= 400:
                assert isinstance(payload, dict)
                assert isinstance(payload.get("message"), str)
                assert await snapshot(store) == before

    trio.run(run)
