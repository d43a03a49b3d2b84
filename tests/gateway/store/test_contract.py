"""The storage contract, run on both backends (see conftest.py)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import trio

from gateway.schema import EntityError, ErrorCode
from gateway.store import Change, Store, open_store

from .conftest import (
    SCHEMAS,
    DBSettings,
    consumer,
    credential,
    new_id,
    plugin,
    route,
    service,
)


def _code(exc: pytest.ExceptionInfo[EntityError]) -> ErrorCode:
    return exc.value.code


# -- basic operations -------------------------------------------------------------------------


async def test_insert_get_get_by_count(store: Store) -> None:
    s = service("billing", tags=["a"])
    assert await store.insert("services", s) == s
    assert await store.get("services", s["id"]) == s
    assert await store.get_by("services", "name", "billing") == s
    assert await store.get_by("services", "id", s["id"]) == s
    assert await store.get("services", new_id()) is None
    assert await store.get_by("services", "name", "other") is None
    assert await store.count("services") == 1
    assert await store.count("routes") == 0


async def test_rows_round_trip_as_json(store: Store) -> None:
    s = service("ünïcode", tags=["x", "y"], port=8443)
    s["nested"] = {"a": [1, 2.5, None, True], "b": {"c": "d"}}
    await store.insert("services", s)
    got = await store.get("services", s["id"])
    assert got == s
    assert list(got or {}) == list(s)  # key order is kept


async def test_get_by_refuses_non_unique_fields(store: Store) -> None:
    with pytest.raises(ValueError, match="neither unique"):
        await store.get_by("services", "host", "example.com")
    with pytest.raises(ValueError, match="unknown entity"):
        await store.get("nope", new_id())


async def test_primary_key_violation(store: Store) -> None:
    s = service("a")
    await store.insert("services", s)
    with pytest.raises(EntityError) as exc:
        await store.insert("services", {**s, "name": "b"})
    assert _code(exc) == ErrorCode.PRIMARY_KEY_VIOLATION
    assert exc.value.message == f"primary key violation on key '{{id=\"{s['id']}\"}}'"
    assert exc.value.status == 409


async def test_update_replaces_whole_row(store: Store) -> None:
    s = service("a", tags=["t"])
    await store.insert("services", s)
    replaced = {"id": s["id"], "name": "b", "host": "h", "port": 1, "tags": None}
    assert await store.update("services", replaced) == replaced
    assert await store.get("services", s["id"]) == replaced
    assert await store.get_by("services", "name", "a") is None
    assert await store.get_by("services", "name", "b") == replaced
    rows, _ = await store.page("services", tags=["t"])
    assert rows == []


async def test_update_missing_is_not_found(store: Store) -> None:
    s = service("a")
    with pytest.raises(EntityError) as exc:
        await store.update("services", s)
    assert _code(exc) == ErrorCode.NOT_FOUND
    assert exc.value.status == 404
    assert exc.value.message == f"could not find the entity with primary key '{{id=\"{s['id']}\"}}'"


async def test_upsert_inserts_then_replaces(store: Store) -> None:
    s = service("a")
    await store.upsert("services", s)
    await store.upsert("services", {**s, "name": "b"})
    assert (await store.get("services", s["id"]) or {})["name"] == "b"
    assert await store.count("services") == 1
    changes = await store.changes_since(0)
    assert [c.op for c in changes] == ["insert", "update"]


# -- unique and foreign keys ------------------------------------------------------------------


async def test_unique_violation_messages(store: Store) -> None:
    await store.insert("services", service("a"))
    with pytest.raises(EntityError) as exc:
        await store.insert("services", service("a"))
    assert _code(exc) == ErrorCode.UNIQUE_VIOLATION
    assert exc.value.message == "UNIQUE violation detected on '{name=\"a\"}'"
    assert exc.value.fields == {"name": "a"}
    assert exc.value.status == 409
    b = service("b")
    await store.insert("services", b)
    with pytest.raises(EntityError) as exc:
        await store.update("services", {**b, "name": "a"})
    assert _code(exc) == ErrorCode.UNIQUE_VIOLATION
    # keeping one's own name is fine; a freed name can be reused
    await store.update("services", {**b, "port": 81})
    await store.update("services", {**b, "name": "c"})
    await store.insert("services", service("b"))


async def test_null_unique_values_do_not_collide(store: Store) -> None:
    await store.insert("services", service(None))
    await store.insert("services", service(None))
    await store.insert("consumers", consumer("u1", custom_id="c1"))
    with pytest.raises(EntityError) as exc:
        await store.insert("consumers", consumer("u2", custom_id="c1"))
    assert exc.value.message == "UNIQUE violation detected on '{custom_id=\"c1\"}'"


async def test_cache_key_uniqueness(store: Store) -> None:
    s = service("s")
    await store.insert("services", s)
    await store.insert("plugins", plugin("key-auth", service=s["id"]))
    await store.insert("plugins", plugin("key-auth"))  # global: a different cache key
    await store.insert("plugins", plugin("cors", service=s["id"]))
    with pytest.raises(EntityError) as exc:
        await store.insert("plugins", plugin("key-auth", service=s["id"]))
    assert _code(exc) == ErrorCode.UNIQUE_VIOLATION
    assert exc.value.message == (
        "UNIQUE violation detected on "
        f'\'{{consumer=null,name="key-auth",route=null,service={{id="{s["id"]}"}}}}\''
    )
    with pytest.raises(EntityError):
        await store.insert("plugins", plugin("key-auth"))


async def test_foreign_key_must_exist(store: Store) -> None:
    missing = new_id()
    with pytest.raises(EntityError) as exc:
        await store.insert("routes", route(missing, "r"))
    assert _code(exc) == ErrorCode.FOREIGN_KEY_VIOLATION
    assert exc.value.message == (
        f"the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'services' entity."
    )
    assert exc.value.fields == {"service": {"id": missing}}
    assert exc.value.status == 400
    s = service("s")
    await store.insert("services", s)
    r = route(s["id"], "r")
    await store.insert("routes", r)
    with pytest.raises(EntityError) as exc:
        await store.update("routes", {**r, "service": {"id": missing}})
    assert _code(exc) == ErrorCode.FOREIGN_KEY_VIOLATION
    await store.update("routes", {**r, "service": None})


# -- deletes ----------------------------------------------------------------------------------


async def test_delete_restrict(store: Store) -> None:
    s = service("s")
    await store.insert("services", s)
    await store.insert("routes", route(s["id"], "r"))
    version = await store.current_version()
    with pytest.raises(EntityError) as exc:
        await store.delete("services", s["id"])
    assert _code(exc) == ErrorCode.FOREIGN_KEY_VIOLATION
    assert exc.value.message == "an existing 'routes' entity references this 'services' entity"
    assert exc.value.fields == {"@referenced_by": "routes"}
    assert await store.get("services", s["id"]) == s
    assert await store.current_version() == version


async def test_delete_cascades_recursively(store: Store) -> None:
    s = service("s")
    r = route(s["id"], "r")
    c = consumer("alice")
    await store.insert("services", s)
    await store.insert("routes", r)
    await store.insert("consumers", c)
    cred = credential(c["id"], "k1")
    await store.insert("credentials", cred)
    p_route = plugin("p1", route=r["id"])
    p_consumer = plugin("p2", consumer=c["id"])
    p_both = plugin("p3", route=r["id"], consumer=c["id"])
    for p in (p_route, p_consumer, p_both):
        await store.insert("plugins", p)
    before = await store.current_version()
    assert await store.delete("consumers", c["id"]) is True
    assert await store.get("credentials", cred["id"]) is None
    assert await store.get("plugins", p_consumer["id"]) is None
    assert await store.get("plugins", p_both["id"]) is None
    assert await store.get("plugins", p_route["id"]) == p_route
    assert await store.get_by("credentials", "key", "k1") is None
    changes = await store.changes_since(before)
    assert {c.version for c in changes} == {before + 1}
    assert sorted((ch.entity, ch.id) for ch in changes) == sorted(
        [
            ("consumers", c["id"]),
            ("credentials", cred["id"]),
            ("plugins", p_consumer["id"]),
            ("plugins", p_both["id"]),
        ]
    )
    assert all(ch.op == "delete" for ch in changes)
    assert changes[-1].entity == "consumers"
    # the key is free again
    c2 = consumer("bob")
    await store.insert("consumers", c2)
    await store.insert("credentials", credential(c2["id"], "k1"))


async def test_cascade_is_blocked_by_a_deeper_restrict(store: Store) -> None:
    # plugins cascade from services; routes restrict services: the route blocks everything.
    s = service("s")
    await store.insert("services", s)
    p = plugin("p", service=s["id"])
    await store.insert("plugins", p)
    r = route(s["id"], "r")
    await store.insert("routes", r)
    with pytest.raises(EntityError) as exc:
        await store.delete("services", s["id"])
    assert exc.value.message == "an existing 'routes' entity references this 'services' entity"
    assert await store.get("plugins", p["id"]) == p
    await store.delete("routes", r["id"])
    assert await store.delete("services", s["id"]) is True
    assert await store.get("plugins", p["id"]) is None


async def test_delete_sets_null_references(store: Store) -> None:
    s = service("s")
    await store.insert("services", s)
    note: dict[str, Any] = {"id": new_id(), "text": "hi", "service": {"id": s["id"]}}
    await store.insert("notes", note)
    before = await store.current_version()
    await store.delete("services", s["id"])
    assert await store.get("notes", note["id"]) == {**note, "service": None}
    changes = await store.changes_since(before)
    assert [(c.entity, c.op) for c in changes] == [("notes", "update"), ("services", "delete")]
    rows, _ = await store.page("notes", filters={"service": s["id"]})
    assert rows == []
    assert await store.get_by("notes", "text", "hi") == {**note, "service": None}


async def test_delete_missing_returns_false_without_a_version(store: Store) -> None:
    assert await store.delete("services", new_id()) is False
    assert await store.current_version() == 0
    assert await store.changes_since(0) == []


# -- pagination, tags, filters ----------------------------------------------------------------


async def test_pagination_walks_everything_in_id_order(store: Store) -> None:
    rows = [service(f"s{i}") for i in range(25)]
    for s in rows:
        await store.insert("services", s)
    seen: list[dict[str, Any]] = []
    offset: str | None = None
    pages = 0
    while True:
        page, offset = await store.page("services", size=10, offset=offset)
        seen += page
        pages += 1
        if offset is None:
            break
    assert pages == 3
    assert seen == sorted(rows, key=lambda r: r["id"])
    exact, next_offset = await store.page("services", size=25)
    assert len(exact) == 25
    assert next_offset is None
    default, _ = await store.page("services")
    assert len(default) == 25


async def test_page_offset_is_stable_under_inserts(store: Store) -> None:
    for i in range(6):
        await store.insert("services", service(f"s{i}"))
    first, offset = await store.page("services", size=3)
    assert offset is not None
    for i in range(6, 12):
        await store.insert("services", service(f"s{i}"))
    second, _ = await store.page("services", size=100, offset=offset)
    assert all(r["id"] > first[-1]["id"] for r in second)
    assert {r["id"] for r in first}.isdisjoint(r["id"] for r in second)


@pytest.mark.parametrize("size", [0, -1, 1001])
async def test_invalid_page_size(store: Store, size: int) -> None:
    with pytest.raises(EntityError) as exc:
        await store.page("services", size=size)
    assert _code(exc) == ErrorCode.INVALID_SIZE
    assert exc.value.message == "size must be an integer between 1 and 1000"


async def test_max_page_size(store: Store) -> None:
    rows, offset = await store.page("services", size=1000)
    assert rows == []
    assert offset is None


@pytest.mark.parametrize(
    ("offset", "why"),
    [
        ("!!!", "bad base64 encoding"),
        ("a", "bad base64 encoding"),
        (base64.urlsafe_b64encode(b"not json").decode(), "bad json encoding"),
        (base64.urlsafe_b64encode(b'{"x": 1}').decode(), "bad json encoding"),
    ],
)
async def test_invalid_offset(store: Store, offset: str, why: str) -> None:
    with pytest.raises(EntityError) as exc:
        await store.page("services", offset=offset)
    assert _code(exc) == ErrorCode.INVALID_OFFSET
    assert exc.value.message == f"'{offset}' is not a valid offset: {why}"
    with pytest.raises(EntityError):
        await store.page_data_planes(offset=offset)


async def test_tags_filter_and_or(store: Store) -> None:
    ab = service("ab", tags=["a", "b"])
    a = service("a", tags=["a"])
    c = service("c", tags=["c"])
    none = service("none")
    for s in (ab, a, c, none):
        await store.insert("services", s)

    async def names(tags: list[str], mode: Any = "and", size: int = 100) -> list[str]:
        found: list[str] = []
        offset: str | None = None
        while True:
            rows, offset = await store.page(
                "services", tags=tags, tags_mode=mode, size=size, offset=offset
            )
            found += [r["name"] for r in rows]
            if offset is None:
                return sorted(found)

    assert await names(["a"]) == ["a", "ab"]
    assert await names(["a", "b"]) == ["ab"]
    assert await names(["a", "a", "b"]) == ["ab"]
    assert await names(["a", "c"]) == []
    assert await names(["a", "c"], "or") == ["a", "ab", "c"]
    assert await names(["a", "c"], "or", size=1) == ["a", "ab", "c"]
    assert await names(["zzz"], "or") == []
    await store.update("services", {**ab, "tags": ["b"]})
    assert await names(["a"]) == ["a"]
    with pytest.raises(ValueError, match="no tags"):
        await store.page("credentials", tags=["a"])


async def test_filter_by_foreign_key(store: Store) -> None:
    s1, s2 = service("s1"), service("s2")
    await store.insert("services", s1)
    await store.insert("services", s2)
    r1 = [route(s1["id"], f"a{i}", tags=["x"] if i % 2 else None) for i in range(5)]
    r2 = [route(s2["id"], f"b{i}") for i in range(3)]
    for r in r1 + r2:
        await store.insert("routes", r)
    rows, offset = await store.page("routes", filters={"service": s1["id"]}, size=3)
    more, last = await store.page("routes", filters={"service": s1["id"]}, offset=offset)
    assert last is None
    assert {r["id"] for r in rows + more} == {r["id"] for r in r1}
    tagged, _ = await store.page("routes", filters={"service": s1["id"]}, tags=["x"])
    assert len(tagged) == 2
    none, _ = await store.page("routes", filters={"service": new_id()})
    assert none == []
    with pytest.raises(ValueError, match="not a foreign key"):
        await store.page("routes", filters={"name": "a0"})


# -- transactions, versions, change log -------------------------------------------------------


async def test_failed_writes_change_nothing(store: Store) -> None:
    s = service("s")
    await store.insert("services", s)
    version = await store.current_version()
    snapshot = await store.export()
    failures: list[Any] = [
        store.insert("services", service("s")),
        store.insert("routes", route(new_id(), "r")),
        store.update("services", service("x")),
        store.insert("services", s),
        store.replace_all({"services": [service("a"), service("a")]}),
        store.replace_all({"routes": [route(new_id())]}),
    ]
    for failing in failures:
        with pytest.raises(EntityError):
            await failing
    assert await store.current_version() == version
    assert await store.export() == snapshot
    assert len(await store.changes_since(0)) == 1


async def test_versions_and_changes_since(store: Store) -> None:
    assert await store.current_version() == 0
    s = service("s")
    await store.insert("services", s)
    assert await store.current_version() == 1
    r = route(s["id"], "r")
    await store.insert("routes", r)
    await store.update("routes", {**r, "name": "r2"})
    await store.delete("routes", r["id"])
    assert await store.current_version() == 4
    assert await store.changes_since(0) == [
        Change(version=1, entity="services", id=s["id"], op="insert"),
        Change(version=2, entity="routes", id=r["id"], op="insert"),
        Change(version=3, entity="routes", id=r["id"], op="update"),
        Change(version=4, entity="routes", id=r["id"], op="delete"),
    ]
    assert [c.version for c in await store.changes_since(2)] == [3, 4]
    assert await store.changes_since(4) == []
    # data planes are not configuration
    await store.upsert_data_plane({"id": new_id(), "last_seen": 1.0})
    assert await store.current_version() == 4


async def test_replace_all(store: Store) -> None:
    keep = service("keep")
    change = service("change")
    drop = service("drop")
    for s in (keep, change, drop):
        await store.insert("services", s)
    r = route(drop["id"], "r")
    await store.insert("routes", r)
    before = await store.current_version()
    new_service = service("new")
    new_route = route(new_service["id"], "nr")
    config: dict[str, Any] = {
        "_format_version": "3.0",
        "services": [keep, {**change, "port": 9}, new_service],
        "routes": [new_route],
    }
    version = await store.replace_all(config)
    assert version == before + 1 == await store.current_version()
    got_version, exported = await store.export()
    assert got_version == version
    assert sorted(r["name"] for r in exported["services"]) == ["change", "keep", "new"]
    assert exported["routes"] == [new_route]
    assert exported["consumers"] == []
    assert set(exported) == set(SCHEMAS)
    changes = {(c.entity, c.id): c.op for c in await store.changes_since(before)}
    assert changes == {
        ("services", change["id"]): "update",
        ("services", drop["id"]): "delete",
        ("services", new_service["id"]): "insert",
        ("routes", r["id"]): "delete",
        ("routes", new_route["id"]): "insert",
    }
    assert await store.get_by("services", "name", "drop") is None
    assert await store.get_by("routes", "name", "nr") == new_route
    # the same content again changes nothing and keeps the version
    assert await store.replace_all(config) == version
    assert await store.changes_since(version) == []
    with pytest.raises(EntityError) as exc:
        await store.replace_all({"routes": [route(new_id())]})
    assert _code(exc) == ErrorCode.FOREIGN_KEY_VIOLATION
    with pytest.raises(ValueError, match="unknown entity"):
        await store.replace_all({"bogus": []})
    assert await store.replace_all({}) == version + 1
    assert await store.count("services") == 0


async def test_snapshot_matches_export(store: Store) -> None:
    await store.insert("services", service("a"))
    snap = await store.snapshot()
    version, entities = await store.export()
    assert snap.version == version == 1
    assert dict(snap.entities) == entities


# -- notifications ----------------------------------------------------------------------------


async def test_watch_same_store_wakes_at_once(store: Store) -> None:
    got: list[tuple[int, float]] = []
    first = trio.Event()

    async def watcher() -> None:
        async for version in store.watch(0):
            got.append((version, trio.current_time()))
            first.set()
            if version >= 2:
                return

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            await store.insert("services", service("a"))
            await first.wait()
            assert got[0][1] - start < 0.3  # no polling involved: the write wakes it
            await store.insert("services", service("b"))
    assert [v for v, _ in got][-1] == 2


async def test_wait_for_version_from_another_store(store: Store, settings: DBSettings) -> None:
    assert await store.wait_for_version(0, 0.01) == 0
    async with open_store(settings, SCHEMAS) as other:
        result: list[tuple[int, float]] = []

        async def waiter() -> None:
            version = await store.wait_for_version(0, 5)
            result.append((version, trio.current_time()))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.sleep(0.05)
                start = trio.current_time()
                await other.insert("services", service("a"))
        assert result[0][0] == 1
        # SQLite polls every 50 ms; PostgreSQL is notified.
        assert result[0][1] - start < 0.5


async def test_concurrent_writers_get_unique_gap_free_versions(
    store: Store, settings: DBSettings
) -> None:
    per_task = 10
    async with open_store(settings, SCHEMAS) as a, open_store(settings, SCHEMAS) as b:
        stores = [store, a, b]

        async def writer(target: Store, n: int) -> None:
            for i in range(per_task):
                await target.insert("services", service(f"w{n}-{i}"))

        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(writer, stores[n % 3], n)
    total = 6 * per_task
    assert await store.count("services") == total
    changes = await store.changes_since(0)
    assert [c.version for c in changes] == list(range(1, total + 1))
    assert len({c.id for c in changes}) == total


# -- data planes ------------------------------------------------------------------------------


def _dp(id: str, last_seen: float, **kw: Any) -> dict[str, Any]:
    return {
        "id": id,
        "hostname": "dp.local",
        "ip": "127.0.0.1",
        "last_seen": last_seen,
        "config_hash": "0" * 32,
        "config_version": 3,
        "version": "3.9.0",
        "sync_status": "normal",
        "labels": {"region": "eu"},
        "cert_details": {"expiry_timestamp": 1_900_000_000},
        "connected": True,
        "connected_since": last_seen,
        "disconnected_at": None,
        "last_error": None,
        "cp_node_id": "cp-1",
        "updated_at": last_seen,
        "ttl": 1_209_600,
        **kw,
    }


async def test_data_planes(store: Store) -> None:
    ids = sorted(new_id() for _ in range(5))
    for i, id in enumerate(ids):
        await store.upsert_data_plane(_dp(id, 100.0 + i))
    assert await store.get_data_plane(ids[0]) == _dp(ids[0], 100.0)
    assert await store.get_data_plane(new_id()) is None
    await store.upsert_data_plane(_dp(ids[0], 200.0, sync_status="version_incompatible"))
    assert (await store.get_data_plane(ids[0]) or {})["sync_status"] == "version_incompatible"
    first, offset = await store.page_data_planes(size=2)
    rest, end = await store.page_data_planes(size=10, offset=offset)
    assert end is None
    assert [r["id"] for r in first + rest] == ids
    assert await store.purge_data_planes(102.5) == 2  # ids[1], ids[2]; ids[0] was refreshed
    remaining, _ = await store.page_data_planes()
    assert [r["id"] for r in remaining] == [ids[0], ids[3], ids[4]]
    assert await store.current_version() == 0
    with pytest.raises(ValueError, match="last_seen"):
        await store.upsert_data_plane({"id": new_id()})
