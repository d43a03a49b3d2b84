"""check_compatibility: Kong's truth table (kong-behaviour.md §5, §11.1 items 9-10)."""

from __future__ import annotations

import pytest

from protocol.sync import SyncStatus, check_compatibility, parse_version

OK = SyncStatus.NORMAL
KONG = SyncStatus.KONG_VERSION_INCOMPATIBLE


@pytest.mark.parametrize(
    ("cp", "dp", "expected"),
    [
        ("1.1.2", "1.1.2", OK),
        ("1.1.999", "1.1.2222", OK),
        ("1.2.0", "1.1.0", OK),
        ("1.9999.0", "1.1.33", OK),
        ("1.0.0", "2.0.0", KONG),
        ("2.0.0", "1.0.0", KONG),
        ("1.0.0", "1.1.0", KONG),
        # docs example for CP 3.9.0.1
        ("3.9.0.1", "3.9.0.0", OK),
        ("3.9.0.1", "3.8.1.0", OK),
        ("3.9.0.1", "3.7.4", OK),
        ("3.9.0.1", "3.9.1.0", OK),
        ("3.9.0.1", "2.8.0.0", KONG),
        ("3.9.0.1", "3.10.0.0", KONG),
        ("3.10.0", "3.10.0-enterprise-version", OK),
        ("3.10.0", "garbage", KONG),
        ("3.10", "3.10.0", KONG),
    ],
)
def test_gateway_versions(cp: str, dp: str, expected: SyncStatus) -> None:
    status, reason = check_compatibility(cp, {}, dp, {}, ())
    assert status is expected
    assert (reason == "") is (expected is OK)


CP_VERSION = "3.10.0"
CP_PLUGINS = {"key-auth": "3.10.0", "acl": "3.10.0", "cors": "3.10.0"}


def _check(dp_version: str, dp_plugins: dict[str, str]) -> tuple[SyncStatus, str]:
    return check_compatibility(CP_VERSION, CP_PLUGINS, dp_version, dp_plugins, ["key-auth"])


@pytest.mark.parametrize(
    ("dp_version", "dp_plugins"),
    [
        pytest.param("3.10.0", CP_PLUGINS, id="identical"),
        pytest.param("3.10.0", {"key-auth": "3.10.0"}, id="only-the-configured-plugin"),
        pytest.param("3.10.0", {"key-auth": "3.0.0"}, id="plugin-major.0.0"),
        pytest.param("3.10.0", {"key-auth": "3.10.1000"}, id="plugin-patch-1000"),
        pytest.param("3.0.0", CP_PLUGINS, id="dp-major.0.patch"),
        pytest.param("3.10.1000", CP_PLUGINS, id="dp-patch-1000"),
        pytest.param("3.10.0-enterprise-version", CP_PLUGINS, id="dp-suffix"),
        pytest.param(
            "3.10.0", {**CP_PLUGINS, "banana": "1.1.1", "pineapple": "1.1.2"}, id="superset"
        ),
        pytest.param("3.10.0", {**CP_PLUGINS, "acl": "3.8.0"}, id="unconfigured-minor-minus-2"),
        pytest.param("3.10.0", {**CP_PLUGINS, "cors": "3.10.-2"}, id="unconfigured-bad-version"),
        pytest.param("3.10.0", {"key-auth": ""}, id="dp-plugin-version-unknown"),
    ],
)
def test_allowed_plugin_cases(dp_version: str, dp_plugins: dict[str, str]) -> None:
    assert _check(dp_version, dp_plugins) == (OK, "")


@pytest.mark.parametrize(
    ("dp_version", "dp_plugins", "expected"),
    [
        ("3.10.0", {"banana-plugin": "1.0.0"}, SyncStatus.PLUGIN_SET_INCOMPATIBLE),
        ("3.10.0", {"key-auth": "1.0.0"}, SyncStatus.PLUGIN_VERSION_INCOMPATIBLE),
        ("3.10.0", {"key-auth": "1000.0.0"}, SyncStatus.PLUGIN_VERSION_INCOMPATIBLE),
        ("3.10.0", {"key-auth": "3.1000.0"}, SyncStatus.PLUGIN_VERSION_INCOMPATIBLE),
        ("1.0.0", CP_PLUGINS, KONG),
        ("3.1000.0", CP_PLUGINS, KONG),
    ],
)
def test_blocked_plugin_cases(
    dp_version: str, dp_plugins: dict[str, str], expected: SyncStatus
) -> None:
    status, reason = _check(dp_version, dp_plugins)
    assert status is expected
    assert reason


def test_reasons_name_the_plugins() -> None:
    status, reason = check_compatibility(CP_VERSION, CP_PLUGINS, "3.10.0", {}, ["cors", "acl"])
    assert status is SyncStatus.PLUGIN_SET_INCOMPATIBLE
    assert reason == (
        "configured acl plugin is missing from data plane; "
        "configured cors plugin is missing from data plane"
    )
    status, reason = _check("3.10.0", {"key-auth": "4.0.0"})
    assert reason == (
        "configured data plane key-auth plugin version 4.0.0 is different to control plane "
        "plugin version 3.10.0"
    )


def test_missing_plugins_are_reported_before_version_mismatches() -> None:
    status, _ = check_compatibility(
        CP_VERSION, CP_PLUGINS, "3.10.0", {"key-auth": "9.0.0"}, ["key-auth", "acl"]
    )
    assert status is SyncStatus.PLUGIN_SET_INCOMPATIBLE


def test_no_opentelemetry_special_case() -> None:
    # NOTE: Kong always accepts a DP opentelemetry 0.1.x; we do not.
    status, _ = check_compatibility(
        "3.10.0",
        {"opentelemetry": "3.10.0"},
        "3.10.0",
        {"opentelemetry": "0.1.0"},
        ["opentelemetry"],
    )
    assert status is SyncStatus.PLUGIN_VERSION_INCOMPATIBLE


def test_sync_status_values_are_kongs_plus_ours() -> None:
    assert [s.value for s in SyncStatus] == [
        "unknown",
        "normal",
        "kong_version_incompatible",
        "plugin_set_incompatible",
        "plugin_version_incompatible",
        "payload_too_large",
        "config_rejected",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3.10.0", (3, 10)),
        ("3.10.0.1-enterprise-edition", (3, 10)),
        ("333.333.333.333", (333, 333)),
        ("3.10", None),
        ("v3.10.0", None),
        ("1" * 50 + ".0.0", None),
        ("", None),
    ],
)
def test_parse_version(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_version(text) == expected
