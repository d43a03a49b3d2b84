"""export_declarative, load_declarative and the dumpers: export then import is exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.declarative import (
    DeclarativeError,
    dump_json,
    dump_yaml,
    export_declarative,
    load_declarative,
    parse_declarative,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "kong" / "kong.yml"


@pytest.fixture
def config() -> dict[str, Any]:
    return parse_declarative(load_declarative(FIXTURE), now=1_700_000_000)


@pytest.mark.parametrize("nested", [False, True])
def test_fixture_round_trips(config: dict[str, Any], nested: bool) -> None:
    doc = export_declarative(config, nested=nested)
    assert doc["_format_version"] == "3.0"
    assert parse_declarative(doc) == config
    assert parse_declarative(load_declarative(dump_yaml(doc))) == config
    assert parse_declarative(load_declarative(dump_json(doc))) == config


def test_export_shapes(config: dict[str, Any]) -> None:
    flat = export_declarative(config)
    route = flat["routes"][0]
    assert isinstance(route["service"], str)  # foreign keys as ids
    assert "snis" not in route  # null with a null default: dropped
    assert "created_at" in route
    nested = export_declarative(config, nested=True)
    assert "routes" not in nested  # every route has a service
    assert "targets" not in nested
    assert "snis" not in nested
    orders = next(s for s in nested["services"] if s["name"] == "orders")
    assert {r["name"] for r in orders["routes"]} == {"orders-api", "orders-by-id"}
    api = next(r for r in orders["routes"] if r["name"] == "orders-api")
    assert [p["name"] for p in api["plugins"]] == ["cors"]
    assert "route" not in api["plugins"][0]
    assert [p["name"] for p in orders["plugins"]] == ["key-auth"]
    alice = next(c for c in nested["consumers"] if c["username"] == "alice")
    assert len(alice["keyauth_credentials"]) == 2
    assert len(nested["plugins"]) == 1  # the global rate-limiting plugin
    assert len(nested["certificates"][0]["snis"]) == 2


def test_export_keeps_explicit_nulls_with_non_null_defaults() -> None:
    config = parse_declarative(
        {"_format_version": "3.0", "routes": [{"paths": ["/"], "regex_priority": None}]}
    )
    assert config["routes"][0]["regex_priority"] is None
    doc = export_declarative(config)
    assert doc["routes"][0]["regex_priority"] is None
    assert parse_declarative(doc) == config


def test_export_ignores_unknown_keys_and_empty_lists() -> None:
    entities: dict[str, Any] = {"_format_version": "3.0", "services": [], "nonsense": [1]}
    doc = export_declarative(entities)
    assert doc == {"_format_version": "3.0"}


# -- property: any valid document survives export/import -----------------------------------------

names = st.text("abcdefghijklmnop-_.~", min_size=1, max_size=8)
paths = st.lists(st.sampled_from(["/", "/a", "/b/c", "~/x/[0-9]+"]), min_size=1, max_size=3)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    service_names = draw(st.lists(names, max_size=4, unique=True))
    services = []
    for name in service_names:
        routes = [
            {
                "paths": draw(paths),
                "strip_path": draw(st.booleans()),
                **({"name": f"{name}-r{i}"} if draw(st.booleans()) else {}),
            }
            for i in range(draw(st.integers(0, 2)))
        ]
        service: dict[str, Any] = {
            "name": name,
            "url": draw(st.sampled_from(["http://a.test", "https://b.test:8443/p", "tcp://c:1"])),
            "enabled": draw(st.booleans()),
            "tags": draw(st.one_of(st.none(), st.lists(names, max_size=2, unique=True))),
        }
        if service["url"].startswith("tcp"):
            routes = []
        if routes:
            service["routes"] = routes
        if draw(st.booleans()):
            service["plugins"] = [{"name": "cors", "config": {"max_age": draw(st.integers(1, 9))}}]
        services.append(service)
    consumers = [
        {
            "username": u,
            "keyauth_credentials": [{"key": f"{u}-{i}"} for i in range(draw(st.integers(0, 2)))],
        }
        for u in draw(st.lists(names, max_size=3, unique=True))
    ]
    upstreams = [
        {
            "name": f"up{i}.test",
            "slots": draw(st.integers(10, 65536)),
            "targets": [
                {"target": f"10.0.0.{j + 1}", "weight": draw(st.integers(0, 65535))}
                for j in range(draw(st.integers(0, 2)))
            ],
        }
        for i in range(draw(st.integers(0, 2)))
    ]
    plugins = []
    if draw(st.booleans()):
        plugins.append({"name": "rate-limiting", "config": {"minute": draw(st.integers(1, 99))}})
    return {
        "_format_version": "3.0",
        "services": services,
        "consumers": consumers,
        "upstreams": upstreams,
        "plugins": plugins,
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), nested=st.booleans())
def test_export_import_round_trip(doc: dict[str, Any], nested: bool) -> None:
    config = parse_declarative(doc)
    exported = export_declarative(config, nested=nested)
    assert parse_declarative(exported) == config
    assert parse_declarative(json.loads(dump_json(exported))) == config


# -- loading -------------------------------------------------------------------------------------


def test_load_yaml_json_and_paths(tmp_path: Path) -> None:
    doc = {"_format_version": "3.0", "consumers": [{"username": "u"}]}
    assert load_declarative(dump_yaml(doc)) == doc
    assert load_declarative(dump_json(doc)) == doc
    assert load_declarative(dump_json(doc).encode()) == doc
    file = tmp_path / "kong.yml"
    file.write_text(dump_yaml(doc), encoding="utf-8")
    assert load_declarative(file) == doc
    assert load_declarative(str(file)) == doc


@pytest.mark.parametrize(
    "text", ["{not json", "a: [unclosed", "- a list\n- at the top\n", "", "just text"]
)
def test_load_errors(text: str) -> None:
    with pytest.raises(DeclarativeError) as info:
        load_declarative(text)
    assert info.value.message.startswith("failed parsing declarative configuration: ")


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DeclarativeError, match="failed reading declarative configuration"):
        load_declarative(tmp_path / "missing.yml")


def test_dump_yaml_writes_pem_as_blocks(config: dict[str, Any]) -> None:
    text = dump_yaml(export_declarative(config))
    assert "cert: |" in text
    assert text.startswith("_format_version: '3.0'\n")


def test_load_names_a_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(DeclarativeError, match="failed reading declarative configuration"):
        load_declarative(str(tmp_path / "kong.yml"))
