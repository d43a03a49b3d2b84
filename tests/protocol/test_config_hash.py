"""protocol.config_hash: definition, test vectors, order independence."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import EMPTY_CONFIG_HASH, config_hash, is_config_hash

CONFIG: dict[str, Any] = {
    "_format_version": "3.0",
    "services": [
        {"id": "b", "name": "two", "port": 80, "updated_at": 2, "created_at": 1},
        {"id": "a", "name": "one", "port": 443, "updated_at": 5, "created_at": 1},
    ],
    "routes": [{"id": "r", "paths": ["/x", "/y"], "service": {"id": "a"}, "name": "café"}],
}


def _by_hand(document: str) -> str:
    return hashlib.sha256(document.encode("ascii")).hexdigest()[:32]


def test_vector_matches_the_documented_definition() -> None:
    # Keys sorted, "_format_version" and "updated_at" dropped, entities sorted by id,
    # non-ASCII escaped, SHA-256 truncated to 32 hex digits.
    document = (
        '{"routes":[{"id":"r","name":"caf\\u00e9","paths":["/x","/y"],"service":{"id":"a"}}],'
        '"services":[{"created_at":1,"id":"a","name":"one","port":443},'
        '{"created_at":1,"id":"b","name":"two","port":80}]}'
    )
    assert config_hash(CONFIG) == _by_hand(document)


def test_pinned_vectors() -> None:
    # Pinned so that an accidental change of the definition fails loudly (DPs and CPs of
    # different builds must agree).
    assert config_hash({}) == EMPTY_CONFIG_HASH == "0" * 32
    assert config_hash({"_format_version": "3.0", "services": [], "routes": []}) == "0" * 32
    assert config_hash({"services": [{"id": "a"}]}) == _by_hand('{"services":[{"id":"a"}]}')
    assert config_hash({"services": [{"id": "a"}]}) == "29e2fdd71123d8146ea0eb88ed06ba3a"
    assert config_hash(CONFIG) == "a7ffa1813c884fa822d71d35cdd32d8c"


def test_entity_and_key_order_do_not_matter() -> None:
    shuffled = copy.deepcopy(CONFIG)
    shuffled["services"].reverse()
    reordered = {k: shuffled[k] for k in reversed(list(shuffled))}
    reordered["services"] = [dict(reversed(list(s.items()))) for s in reordered["services"]]
    assert config_hash(reordered) == config_hash(CONFIG)


def test_updated_at_is_ignored_created_at_is_not() -> None:
    bumped = copy.deepcopy(CONFIG)
    bumped["services"][0]["updated_at"] = 999
    assert config_hash(bumped) == config_hash(CONFIG)
    recreated = copy.deepcopy(CONFIG)
    recreated["services"][0]["created_at"] = 999
    assert config_hash(recreated) != config_hash(CONFIG)


def test_nested_list_order_matters() -> None:
    swapped = copy.deepcopy(CONFIG)
    swapped["routes"][0]["paths"].reverse()
    assert config_hash(swapped) != config_hash(CONFIG)


def test_metadata_keys_and_empty_lists_are_ignored() -> None:
    other = copy.deepcopy(CONFIG)
    other["_format_version"] = "2.1"
    other["_comment"] = "x"
    other["consumers"] = []
    assert config_hash(other) == config_hash(CONFIG)


def test_content_changes_change_the_hash() -> None:
    changed = copy.deepcopy(CONFIG)
    changed["services"][1]["port"] = 444
    assert config_hash(changed) != config_hash(CONFIG)
    extra = copy.deepcopy(CONFIG)
    extra["parameters"] = [{"key": "cluster_id", "value": "x"}]
    assert config_hash(extra) != config_hash(CONFIG)


def test_entities_without_id_and_non_list_values() -> None:
    a = {"targets": [{"target": "b:1"}, {"target": "a:1"}], "flag": {"x": 1}}
    b = {"flag": {"x": 1}, "targets": [{"target": "a:1"}, {"target": "b:1"}]}
    assert config_hash(a) == config_hash(b)


def test_lone_surrogates_hash_without_error() -> None:
    assert is_config_hash(config_hash({"services": [{"id": "a", "name": "\ud800"}]}))


def test_not_json_serialisable_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="JSON"):
        config_hash({"services": [{"id": "a", "weight": float("nan")}]})


def test_is_config_hash() -> None:
    assert is_config_hash("0" * 32)
    assert not is_config_hash("0" * 31)
    assert not is_config_hash("A" * 32)
    assert not is_config_hash(None)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)
_entity = st.fixed_dictionaries({"id": st.uuids().map(str)}, optional={"v": _json})


@settings(max_examples=50)
@given(st.dictionaries(st.sampled_from(["services", "routes", "x"]), st.lists(_entity, max_size=4)))
def test_hash_is_permutation_invariant(config: dict[str, list[dict[str, Any]]]) -> None:
    shuffled = {k: random.Random(0).sample(v, len(v)) for k, v in reversed(config.items())}
    assert config_hash(shuffled) == config_hash(config)
    assert is_config_hash(config_hash(config))
    # and it survives a JSON round trip (what a data plane hashes)
    assert config_hash(json.loads(json.dumps(config))) == config_hash(config)
