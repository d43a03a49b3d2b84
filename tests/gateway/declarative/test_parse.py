"""parse_declarative: nested and flat forms, references, ids, errors, runtime view."""

from __future__ import annotations

import copy
import importlib
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.declarative import (
    ID_NAMESPACE,
    DeclarativeError,
    load_declarative,
    parse_declarative,
    runtime_view,
    validate_config,
)
from gateway.schema.entities import ENTITIES

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "kong" / "kong.yml"


def kong_id(entity: str, key: str) -> str:
    return str(uuid.uuid5(uuid.uuid5(ID_NAMESPACE, entity), key))


def by(config: dict[str, Any], entity: str, **match: Any) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        e for e in config[entity] if all(e.get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, (entity, match, found)
    return found[0]


def parse_errors(doc: dict[str, Any]) -> DeclarativeError:
    with pytest.raises(DeclarativeError) as info:
        parse_declarative(doc)
    return info.value


@pytest.fixture
def fixture_doc() -> dict[str, Any]:
    doc: dict[str, Any] = load_declarative(FIXTURE)
    return doc


# -- the realistic fixture ---------------------------------------------------------------------


def test_fixture_parses_to_the_runtime_shape(fixture_doc: dict[str, Any]) -> None:
    config = parse_declarative(fixture_doc)
    assert config["_format_version"] == "3.0"
    counts = {name: len(config[name]) for name in ENTITIES}
    assert counts == {
        "certificates": 1,
        "ca_certificates": 1,
        "snis": 2,
        "services": 4,
        "routes": 6,
        "consumers": 2,
        "keyauth_credentials": 4,
        "upstreams": 1,
        "targets": 3,
        "plugins": 6,
    }
    orders = by(config, "services", name="orders")
    assert orders["id"] == kong_id("services", "orders")
    assert (orders["protocol"], orders["host"], orders["port"], orders["path"]) == (
        "https",
        "orders.internal",
        8443,
        "/v1",
    )
    assert orders["connect_timeout"] == 5000
    assert orders["read_timeout"] == 60000
    route = by(config, "routes", name="orders-api")
    assert route["service"] == {"id": orders["id"]}
    assert by(config, "routes", name="catalog-admin")["service"] == {
        "id": kong_id("services", "catalog")
    }
    assert by(config, "routes", name="echo")["strip_path"] is False
    cors = by(config, "plugins", name="cors")
    assert cors["route"] == {"id": route["id"]}
    assert cors["service"] is None
    assert cors["config"]["methods"][0] == "GET"  # default filled
    key_auth = by(config, "plugins", name="key-auth")
    assert key_auth["service"] == {"id": orders["id"]}
    alice = by(config, "consumers", username="alice")
    creds = [c for c in config["keyauth_credentials"] if c["consumer"] == {"id": alice["id"]}]
    assert sorted(c["key"] for c in creds) == ["alice-rotated-key", "alice-secret-key"]
    bob = by(config, "consumers", username="bob")
    assert by(config, "keyauth_credentials", key="bob-second-key")["consumer"] == {"id": bob["id"]}
    limits = [p for p in config["plugins"] if p["name"] == "rate-limiting"]
    assert {
        (p["consumer"] is not None, p["service"] is not None, p["route"] is not None)
        for p in limits
    } == {(True, False, False), (False, False, False), (False, True, False), (False, False, True)}
    upstream = by(config, "upstreams", name="catalog-upstream")
    assert upstream["healthchecks"]["active"]["healthy"]["successes"] == 2
    assert upstream["healthchecks"]["passive"]["unhealthy"]["http_statuses"] == [429, 500, 503]
    assert sorted(t["target"] for t in config["targets"]) == [
        "10.0.0.11:8080",
        "10.0.0.12:8080",
        "catalog-3.internal:8000",
    ]
    assert all(t["upstream"] == {"id": upstream["id"]} for t in config["targets"])
    cert = config["certificates"][0]
    assert {s["name"] for s in config["snis"]} == {"shop.example.com", "*.shop.example.com"}
    assert all(s["certificate"] == {"id": cert["id"]} for s in config["snis"])
    assert len(config["ca_certificates"][0]["cert_digest"]) == 64
    for name in ENTITIES:
        assert [e["id"] for e in config[name]] == sorted(e["id"] for e in config[name])
        for entity in config[name]:
            assert list(entity) == list(ENTITIES[name].fields)


def test_fixture_parses_with_the_bundled_plugins(
    fixture_doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = importlib.import_module("gateway.plugins._registry")
    monkeypatch.undo()  # the real registry
    if not {"key-auth", "rate-limiting", "cors"} <= set(registry.available_plugins()):
        pytest.skip("the bundled key-auth, rate-limiting and cors plugins are not available")
    config = parse_declarative(fixture_doc)
    assert len(config["plugins"]) == 6


def test_runtime_view_drops_disabled_services(fixture_doc: dict[str, Any]) -> None:
    config = parse_declarative(fixture_doc)
    view = runtime_view(config)
    legacy = by(config, "services", name="legacy")
    legacy_route = by(config, "routes", name="legacy")
    assert legacy not in view["services"]
    assert legacy_route not in view["routes"]
    assert all(p["route"] != {"id": legacy_route["id"]} for p in view["plugins"])
    assert len(view["plugins"]) == len(config["plugins"]) - 1
    assert len(view["routes"]) == len(config["routes"]) - 1
    assert view["consumers"] == config["consumers"]
    assert len(config["services"]) == 4  # the full config is untouched
    enabled_only = {**config, "services": [s for s in config["services"] if s["enabled"]]}
    assert runtime_view(enabled_only) == enabled_only


# -- ids -----------------------------------------------------------------------------------------


def test_ids_are_deterministic_and_order_independent(fixture_doc: dict[str, Any]) -> None:
    first = parse_declarative(fixture_doc)
    assert parse_declarative(copy.deepcopy(fixture_doc)) == first
    shuffled = copy.deepcopy(fixture_doc)
    rng = random.Random(7)
    for key, value in list(shuffled.items()):
        if isinstance(value, list):
            rng.shuffle(value)
            for item in value:
                for sub in item.values():
                    if isinstance(sub, list) and sub and isinstance(sub[0], dict):
                        rng.shuffle(sub)
        shuffled[key] = value
    reordered = dict(reversed(list(shuffled.items())))
    assert parse_declarative(reordered) == first


def test_config_hash_is_stable_across_orderings(fixture_doc: dict[str, Any]) -> None:
    protocol = pytest.importorskip("protocol", reason="protocol.config_hash not written yet")
    if not hasattr(protocol, "config_hash"):
        pytest.skip("protocol.config_hash not written yet")
    first = parse_declarative(fixture_doc)
    shuffled = copy.deepcopy(fixture_doc)
    for value in shuffled.values():
        if isinstance(value, list):
            value.reverse()
    second = parse_declarative(shuffled)
    assert protocol.config_hash(runtime_view(first)) == protocol.config_hash(runtime_view(second))
    changed = copy.deepcopy(fixture_doc)
    changed["services"][0]["retries"] = 4
    assert protocol.config_hash(parse_declarative(changed)) != protocol.config_hash(first)


def test_generated_ids_follow_kongs_scheme() -> None:
    config = parse_declarative(
        {
            "_format_version": "3.0",
            "services": [{"name": "s", "host": "h", "routes": [{"name": "r", "paths": ["/"]}]}],
            "consumers": [{"username": "u"}],
            "upstreams": [{"name": "up", "targets": [{"target": "a:1"}]}],
            "plugins": [{"name": "cors", "instance_name": "cors-1"}],
        }
    )
    assert config["services"][0]["id"] == kong_id("services", "s")
    assert config["routes"][0]["id"] == kong_id("routes", "r")
    assert config["consumers"][0]["id"] == kong_id("consumers", "u")
    upstream_id = kong_id("upstreams", "up")
    assert config["targets"][0]["id"] == kong_id("targets", f"a:1:{upstream_id}")
    assert config["plugins"][0]["id"] == kong_id("plugins", "cors-1")


def test_unnamed_identical_entities_get_distinct_ids() -> None:
    route = {"paths": ["/same"]}
    config = parse_declarative(
        {
            "_format_version": "3.0",
            "services": [{"name": "s", "host": "h", "routes": [route, dict(route)]}],
        }
    )
    assert len({r["id"] for r in config["routes"]}) == 2


def test_given_ids_are_kept_and_referenced() -> None:
    sid = "3f6c2d7e-0b4a-4a55-9d6e-9f1f1e2a2b3c"
    config = parse_declarative(
        {
            "_format_version": "3.0",
            "services": [{"id": sid, "host": "h"}],
            "routes": [
                {"paths": ["/a"], "service": sid},
                {"paths": ["/b"], "service": {"id": sid}},
            ],
        }
    )
    assert config["services"][0]["id"] == sid
    assert [r["service"] for r in config["routes"]] == [{"id": sid}, {"id": sid}]


def test_now_fills_timestamps() -> None:
    doc = {"_format_version": "3.0", "consumers": [{"username": "u", "created_at": 5}]}
    assert parse_declarative(doc)["consumers"][0]["updated_at"] is None
    consumer = parse_declarative(doc, now=100)["consumers"][0]
    assert (consumer["created_at"], consumer["updated_at"]) == (5, 100)


# -- references ----------------------------------------------------------------------------------


def test_references_by_name_record_and_endpoint_key() -> None:
    config = parse_declarative(
        {
            "_format_version": "3.0",
            "services": [{"name": "s", "host": "h"}],
            "routes": [{"name": "r", "paths": ["/"], "service": {"name": "s"}}],
            "consumers": [{"username": "alice"}],
            "plugins": [
                {"name": "rate-limiting", "consumer": "alice", "config": {"minute": 1}},
                {"name": "cors", "route": "r"},
            ],
            "keyauth_credentials": [{"consumer": {"username": "alice"}, "key": "k"}],
        }
    )
    assert config["routes"][0]["service"] == {"id": kong_id("services", "s")}
    consumer = {"id": kong_id("consumers", "alice")}
    assert by(config, "plugins", name="rate-limiting")["consumer"] == consumer
    assert by(config, "plugins", name="cors")["route"] == {"id": kong_id("routes", "r")}
    assert config["keyauth_credentials"][0]["consumer"] == consumer


def test_invalid_references_are_reported_with_paths() -> None:
    err = parse_errors(
        {
            "_format_version": "3.0",
            "services": [{"name": "s", "host": "h", "ca_certificates": [str(uuid.UUID(int=1))]}],
            "routes": [{"paths": ["/"], "service": "missing"}],
            "targets": [{"target": "a", "upstream": "nope"}],
        }
    )
    assert err.fields == {
        "services": [
            {
                "@entity": [
                    "invalid reference 'ca_certificates: 00000000-0000-0000-0000-000000000001' "
                    "(no such entry in 'ca_certificates')"
                ],
                "ca_certificates": "value must be null",
            }
        ],
        "routes": [
            {"@entity": ["invalid reference 'service: missing' (no such entry in 'services')"]}
        ],
        "targets": [
            {"@entity": ["invalid reference 'upstream: nope' (no such entry in 'upstreams')"]}
        ],
    }


# -- errors --------------------------------------------------------------------------------------


def test_every_error_is_listed_with_its_entity_path() -> None:
    err = parse_errors(
        {
            "_format_version": "3.0",
            "services": [
                {"name": "ok", "host": "h"},
                {
                    "name": "bad",
                    "host": "h",
                    "port": 0.5,
                    "routes": [{"paths": ["/fine"]}, {"paths": ["nope"], "methods": ["get"]}],
                },
            ],
            "consumers": [{"tags": ["x"]}],
        }
    )
    assert err.code == 14
    assert err.name == "invalid declarative configuration"
    assert err.fields == {
        "services": [
            None,
            {
                "port": "expected an integer",
                "routes": [
                    None,
                    {
                        "paths": ["should start with: / (fixed path) or ~/ (regex path)"],
                        "methods": ["invalid value: get"],
                    },
                ],
            },
        ],
        "consumers": [
            {"@entity": ["at least one of these fields must be non-empty: 'custom_id', 'username'"]}
        ],
    }
    assert err.messages == [
        "consumers.1: at least one of these fields must be non-empty: 'custom_id', 'username'",
        "services.2.port: expected an integer",
        "services.2.routes.2.methods.1: invalid value: get",
        "services.2.routes.2.paths.1: should start with: / (fixed path) or ~/ (regex path)",
    ]
    assert err.message.startswith("declarative config is invalid: 4 errors (consumers.1: ")
    body = err.body()
    assert body["code"] == 14
    assert body["fields"] == err.fields
    flat = body["flattened_errors"]
    assert [f["entity_path"] for f in flat] == ["consumers.1", "services.2", "services.2.routes.2"]
    assert flat[1]["entity_type"] == "service"
    assert flat[1]["entity_name"] == "bad"
    assert flat[1]["errors"] == [
        {"type": "field", "field": "port", "message": "expected an integer"}
    ]
    assert flat[0]["errors"] == [
        {
            "type": "entity",
            "message": "at least one of these fields must be non-empty: 'custom_id', 'username'",
        }
    ]


def test_plugin_config_errors_in_nested_document() -> None:
    err = parse_errors(
        {
            "_format_version": "3.0",
            "services": [
                {"name": "s", "host": "h", "plugins": [{"name": "rate-limiting", "config": {}}]}
            ],
            "plugins": [{"name": "unknown-plugin"}],
        }
    )
    assert err.fields == {
        "services": [
            {
                "plugins": [
                    {
                        "config": {
                            "@entity": [
                                "at least one of these fields must be non-empty: "
                                "'config.second', 'config.minute', 'config.hour', "
                                "'config.day', 'config.month', 'config.year'"
                            ]
                        }
                    }
                ]
            }
        ],
        "plugins": [
            {
                "name": "plugin 'unknown-plugin' not enabled; add it to the 'plugins' "
                "configuration property"
            }
        ],
    }


@pytest.mark.parametrize(
    ("doc", "fields"),
    [
        ({}, {"_format_version": "required field missing"}),
        ({"_format_version": 3}, {"_format_version": "expected a string"}),
        (
            {"_format_version": "4.0"},
            {
                "_format_version": "unsupported declarative format version '4.0' (expected one "
                "of: 1.1, 2.1, 3.0)"
            },
        ),
        ({"_format_version": "3.0", "_transform": "yes"}, {"_transform": "expected a boolean"}),
        ({"_format_version": "3.0", "apis": []}, {"apis": "unknown field"}),
        ({"_format_version": "3.0", "services": {"a": 1}}, {"services": "expected an array"}),
        ({"_format_version": "3.0", "services": ["x"]}, {"services": ["expected a record"]}),
        (
            {"_format_version": "3.0", "services": [{"host": "h", "routes": 5}]},
            {"services": [{"routes": "expected an array"}]},
        ),
        (
            {
                "_format_version": "3.0",
                "services": [{"host": "h", "plugins": [{"name": "x", "route": 5}]}],
            },
            {
                "services": [
                    {
                        "plugins": [
                            {
                                "@entity": [
                                    "invalid reference 'route: 5' (no such entry in 'routes')"
                                ],
                                "name": "plugin 'x' not enabled; add it to the "
                                "'plugins' configuration property",
                            }
                        ]
                    }
                ]
            },
        ),
    ],
)
def test_document_level_errors(doc: dict[str, Any], fields: dict[str, Any]) -> None:
    assert parse_errors(doc).fields == fields


def test_not_a_mapping() -> None:
    with pytest.raises(DeclarativeError):
        parse_declarative([])  # type: ignore[arg-type]


def test_uniqueness_across_the_document() -> None:
    err = parse_errors(
        {
            "_format_version": "3.0",
            "services": [
                {"name": "s", "host": "a"},
                {"name": "s", "host": "b"},
                {"name": "t", "host": "c", "plugins": [{"name": "cors"}]},
            ],
            "plugins": [{"name": "cors", "service": "t"}, {"name": "cors"}],
            "upstreams": [{"name": "u", "targets": [{"target": "a"}, {"target": "a:8000"}]}],
            "consumers": [{"username": "x", "custom_id": "1"}, {"username": "y", "custom_id": "1"}],
            "keyauth_credentials": [
                {"consumer": "x", "key": "k"},
                {"consumer": "y", "key": "k"},
            ],
        }
    )
    service_t = kong_id("services", "t")
    upstream = kong_id("upstreams", "u")
    assert err.fields == {
        "services": [
            None,
            {
                "@entity": [
                    "uniqueness violation: 'services' entity with name set to 's' already declared"
                ]
            },
        ],
        "plugins": [
            {
                "@entity": [
                    "uniqueness violation: 'plugins' entity with name set to 'cors', "
                    f"route set to 'null', service set to '{service_t}', consumer set "
                    "to 'null' already declared"
                ]
            },
        ],
        "upstreams": [
            {
                "targets": [
                    None,
                    {
                        "@entity": [
                            "uniqueness violation: 'targets' entity with upstream set to "
                            f"'{upstream}', target set to 'a:8000' already declared"
                        ]
                    },
                ]
            }
        ],
        "consumers": [
            None,
            {
                "@entity": [
                    "uniqueness violation: 'consumers' entity with custom_id set to '1' "
                    "already declared"
                ]
            },
        ],
        "keyauth_credentials": [
            None,
            {
                "@entity": [
                    "uniqueness violation: 'keyauth_credentials' entity with key set to "
                    "'k' already declared"
                ]
            },
        ],
    }


def test_duplicate_given_ids() -> None:
    sid = str(uuid.UUID(int=7))
    err = parse_errors(
        {"_format_version": "3.0", "services": [{"id": sid, "host": "a"}, {"id": sid, "host": "b"}]}
    )
    assert err.fields == {
        "services": [
            None,
            {
                "@entity": [
                    f"uniqueness violation: 'services' entity with primary key set to "
                    f"'{sid}' already declared"
                ]
            },
        ]
    }


# -- formats -------------------------------------------------------------------------------------


def test_format_2_1_regex_paths_are_migrated() -> None:
    doc = {
        "_format_version": "2.1",
        "services": [
            {
                "host": "h",
                "routes": [{"name": "r", "paths": ["/plain/path", r"/users/\d+", "~/already"]}],
            }
        ],
    }
    config = parse_declarative(doc)
    assert config["routes"][0]["paths"] == ["/plain/path", r"~/users/\d+", "~/already"]
    doc["_format_version"] = "3.0"
    with pytest.raises(DeclarativeError):
        parse_declarative(doc)


def test_comments_and_meta_keys_are_ignored() -> None:
    config = parse_declarative(
        {
            "_format_version": "3.0",
            "_comment": "hello",
            "_info": {"select_tags": ["a"]},
            "_workspace": "default",
            "consumers": [{"username": "u", "_comment": "who"}],
        }
    )
    assert config["consumers"][0]["username"] == "u"


def test_keyauth_key_generated_when_missing() -> None:
    doc = {
        "_format_version": "3.0",
        "consumers": [{"username": "u", "keyauth_credentials": [{}, {}]}],
    }
    config = parse_declarative(doc)
    keys = [c["key"] for c in config["keyauth_credentials"]]
    assert len(set(keys)) == 2
    assert all(len(k) == 32 for k in keys)


def test_validate_config_accepts_the_runtime_config(fixture_doc: dict[str, Any]) -> None:
    config = parse_declarative(fixture_doc)
    assert validate_config(config) == config
    broken = copy.deepcopy(config)
    broken["routes"][0]["service"] = {"id": str(uuid.UUID(int=9))}
    with pytest.raises(DeclarativeError):
        validate_config(broken)
