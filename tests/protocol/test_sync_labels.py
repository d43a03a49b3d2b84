"""Labels: Kong's conf-loader cases (spec/01-unit/03-conf_loader_spec.lua "Labels")."""

from __future__ import annotations

import pytest

from protocol.sync import parse_labels, validate_labels


@pytest.mark.parametrize(
    "text",
    [
        "deployment:mycloud,region:us-east-1",
        "label_0_name:label-1-value,label-1-name:label_1_value",
        "MY-LaB3L.nam_e:my_lA831..val",
        "super_kong:yey",
        "best_gateway:kong",
        "This_Key_Is_Just_The_Right_Maximum_Length_To_Pass_TheValidation:value",
        "key:This_Val_Is_Just_The_Right_Maximum_Length_To_Pass_TheValidation",
        "Aa-._zZ_key:Aa-._zZ_val",
        "a:b",
        "time:12:30",
        "",
    ],
)
def test_valid(text: str) -> None:
    labels = parse_labels(text)
    assert validate_labels(labels) == []


def test_parse_result() -> None:
    assert parse_labels("deployment:mycloud, region:us-east-1") == {
        "deployment": "mycloud",
        "region": "us-east-1",
    }
    assert parse_labels("time:12:30") == {"time": "12:30"}


_KEY = "label key validation failed: "
_VALUE = "label value validation failed: "
_PATTERN = "is invalid. Must match pattern"
_SIZE = "must have between 1 and 63 characters"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("t:h,e:s,E:a,r:e,T:o,o:m,a:n,y:l,A:b,ee:l,S:s", "count exceeded 10 max elements"),
        ("_must:start", _KEY + "_must " + _PATTERN),
        ("and:.end", _VALUE + ".end " + _PATTERN),
        ("with-:alpha", _KEY + "with- " + _PATTERN),
        ("numeric:characters_", _VALUE + "characters_ " + _PATTERN),
        ("kong_key:is_reserved", _KEY + "kong_key " + _PATTERN),
        ("KONNECT:x", _KEY + "KONNECT " + _PATTERN),
        ("Insomnia1:x", _KEY + "Insomnia1 " + _PATTERN),
        ("meshy:x", _KEY + "meshy " + _PATTERN),
        ("kic:x", _KEY + "kic " + _PATTERN),
        ("invalid!@chars:fail", _KEY + "invalid!@chars " + _PATTERN),
        ("w@:_a", _KEY + "w@ " + _PATTERN),
        ("the:val!dation", _VALUE + "val!dation " + _PATTERN),
        ("lonelykeywithnoval:", _VALUE + " " + _SIZE),
        (
            "__look_this_key_is_way_too_long_no_way_it_will_pass_validation__:value",
            _KEY + "__look_this_key_is_way_too_long_no_way_it_will_pass_validation__ " + _SIZE,
        ),
        (
            "key:__look_this_val_is_way_too_long_no_way_it_will_pass_validation__",
            _VALUE + "__look_this_val_is_way_too_long_no_way_it_will_pass_validation__ " + _SIZE,
        ),
        ("key", _KEY + "key is not written key:value"),
        ("a:1,a:2", "duplicate key a"),
        ("ключ:x", _KEY),
    ],
)
def test_invalid(text: str, expected: str) -> None:
    with pytest.raises(ValueError, match="label") as info:
        parse_labels(text)
    assert expected in str(info.value)


def test_validate_labels_lists_every_problem() -> None:
    errors = validate_labels({"kong": "x", "ok": "-bad", "x" * 64: "v"})
    assert len(errors) == 3
    assert validate_labels({str(i): "v" for i in range(11)}) == [
        "labels validation failed: count exceeded 10 max elements"
    ]


def test_validate_labels_checks_types() -> None:
    assert validate_labels({"a": 1}) == [  # type: ignore[dict-item]
        "labels validation failed: keys and values must be strings"
    ]
