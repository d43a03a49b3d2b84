"""Entity endpoints of the Admin API against a real SQLite store: every collection, the nested
forms, PUT/PATCH semantics, cascades, pagination and tags."""

from __future__ import annotations

from typing import Any

from gateway.store import Store

from .conftest import Client, snapshot
from .pem import certificate

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


async def _service(client: Client, name: str = "s1", **kw: Any) -> dict[str, Any]:
    body = {"name": name, "url": "http://upstream.test:8080/base", **kw}
    result: dict[str, Any] = await client.ok("POST", "/services", json_body=body)
    return result


# -- services -------------------------------------------------------------------------------


async def test_service_crud_by_id_and_name(client: Client) -> None:
    created = await _service(client, tags=["a"])
    assert created["host"] == "upstream.test"
    assert created["port"] == 8080
    assert created["path"] == "/base"
    assert created["protocol"] == "http"
    assert created["retries"] == 5
    assert created["created_at"] == created["updated_at"] == 1_700_000_000
    assert await client.ok("GET", f"/services/{created['id']}") == created
    assert await client.ok("GET", "/services/s1") == created
    assert await client.ok("GET", f"/services/{created['id'].upper()}") == created

    patched = await client.ok("PATCH", "/services/s1", json_body={"retries": 2})
    assert patched["retries"] == 2
    assert patched["host"] == "upstream.test"  # PATCH keeps what it does not name

    listed = await client.ok("GET", "/services")
    assert listed == {"data": [patched], "next": None}

    assert (await client.delete("/services/s1")).status == 204
    assert (await client.get("/services/s1")).status == 404
    # DELETE is idempotent on the top-level form, as Kong's.
    assert (await client.delete("/services/s1")).status == 204


async def test_put_creates_by_name_and_replaces(client: Client) -> None:
    created = await client.ok("PUT", "/services/by-put", json_body={"host": "a.test"})
    assert created["name"] == "by-put"
    assert created["port"] == 80
    changed = await client.ok(
        "PUT", "/services/by-put", json_body={"host": "b.test", "port": 81, "retries": 1}
    )
    assert changed["id"] == created["id"]
    assert changed["created_at"] == created["created_at"]
    assert (changed["host"], changed["port"], changed["retries"]) == ("b.test", 81, 1)
    # PUT replaces: what the body leaves out returns to its default.
    again = await client.ok("PUT", "/services/by-put", json_body={"host": "b.test"})
    assert (again["port"], again["retries"]) == (80, 5)
    # The name in the URL wins over one in the body.
    renamed = await client.ok("PUT", "/services/by-put", json_body={"host": "c", "name": "x"})
    assert renamed["name"] == "by-put"
    assert (await client.get("/services/x")).status == 404


async def test_put_with_an_id_creates_with_that_id(client: Client) -> None:
    created = await client.ok("PUT", f"/services/{UNKNOWN_ID}", json_body={"host": "a.test"})
    assert created["id"] == UNKNOWN_ID
    assert created["name"] is None


async def test_patch_merges_records_and_replaces_arrays(client: Client) -> None:
    await client.ok("POST", "/upstreams", json_body={"name": "u"})
    patched = await client.ok(
        "PATCH",
        "/upstreams/u",
        json_body={"healthchecks": {"active": {"healthy": {"interval": 5}}}, "tags": ["x"]},
    )
    active = patched["healthchecks"]["active"]
    assert active["healthy"]["interval"] == 5
    assert active["healthy"]["successes"] == 0  # sibling defaults kept: records merge
    assert active["type"] == "http"
    patched = await client.ok("PATCH", "/upstreams/u", json_body={"tags": ["y"]})
    assert patched["tags"] == ["y"]


async def test_patch_of_unknown_entity_is_404(client: Client, store: Store) -> None:
    before = await snapshot(store)
    assert (await client.patch("/services/nope", json_body={"retries": 1})).status == 404
    assert await snapshot(store) == before


# -- routes and the nested forms ----------------------------------------------------------------


async def test_routes_nested_under_services(client: Client) -> None:
    s1 = await _service(client, "s1")
    s2 = await _service(client, "s2")
    r1 = await client.ok("POST", "/services/s1/routes", json_body={"name": "r1", "paths": ["/a"]})
    assert r1["service"] == {"id": s1["id"]}
    r2 = await client.ok(
        "POST", "/routes", json_body={"name": "r2", "hosts": ["h"], "service": {"id": s2["id"]}}
    )
    # A service named in the body resolves to its id (as Kong's {"name": ...} references).
    r3 = await client.ok(
        "POST", "/routes", json_body={"name": "r3", "paths": ["/c"], "service": {"name": "s2"}}
    )
    assert r3["service"] == {"id": s2["id"]}

    listed = await client.ok("GET", "/services/s1/routes")
    assert [r["name"] for r in listed["data"]] == ["r1"]
    assert await client.ok("GET", "/services/s1/routes/r1") == r1
    # r2 is not below s1: every nested verb answers 404 and changes nothing.
    for method in ("GET", "PATCH", "DELETE"):
        reply = await client.request(method, "/services/s1/routes/r2", json_body={})
        assert reply.status == 404, method
    assert await client.ok("GET", "/routes/r2") == r2

    assert await client.ok("GET", "/routes/r1/service") == s1
    patched = await client.ok("PATCH", "/routes/r1/service", json_body={"port": 9000})
    assert patched["id"] == s1["id"]
    assert patched["port"] == 9000
    assert (await client.delete("/routes/r1/service")).status == 405

    nested_patch = await client.ok("PATCH", "/services/s1/routes/r1", json_body={"paths": ["/z"]})
    assert nested_patch["paths"] == ["/z"]
    put = await client.ok("PUT", "/services/s1/routes/r9", json_body={"paths": ["/nine"]})
    assert (put["name"], put["service"]) == ("r9", {"id": s1["id"]})
    assert (await client.delete("/services/s1/routes/r9")).status == 204
    assert (await client.get("/routes/r9")).status == 404

    assert (await client.get("/services/nope/routes")).status == 404
    assert (await client.post("/services/nope/routes", json_body={"paths": ["/"]})).status == 404


async def test_route_without_service_has_no_service_endpoint(client: Client) -> None:
    await client.ok("POST", "/routes", json_body={"name": "lonely", "paths": ["/l"]})
    assert (await client.get("/routes/lonely/service")).status == 404


async def test_deleting_a_service_with_routes_is_refused(client: Client, store: Store) -> None:
    await _service(client, "s1")
    await client.ok("POST", "/services/s1/routes", json_body={"paths": ["/a"]})
    before = await snapshot(store)
    reply = await client.delete("/services/s1")
    assert reply.status == 400
    assert reply.json == {
        "code": 4,
        "name": "foreign key violation",
        "message": "an existing 'routes' entity references this 'services' entity",
        "fields": {"@referenced_by": "routes"},
    }
    assert await snapshot(store) == before


# -- consumers, credentials, plugins ----------------------------------------------------------


async def test_consumers_by_username_and_custom_id(client: Client) -> None:
    bob = await client.ok("POST", "/consumers", json_body={"username": "bob", "custom_id": "c-1"})
    assert await client.ok("GET", "/consumers/bob") == bob
    assert await client.ok("GET", "/consumers/c-1") == bob
    alice = await client.ok("PUT", "/consumers/alice", json_body={"custom_id": "c-2"})
    assert alice["username"] == "alice"
    # PUT through the custom_id updates that consumer and keeps its username.
    same = await client.ok("PUT", "/consumers/c-2", json_body={"custom_id": "c-2", "tags": ["t"]})
    assert same["id"] == alice["id"]
    assert same["username"] is None  # PUT replaces: the body named no username


async def test_key_auth_credentials(client: Client) -> None:
    await client.ok("POST", "/consumers", json_body={"username": "bob"})
    generated = await client.ok("POST", "/consumers/bob/key-auth", json_body={})
    assert len(generated["key"]) == 32
    mine = await client.ok("POST", "/consumers/bob/key-auth", form={"key": "secret"})
    assert mine["key"] == "secret"
    assert await client.ok("GET", "/consumers/bob/key-auth/secret") == mine
    assert await client.ok("GET", f"/key-auths/{mine['id']}") == mine
    assert await client.ok("GET", "/key-auths/secret") == mine
    listed = await client.ok("GET", "/consumers/bob/key-auth")
    assert {c["key"] for c in listed["data"]} == {"secret", generated["key"]}
    assert len((await client.ok("GET", "/key-auths"))["data"]) == 2

    dup = await client.post("/consumers/bob/key-auth", json_body={"key": "secret"})
    assert dup.status == 409
    assert dup.json["name"] == "unique constraint violation"
    # Credentials only exist below a consumer.
    assert (await client.post("/key-auths", json_body={"key": "x"})).status == 405

    patched = await client.ok("PATCH", "/consumers/bob/key-auth/secret", json_body={"ttl": 60})
    assert (patched["key"], patched["ttl"]) == ("secret", 60)  # PATCH keeps the key
    put = await client.ok("PUT", "/consumers/bob/key-auth/other", json_body={})
    assert put["key"] == "other"
    assert (await client.delete("/consumers/bob/key-auth/other")).status == 204


async def test_deleting_a_consumer_deletes_its_credentials_and_plugins(
    client: Client, store: Store
) -> None:
    bob = await client.ok("POST", "/consumers", json_body={"username": "bob"})
    await client.ok("POST", "/consumers", json_body={"username": "eve"})
    await client.ok("POST", "/consumers/bob/key-auth", json_body={"key": "k1"})
    await client.ok("POST", "/consumers/eve/key-auth", json_body={"key": "k2"})
    plugin = await client.ok(
        "POST",
        "/consumers/bob/plugins",
        json_body={"name": "rate-limiting", "config": {"minute": 5}},
    )
    assert plugin["consumer"] == {"id": bob["id"]}
    listed = await client.ok("GET", "/consumers/bob/plugins")
    assert [p["id"] for p in listed["data"]] == [plugin["id"]]
    version = (await snapshot(store))[0]

    assert (await client.delete("/consumers/bob")).status == 204
    assert (await client.get(f"/plugins/{plugin['id']}")).status == 404
    keys = await client.ok("GET", "/key-auths")
    assert [c["key"] for c in keys["data"]] == ["k2"]
    # One write: one new config version for the consumer and everything that went with it.
    assert (await snapshot(store))[0] == version + 1


async def test_plugins_everywhere(client: Client) -> None:
    s1 = await _service(client)
    r1 = await client.ok("POST", "/services/s1/routes", json_body={"name": "r1", "paths": ["/"]})
    await client.ok("POST", "/consumers", json_body={"username": "bob"})
    glob = await client.ok("POST", "/plugins", json_body={"name": "correlation-id"})
    assert (glob["route"], glob["service"], glob["consumer"]) == (None, None, None)
    assert glob["config"]["header_name"] == "Kong-Request-ID"
    on_service = await client.ok("POST", "/services/s1/plugins", json_body={"name": "cors"})
    assert on_service["service"] == {"id": s1["id"]}
    on_route = await client.ok("POST", "/routes/r1/plugins", form={"name": "key-auth"})
    assert on_route["route"] == {"id": r1["id"]}
    assert on_route["protocols"] == ["grpc", "grpcs", "http", "https", "ws", "wss"]

    # Form bodies: the plugin's own schema gives config fields their types.
    limited = await client.ok(
        "POST",
        "/plugins",
        form=[("name", "rate-limiting"), ("config.minute", "5"), ("route.name", "r1")],
    )
    assert limited["config"]["minute"] == 5
    assert limited["route"] == {"id": r1["id"]}
    cors = await client.ok(
        "POST", "/plugins", form={"name": "cors", "config.origins": "*", "route": "r1"}
    )
    assert cors["config"]["origins"] == ["*"]

    assert len((await client.ok("GET", "/plugins"))["data"]) == 5
    assert [p["id"] for p in (await client.ok("GET", "/routes/r1/plugins"))["data"]] == sorted(
        [on_route["id"], limited["id"], cors["id"]]
    )
    no_consumer = await client.post("/plugins", form={"name": "cors", "consumer.username": "bob"})
    assert no_consumer.status == 400
    assert no_consumer.json["fields"] == {"consumer": "value must be null"}

    patched = await client.ok(
        "PATCH", f"/plugins/{limited['id']}", json_body={"config": {"hour": 100}}
    )
    assert (patched["config"]["minute"], patched["config"]["hour"]) == (5, 100)
    disabled = await client.ok("PATCH", f"/plugins/{glob['id']}", form={"enabled": "false"})
    assert disabled["enabled"] is False

    dup = await client.post("/routes/r1/plugins", json_body={"name": "key-auth"})
    assert dup.status == 409
    unknown = await client.post("/plugins", json_body={"name": "nope"})
    assert unknown.status == 400
    assert unknown.json["fields"] == {
        "name": "plugin 'nope' not enabled; add it to the 'plugins' configuration property"
    }
    bad_config = await client.post(
        "/plugins", json_body={"name": "rate-limiting", "config": {"minute": "x"}}
    )
    assert bad_config.status == 400
    assert "config" in bad_config.json["fields"]

    # Deleting the route takes its plugins along.
    await client.ok("DELETE", f"/services/s1/plugins/{on_service['id']}")
    await client.ok("DELETE", "/routes/r1")
    remaining = {p["name"] for p in (await client.ok("GET", "/plugins"))["data"]}
    assert remaining == {"correlation-id"}


async def test_plugin_instance_name_is_an_endpoint_key(client: Client) -> None:
    created = await client.ok(
        "POST", "/plugins", json_body={"name": "cors", "instance_name": "my-cors"}
    )
    assert await client.ok("GET", "/plugins/my-cors") == created


# -- upstreams and targets ----------------------------------------------------------------------


async def test_upstreams_and_targets(client: Client) -> None:
    up = await client.ok("POST", "/upstreams", json_body={"name": "u"})
    assert up["algorithm"] == "round-robin"
    assert up["slots"] == 10000
    t1 = await client.ok("POST", "/upstreams/u/targets", json_body={"target": "10.0.0.1:81"})
    assert t1["upstream"] == {"id": up["id"]}
    assert t1["weight"] == 100
    t2 = await client.ok("POST", "/upstreams/u/targets", form={"target": "10.0.0.2", "weight": "0"})
    assert t2["target"] == "10.0.0.2:8000"
    assert t2["weight"] == 0
    listed = await client.ok("GET", "/upstreams/u/targets")
    assert {t["id"] for t in listed["data"]} == {t1["id"], t2["id"]}
    every = await client.ok("GET", "/upstreams/u/targets/all")
    assert {t["id"] for t in every["data"]} == {t1["id"], t2["id"]}
    assert await client.ok("GET", "/upstreams/u/targets/10.0.0.1:81") == t1
    assert await client.ok("GET", "/upstreams/u/targets/10.0.0.2") == t2
    assert await client.ok("GET", f"/upstreams/u/targets/{t1['id']}") == t1
    assert (await client.post("/targets", json_body={"target": "x"})).status == 405

    assert (await client.delete("/upstreams/u/targets/10.0.0.2")).status == 204
    assert (await client.get("/upstreams/u/targets/10.0.0.2")).status == 404
    assert (await client.get("/upstreams/nope/targets")).status == 404
    assert (await client.delete("/upstreams/u")).status == 204
    assert (await client.get(f"/upstreams/u/targets/{t1['id']}")).status == 404
    assert (await client.ok("GET", "/targets"))["data"] == []  # cascaded


async def test_upstream_health_and_marking_targets(client: Client, node: Any) -> None:
    await client.ok("POST", "/upstreams", json_body={"name": "u"})
    await client.ok("POST", "/upstreams/u/targets", json_body={"target": "10.0.0.1:81"})
    node.health = {"u": [{"target": "10.0.0.1:81", "weight": 100, "health": "HEALTHY"}]}
    health = await client.ok("GET", "/upstreams/u/health")
    assert health["data"] == node.health["u"]
    assert health["node_id"] == node.node_id
    summary = await client.ok("GET", "/upstreams/u/health?balancer_health=1")
    assert summary["data"]["health"] == "HEALTHCHECKS_OFF"
    assert (await client.put("/upstreams/u/targets/10.0.0.1:81/unhealthy")).status == 204
    assert (await client.post("/upstreams/u/targets/10.0.0.1:81/healthy")).status == 204
    assert node.marked == [("u", "10.0.0.1:81", False), ("u", "10.0.0.1:81", True)]
    assert (await client.put("/upstreams/u/targets/10.9.9.9:1/healthy")).status == 404
    assert (await client.get("/upstreams/nope/health")).status == 404
    node.health = None  # a node that does not proxy
    assert (await client.get("/upstreams/u/health")).status == 400
    assert (await client.get("/upstreams/u/health?balancer_health=1")).status == 400
    assert (await client.put("/upstreams/u/targets/10.0.0.1:81/healthy")).status == 400


# -- certificates, SNIs, CA certificates --------------------------------------------------------


async def test_certificates_and_snis(client: Client) -> None:
    cert, key = certificate()
    created = await client.ok("POST", "/certificates", json_body={"cert": cert, "key": key})
    sni = await client.ok(
        "POST", f"/certificates/{created['id']}/snis", json_body={"name": "a.example.test"}
    )
    assert sni["certificate"] == {"id": created["id"]}
    other = await client.ok(
        "POST",
        "/snis",
        json_body={"name": "*.wild.test", "certificate": {"id": created["id"]}},
    )
    assert await client.ok("GET", "/snis/a.example.test") == sni
    listed = await client.ok("GET", f"/certificates/{created['id']}/snis")
    assert {s["id"] for s in listed["data"]} == {sni["id"], other["id"]}
    assert await client.ok("GET", "/snis/a.example.test/certificate") == created
    dup = await client.post(
        "/snis", json_body={"name": "a.example.test", "certificate": {"id": created["id"]}}
    )
    assert dup.status == 409

    wrong = await client.post("/certificates", json_body={"cert": cert, "key": certificate()[1]})
    assert wrong.status == 400
    garbage = await client.post("/certificates", json_body={"cert": "x", "key": "y"})
    assert garbage.status == 400
    assert set(garbage.json["fields"]) == {"cert", "key"}

    assert (await client.delete(f"/certificates/{created['id']}")).status == 204
    assert (await client.ok("GET", "/snis"))["data"] == []  # cascaded


async def test_ca_certificates(client: Client) -> None:
    ca, _ = certificate("Test CA", ca=True)
    created = await client.ok("POST", "/ca_certificates", json_body={"cert": ca})
    assert len(created["cert_digest"]) == 64
    assert await client.ok("GET", f"/ca_certificates/{created['id']}") == created
    dup = await client.post("/ca_certificates", json_body={"cert": ca})
    assert dup.status == 409
    leaf, _ = certificate("leaf")
    not_ca = await client.post("/ca_certificates", json_body={"cert": leaf})
    assert not_ca.status == 400
    assert "CA" in not_ca.json["fields"]["cert"]


# -- pagination and tags ------------------------------------------------------------------------


async def test_pagination_walks_every_entity_once(client: Client) -> None:
    ids = set()
    for i in range(7):
        ids.add((await _service(client, f"s{i}"))["id"])
    seen: list[str] = []
    target: str | None = "/services?size=3"
    pages = 0
    while target is not None:
        page = await client.ok("GET", target)
        seen += [s["id"] for s in page["data"]]
        target = page["next"]
        if target is not None:
            assert page["offset"] in target
            assert "size=3" in target
        pages += 1
    assert pages == 3
    assert seen == sorted(ids)


async def test_nested_pagination_keeps_the_nested_path(client: Client) -> None:
    await _service(client)
    for i in range(3):
        await client.ok("POST", "/services/s1/routes", json_body={"paths": [f"/{i}"]})
    page = await client.ok("GET", "/services/s1/routes?size=2")
    assert page["next"].startswith("/services/s1/routes?offset=")
    rest = await client.ok("GET", page["next"])
    assert len(rest["data"]) == 1
    assert rest["next"] is None


async def test_tags_filter_and_or(client: Client) -> None:
    await _service(client, "ab", tags=["a", "b"])
    await _service(client, "a", tags=["a"])
    await _service(client, "b", tags=["b"])
    await _service(client, "none")

    async def names(query: str) -> set[str]:
        return {s["name"] for s in (await client.ok("GET", f"/services?{query}"))["data"]}

    assert await names("tags=a") == {"ab", "a"}
    assert await names("tags=a,b") == {"ab"}
    assert await names("tags=a/b") == {"ab", "a", "b"}
    page = await client.ok("GET", "/services?tags=a&size=1")
    assert "tags=a" in page["next"]
    mixed = await client.get("/services?tags=a,b/c")
    assert mixed.status == 400
    assert mixed.json["name"] == "invalid options"


async def test_tags_endpoints(client: Client) -> None:
    svc = await _service(client, "s", tags=["blue", "green"])
    await client.ok("POST", "/consumers", json_body={"username": "c", "tags": ["blue"]})
    every = await client.ok("GET", "/tags")
    assert [(r["tag"], r["entity_name"]) for r in every["data"]] == [
        ("blue", "consumers"),
        ("blue", "services"),
        ("green", "services"),
    ]
    blue = await client.ok("GET", "/tags/blue?size=1")
    assert blue["data"] == [
        {"entity_name": "consumers", "entity_id": blue["data"][0]["entity_id"], "tag": "blue"}
    ]
    rest = await client.ok("GET", blue["next"])
    assert rest["data"] == [{"entity_name": "services", "entity_id": svc["id"], "tag": "blue"}]
    assert rest["next"] is None
    assert (await client.ok("GET", "/tags/none"))["data"] == []
    assert (await client.get("/tags/a,b")).status == 400
    assert (await client.get("/tags?offset=garbage")).status == 400


async def test_percent_encoded_names(client: Client) -> None:
    created = await client.ok("POST", "/consumers", json_body={"username": "a/b c"})
    reply = await client.request("GET", "/consumers/a%2Fb%20c")
    assert reply.status == 200
    assert reply.json == created
