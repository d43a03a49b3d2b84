"""Bad input of every kind gets a 4xx with a clear message, and changes nothing stored."""

from __future__ import annotations

from typing import Any

import pytest

from gateway._memory_store import MemoryStore
from gateway.store import Store

from .conftest import Client, build_app, snapshot

SERVICE = {"name": "s1", "host": "upstream.test"}


@pytest.fixture
async def seeded(client: Client) -> Client:
    await client.ok("POST", "/services", json_body=SERVICE)
    await client.ok("POST", "/services/s1/routes", json_body={"name": "r1", "paths": ["/"]})
    await client.ok("POST", "/consumers", json_body={"username": "bob"})
    return client


BAD_BODIES: list[tuple[str, str, bytes, int, str]] = [
    # (method, path, body, status, message fragment); content type JSON
    ("POST", "/services", b"{not json", 400, "Cannot parse JSON body"),
    ("POST", "/services", b"[1, 2]", 400, "expected an object"),
    ("POST", "/services", b'"text"', 400, "expected an object"),
    ("POST", "/services", b"[" * 100_000, 400, "Cannot parse JSON body"),
    ("POST", "/services", b"\xff\xfe\x00", 400, "Cannot parse JSON body"),
    ("POST", "/services", b'{"host": 5}', 400, "host: expected a string"),
    ("POST", "/services", b'{"host": "a", "port": "80x"}', 400, "port: expected an integer"),
    ("POST", "/services", b'{"host": "a", "port": 70000}', 400, "port: value should be between"),
    ("POST", "/services", b'{"host": "a", "bogus": 1}', 400, "bogus: unknown field"),
    ("POST", "/services", b'{"host": "a", "retries": true}', 400, "retries: expected an integer"),
    ("POST", "/services", b'{"url": "not a url"}', 400, "schema violation"),
    ("POST", "/services", b"{}", 400, "host: required field missing"),
    ("POST", "/services", b'{"name": "s1", "host": "x"}', 409, "UNIQUE violation"),
    ("POST", "/services", b'{"id": "not-a-uuid", "host": "x"}', 400, "id: expected a valid UUID"),
    # A reference by a field that is not the referenced entity's endpoint key (found by the
    # fuzz test: it used to reach the store and answer 500).
    ("POST", "/snis", b'{"name": "a.test", "certificate": {"algorithm": "x"}}', 400, "certificate"),
    ("PATCH", "/services/s1", b'{"protocol": "gopher"}', 400, "protocol: expected one of"),
    ("PATCH", "/services/s1", b'{"tags": "x"}', 400, "tags: expected a set"),
    ("PUT", "/services/s1", b'{"port": 1}', 400, "host: required field missing"),
    ("PUT", "/services/bad name!", b'{"host": "a"}', 400, "name: invalid value"),
    ("POST", "/routes", b'{"paths": ["/"], "service": {"id": "nope"}}', 400, "expected a valid"),
    (
        "POST",
        "/routes",
        b'{"paths": ["/"], "service": {"id": "00000000-0000-4000-8000-000000000000"}}',
        400,
        "does not reference an existing 'services' entity",
    ),
    ("POST", "/routes", b'{"paths": ["/"], "service": {"name": "zz"}}', 400, "does not reference"),
    ("POST", "/routes", b'{"paths": ["/"], "service": 5}', 400, "service"),
    ("POST", "/routes", b'{"protocols": ["http"]}', 400, "must set one of"),
    ("POST", "/routes", b'{"paths": ["no-slash"]}', 400, "paths"),
    ("POST", "/routes", b'{"name": "r1", "paths": ["/x"]}', 409, "UNIQUE violation"),
    ("POST", "/consumers", b"{}", 400, "at least one of these fields must be non-empty"),
    ("POST", "/consumers", b'{"username": "bob"}', 409, "UNIQUE violation"),
    ("POST", "/plugins", b'{"name": 5}', 400, "name: expected a string"),
    ("POST", "/plugins", b'{"name": "key-auth", "config": {"nope": 1}}', 400, "unknown field"),
    ("POST", "/plugins", b'{"name": "key-auth", "config": "x"}', 400, "config"),
    ("POST", "/plugins", b'{"name": "key-auth", "protocols": ["tcp"]}', 400, "protocols"),
    ("POST", "/upstreams", b'{"name": "u", "algorithm": "random"}', 400, "algorithm"),
    ("POST", "/certificates", b'{"cert": "x"}', 400, "key: required field missing"),
    ("POST", "/schemas/services/validate", b'{"bogus": 1}', 400, "bogus: unknown field"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    BAD_BODIES,
    ids=[f"{m} {p} {b[:30]!r}" for m, p, b, _, _ in BAD_BODIES],
)
async def test_bad_bodies(
    seeded: Client,
    store: Store,
    method: str,
    path: str,
    body: bytes,
    status: int,
    fragment: str,
) -> None:
    before = await snapshot(store)
    reply = await seeded.request(method, path, body=body, content_type="application/json")
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    payload = reply.json
    assert fragment in payload["message"] or fragment in str(payload.get("fields")), payload
    if status == 400 and "code" in payload:
        assert payload["name"] in ("schema violation", "foreign key violation")
        assert isinstance(payload["fields"], dict)
    if status == 409:
        assert (payload["code"], payload["name"]) == (5, "unique constraint violation")
    assert await snapshot(store) == before


BAD_FORMS: list[tuple[str, bytes, str]] = [
    ("application/x-www-form-urlencoded", b"name=x&paths[100000]=/a", "index of"),
    ("application/x-www-form-urlencoded", b"host=\xff", "not UTF-8"),
    ("application/x-www-form-urlencoded", b"host=a&port=eighty", "port: expected an integer"),
    ("application/x-www-form-urlencoded", b"host=a&enabled=maybe", "enabled: expected a boolean"),
    ("multipart/form-data; boundary=XX", b"garbage", "Cannot parse multipart body"),
    ("multipart/form-data", b"--XX\r\n\r\n--XX--", "Cannot parse multipart body"),
]


@pytest.mark.parametrize(("ctype", "body", "fragment"), BAD_FORMS)
async def test_bad_forms(
    seeded: Client, store: Store, ctype: str, body: bytes, fragment: str
) -> None:
    before = await snapshot(store)
    reply = await seeded.request("POST", "/services", body=body, content_type=ctype)
    assert reply.status == 400, reply.body
    assert fragment in reply.body.decode(), reply.body
    assert await snapshot(store) == before


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/xml", "application/octet-stream", "image/png"]
)
async def test_unsupported_content_type_is_415(seeded: Client, store: Store, ctype: str) -> None:
    before = await snapshot(store)
    reply = await seeded.request("POST", "/services", body=b"host=x", content_type=ctype)
    assert reply.status == 415
    assert reply.json == {"message": f"Unsupported Content-Type: {ctype}"}
    assert await snapshot(store) == before


async def test_multipart_body_is_accepted(seeded: Client) -> None:
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="name"\r\n\r\nmp\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="host"\r\n\r\nmp.test\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="tags[]"\r\n\r\nt1\r\n'
        b"--XX--\r\n"
    )
    created = await seeded.ok(
        "POST", "/services", body=body, content_type="multipart/form-data; boundary=XX"
    )
    assert (created["name"], created["host"], created["tags"]) == ("mp", "mp.test", ["t1"])


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("size=0", "size must be an integer between 1 and 1000"),
        ("size=1001", "size must be an integer between 1 and 1000"),
        ("size=-1", "size must be an integer between 1 and 1000"),
        ("size=abc", "size must be a number"),
        ("size=", "size must be a number"),
        ("offset=%%%", "is not a valid offset"),
        ("offset=bm90IGpzb24", "is not a valid offset"),
        ("offset=WzFd", "is not a valid offset"),
        ("tags=a,b/c", "cannot mix"),
    ],
)
async def test_bad_list_options(seeded: Client, query: str, fragment: str) -> None:
    reply = await seeded.get(f"/services?{query}")
    assert reply.status == 400
    assert fragment in reply.json["message"]
    assert reply.json["name"] in ("invalid size", "invalid offset", "invalid options")


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/services/s1/nope",
        "/services/unknown",
        "/services/00000000-0000-4000-8000-000000000000",
        "/services/unknown/routes",
        "/services/s1/routes/unknown",
        "/consumers/unknown/key-auth",
        "/schemas/nope",
        "/schemas/plugins/nope",
        "/clustering/data-planes/x",
        "/upstreams/none/targets/all",
    ],
)
async def test_unknown_paths_are_404(seeded: Client, path: str) -> None:
    reply = await seeded.get(path)
    assert reply.status == 404
    assert "message" in reply.json


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/services"),
        ("PATCH", "/services"),
        ("PUT", "/consumers"),
        ("POST", "/services/s1"),
        ("POST", "/key-auths"),
        ("DELETE", "/routes/r1/service"),
        ("PUT", "/status"),
        ("DELETE", "/"),
        ("TRACE", "/services"),
    ],
)
async def test_wrong_methods_are_405(seeded: Client, store: Store, method: str, path: str) -> None:
    before = await snapshot(store)
    reply = await seeded.request(method, path)
    assert reply.status == 405
    assert reply.json == {"message": "Method not allowed"}
    assert await snapshot(store) == before


async def test_options_lists_the_methods(seeded: Client) -> None:
    reply = await seeded.request("OPTIONS", "/services/s1")
    assert reply.status == 204
    assert reply.headers["allow"] == "DELETE, GET, OPTIONS, PATCH, PUT"


async def test_head_answers_like_get(seeded: Client) -> None:
    reply = await seeded.request("HEAD", "/services/s1")
    assert reply.status == 200


async def test_a_refused_cascade_changes_nothing(seeded: Client, store: Store) -> None:
    before = await snapshot(store)
    assert (await seeded.delete("/services/s1")).status == 400
    assert await snapshot(store) == before


async def test_database_off_is_read_only() -> None:
    config: dict[str, Any] = {
        "services": [
            {"id": "00000000-0000-4000-8000-000000000001", "name": "s", "host": "h", "tags": None}
        ]
    }
    memory = MemoryStore(config)
    client = Client(build_app(memory, read_only_reason="running without a database"))
    assert (await client.ok("GET", "/services/s"))["host"] == "h"
    assert len((await client.ok("GET", "/services"))["data"]) == 1
    for method, path in [
        ("POST", "/services"),
        ("PUT", "/services/s"),
        ("PATCH", "/services/s"),
        ("DELETE", "/services/s"),
        ("POST", "/services/s/routes"),
    ]:
        reply = await client.request(method, path, json_body={"host": "x"})
        assert reply.status == 405, (method, path)
        assert reply.json["name"] == "operation unsupported"
        assert "running without a database" in reply.json["message"]
    assert await memory.export() == (1, {"services": config["services"]})
    bad = await client.get("/services?offset=bad")
    assert bad.status == 400
