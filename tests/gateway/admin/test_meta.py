"""The endpoints that are not entity CRUD: /, /status, /schemas, /plugins/enabled, /config
(export, and the DB-less load), /endpoints, and the clustering views."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from gateway._config_apply import ConfigApplier
from gateway._memory_store import MemoryStore
from gateway._state import NodeState
from gateway._version import __version__
from gateway.admin._dbless import MAX_YAML_NODES, DeclarativeReloader
from gateway.declarative import parse_declarative
from gateway.plugins import available_plugins
from gateway.proxy import ProxyState
from gateway.schema.entities import ENTITIES
from gateway.store import Store

from .conftest import Client, FakeNode, build_app

DOC: dict[str, Any] = {
    "_format_version": "3.0",
    "services": [
        {
            "name": "echo",
            "url": "http://127.0.0.1:9/",
            "routes": [{"name": "r", "paths": ["/echo"]}],
        }
    ],
    "consumers": [{"username": "bob", "keyauth_credentials": [{"key": "secret"}]}],
    "plugins": [{"name": "key-auth", "route": "r"}],
}


async def test_root_describes_the_node(client: Client, node: FakeNode) -> None:
    await client.ok("POST", "/plugins", json_body={"name": "cors"})
    info = await client.ok("GET", "/")
    assert info["version"] == __version__
    assert info["node_id"] == node.node_id
    assert info["role"] == "traditional"
    assert info["configuration"]["pg_password"] == "******"
    available = info["plugins"]["available_on_server"]
    assert set(available) == set(available_plugins())
    assert available["key-auth"]["priority"] == 1250
    assert info["plugins"]["enabled_in_cluster"] == ["cors"]


async def test_status(client: Client, node: FakeNode) -> None:
    status = await client.ok("GET", "/status")
    assert status == {
        "database": {"reachable": True},
        "server": {"connections_active": 1, "total_requests": 2},
        "configuration_hash": "0123456789abcdef0123456789abcdef",
        "configuration_version": 7,
    }
    node.reachable = False
    assert (await client.ok("GET", "/status"))["database"] == {"reachable": False}


async def test_endpoints_lists_every_route(client: Client) -> None:
    paths = (await client.ok("GET", "/endpoints"))["data"]
    for expected in (
        "/services",
        "/services/{key}",
        "/tags",
        "/tags/{tag}",
        "/config",
        "/key-auths",
        "/consumers/{parent}/key-auth",
        "/upstreams/{parent}/targets/all",
    ):
        assert expected in paths


@pytest.mark.parametrize("name", sorted({*ENTITIES, "key-auths"}))
async def test_entity_schemas(client: Client, name: str) -> None:
    described = await client.ok("GET", f"/schemas/{name}")
    fields = [next(iter(f)) for f in described["fields"]]
    assert fields[0] == "id"
    assert described["primary_key"] == ["id"]


async def test_service_schema_details(client: Client) -> None:
    described = await client.ok("GET", "/schemas/services")
    fields = {k: v for f in described["fields"] for k, v in f.items()}
    assert fields["port"]["default"] == 80
    assert fields["protocol"]["one_of"][:2] == ["grpc", "grpcs"]
    assert described["endpoint_key"] == "name"


@pytest.mark.parametrize("name", sorted(available_plugins()))
async def test_plugin_schemas(client: Client, name: str) -> None:
    described = await client.ok("GET", f"/schemas/plugins/{name}")
    assert described["fields"][1]["config"]["type"] == "record"
    assert await client.ok("GET", f"/plugins/schema/{name}") == described


async def test_schema_validate(client: Client, store: Store) -> None:
    ok = await client.ok("POST", "/schemas/services/validate", 200, json_body={"host": "a.test"})
    assert ok == {"message": "schema validation successful"}
    ok = await client.ok(
        "POST",
        "/schemas/plugins/validate",
        200,
        json_body={"name": "rate-limiting", "config": {"minute": 1}},
    )
    assert ok == {"message": "schema validation successful"}
    bad = await client.post("/schemas/plugins/validate", json_body={"name": "key-auth", "x": 1})
    assert bad.status == 400
    assert bad.json["fields"] == {"x": "unknown field"}
    assert (await client.post("/schemas/nope/validate", json_body={})).status == 404
    assert (await store.export())[1]["services"] == []


async def test_plugins_enabled(client: Client) -> None:
    enabled = await client.ok("GET", "/plugins/enabled")
    assert enabled == {"enabled_plugins": sorted(available_plugins())}


async def test_config_export_round_trips(client: Client) -> None:
    await client.ok("POST", "/services", json_body={"name": "s", "host": "h.test"})
    await client.ok("POST", "/services/s/routes", json_body={"name": "r", "paths": ["/"]})
    await client.ok("POST", "/consumers", json_body={"username": "bob"})
    await client.ok("POST", "/consumers/bob/key-auth", json_body={"key": "k"})
    exported = await client.ok("GET", "/config")
    doc = yaml.safe_load(exported["config"])
    assert doc["_format_version"] == "3.0"
    as_json = await client.ok("GET", "/config?format=json")
    assert as_json == doc
    config = parse_declarative(doc)
    assert [s["name"] for s in config["services"]] == ["s"]
    assert [c["key"] for c in config["keyauth_credentials"]] == ["k"]


async def test_post_config_needs_database_off(client: Client, store: Store) -> None:
    reply = await client.post("/config", json_body=DOC)
    assert reply.status == 400
    assert "database = off" in reply.json["message"]
    assert (await store.export())[1]["services"] == []


async def test_post_config_without_a_loader(store: Store) -> None:
    node = FakeNode(store)
    node.configuration = lambda: {"database": "off"}  # type: ignore[method-assign]
    client = Client(build_app(store, node=node))
    reply = await client.post("/config", json_body=DOC)
    assert reply.status == 405


# -- POST /config on a node without a database ----------------------------------------------------


class DbLess:
    def __init__(self) -> None:
        self.state = NodeState(role="traditional", node_id="n")
        self.proxy = ProxyState()
        self.applier = ConfigApplier(self.proxy, self.state)
        self.memory = MemoryStore({})
        self.now = 1_700_000_000
        self.loader = DeclarativeReloader(self.applier, self.memory, clock=self.clock)
        app = build_app(self.memory, loader=self.loader, read_only_reason="not using a database")
        self.client = Client(app)

    def clock(self) -> float:
        self.now += 1  # time passes between loads: check_hash must not depend on it
        return self.now


@pytest.fixture
def dbless() -> DbLess:
    return DbLess()


async def test_post_config_loads_everything(dbless: DbLess) -> None:
    client = dbless.client
    loaded = await client.ok("POST", "/config", 201, json_body=DOC)
    assert [s["name"] for s in loaded["services"]] == ["echo"]
    assert [c["key"] for c in loaded["keyauth_credentials"]] == ["secret"]
    assert (await client.ok("GET", "/services/echo"))["port"] == 9
    assert (await client.ok("GET", "/consumers/bob/key-auth/secret"))["key"] == "secret"
    assert dbless.state.config_version == 1
    assert dbless.state.config_hash is not None
    assert dbless.state.config_source == "declarative"
    exported = await client.ok("GET", "/config?format=json")
    assert [s["name"] for s in exported["services"]] == ["echo"]

    # The same configuration again with check_hash: 304, nothing re-applied.
    compiled = dbless.proxy.current
    reply = await client.post("/config?check_hash=1", json_body=DOC)
    assert reply.status == 304
    assert dbless.proxy.current is compiled
    # Without check_hash it is applied again (a new version).
    await client.ok("POST", "/config", 201, json_body=DOC)
    assert dbless.state.config_version == 2


async def test_post_config_invalid_changes_nothing(dbless: DbLess) -> None:
    client = dbless.client
    await client.ok("POST", "/config", 201, json_body=DOC)
    compiled, before = dbless.proxy.current, await dbless.memory.export()
    bad = json.loads(json.dumps(DOC))
    bad["services"][0]["routes"][0]["paths"] = ["no-slash"]
    bad["consumers"].append({"username": "bob"})
    reply = await client.post("/config", json_body=bad)
    assert reply.status == 400
    payload = reply.json
    assert payload["code"] == 14
    assert payload["name"] == "invalid declarative configuration"
    assert payload["message"].startswith("declarative config is invalid")
    assert payload["flattened_errors"]
    assert dbless.proxy.current is compiled
    assert await dbless.memory.export() == before
    assert dbless.state.config_version == 1


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("application/yaml", yaml.safe_dump(DOC).encode()),
        ("text/yaml", yaml.safe_dump(DOC).encode()),
        ("application/json", json.dumps({"config": yaml.safe_dump(DOC)}).encode()),
        ("application/json", json.dumps({"config": DOC}).encode()),
        (
            "application/x-www-form-urlencoded",
            b"config=" + json.dumps(DOC).replace("&", "%26").encode(),
        ),
    ],
)
async def test_post_config_body_forms(dbless: DbLess, ctype: str, body: bytes) -> None:
    loaded = await dbless.client.ok("POST", "/config", 201, body=body, content_type=ctype)
    assert [s["name"] for s in loaded["services"]] == ["echo"]


BOMB = "a: &a [x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(24)
)
LOOP = b"a: &a [1, *a]\n"


@pytest.mark.parametrize(
    ("ctype", "body", "fragment"),
    [
        ("application/yaml", b"services: [", "failed parsing declarative configuration"),
        ("application/yaml", b"- a\n- b\n", "expected an object"),
        ("application/yaml", b"\xff\xfe", "failed parsing"),
        ("application/yaml", BOMB.encode(), f"more than {MAX_YAML_NODES} values"),
        ("application/yaml", b"[" * 3_000, "failed parsing"),
        ("application/yaml", LOOP, "recursive YAML alias"),
        # A one-line string is document text, never a file name to read.
        ("application/x-www-form-urlencoded", b"config=/etc/hostname", "expected an object"),
        ("application/json", b"", "expected a declarative configuration"),
        ("text/plain", b"x", "Unsupported Content-Type"),
        ("application/json", b'{"_format_version": "9.9"}', "unsupported declarative format"),
        ("application/json", b'{"services": "x"}', "_format_version"),
    ],
)
async def test_post_config_rejects(dbless: DbLess, ctype: str, body: bytes, fragment: str) -> None:
    reply = await dbless.client.post("/config", body=body, content_type=ctype)
    assert 400 <= reply.status < 500
    assert fragment in reply.body.decode()
    assert dbless.state.config_version is None
    assert await dbless.memory.export() == (1, {})


# -- clustering views -------------------------------------------------------------------------


async def test_clustering_endpoints_need_a_control_plane(client: Client) -> None:
    for path in ("/clustering/data-planes", "/clustering/status"):
        reply = await client.get(path)
        assert reply.status == 400
        assert "control plane" in reply.json["message"]


async def test_clustering_on_a_control_plane(store: Store) -> None:
    node = FakeNode(store, role="control_plane")
    node.planes = [
        {"id": f"dp-{i}", "config_hash": "h", "hostname": "x", "ip": "1.2.3.4", "last_seen": i}
        for i in range(3)
    ]
    client = Client(build_app(store, node=node))
    page = await client.ok("GET", "/clustering/data-planes?size=2")
    assert [r["id"] for r in page["data"]] == ["dp-0", "dp-1"]
    assert page["next"] == "/clustering/data-planes?offset=2"
    status = await client.request("GET", "/clustering/status")
    assert status.headers["deprecation"] == "true"
    assert set(status.json) == {"dp-0", "dp-1", "dp-2"}
    assert (await client.get("/clustering/data-planes/dp-0")).status == 404
    assert (await client.delete("/clustering/data-planes/dp-0")).status == 404
