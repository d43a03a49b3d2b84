"""Version and plugin compatibility between a control plane and a data plane.

The rules are Kong's (kong-behaviour.md §5.1, §5.2):

* gateway versions: ``major.minor.patch`` with any suffix; majors must be equal and the data
  plane's minor must not be greater than the control plane's. Patch and suffix are ignored.
  An unparsable version is incompatible.
* plugins, checked for every plugin the configuration *uses*: the data plane must have it
  (else ``plugin_set_incompatible``); when both sides know a parsable version, majors must be
  equal and the data plane's minor must not be greater (else ``plugin_version_incompatible``).
  Extra plugins on the data plane and differences in unused plugins are fine.

NOTE: Kong accepts any ``opentelemetry 0.1.x`` on the data plane as a special case for its
own old releases; we have no such releases and do not copy it
(tests/protocol/test_compat.py::test_no_opentelemetry_special_case).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from typing import Final

__all__ = ["SyncStatus", "check_compatibility", "parse_version"]


class SyncStatus(enum.Enum):
    """Sync status of one data plane, as stored and shown by the Admin API.

    The first five values and their meaning are Kong's. ``payload_too_large`` and
    ``config_rejected`` are ours: Kong has no status for "the CP refuses to send an
    oversized config" (it loops on reconnects) nor for "the DP refused the config" (the OSS
    CP never learns about it).
    """

    UNKNOWN = "unknown"
    NORMAL = "normal"
    KONG_VERSION_INCOMPATIBLE = "kong_version_incompatible"
    PLUGIN_SET_INCOMPATIBLE = "plugin_set_incompatible"
    PLUGIN_VERSION_INCOMPATIBLE = "plugin_version_incompatible"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    CONFIG_REJECTED = "config_rejected"


# Digits are bounded so that int() on untrusted input stays cheap.
_VERSION: Final = re.compile(r"(\d{1,9})\.(\d{1,9})\.\d{1,9}", re.ASCII)


def parse_version(version: str) -> tuple[int, int] | None:
    """``(major, minor)`` of ``"3.10.0"``, ``"3.10.0.1-enterprise-edition"``...; else None."""
    match = _VERSION.match(version)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def _check_gateway(cp_version: str, dp_version: str) -> tuple[SyncStatus, str] | None:
    cp = parse_version(cp_version)
    dp = parse_version(dp_version)
    if dp is None:
        return (
            SyncStatus.KONG_VERSION_INCOMPATIBLE,
            f"data plane version {dp_version!r} is not a valid version",
        )
    if cp is None:
        return (
            SyncStatus.KONG_VERSION_INCOMPATIBLE,
            f"control plane version {cp_version!r} is not a valid version",
        )
    if dp[0] != cp[0]:
        return (
            SyncStatus.KONG_VERSION_INCOMPATIBLE,
            f"data plane version {dp_version} is incompatible with control plane version "
            f"{cp_version} ({cp[0]}.x.y are accepted)",
        )
    if dp[1] > cp[1]:
        return (
            SyncStatus.KONG_VERSION_INCOMPATIBLE,
            f"data plane version {dp_version} is incompatible with older control plane "
            f"version {cp_version} ({cp[0]}.0.y to {cp[0]}.{cp[1]}.y are accepted)",
        )
    return None


def check_compatibility(
    cp_version: str,
    cp_plugins: Mapping[str, str],
    dp_version: str,
    dp_plugins: Mapping[str, str],
    configured_plugins: Iterable[str],
) -> tuple[SyncStatus, str]:
    """Return ``(status, reason)`` for sending a config using *configured_plugins* to a DP.

    ``cp_plugins`` and ``dp_plugins`` map plugin name to version (``""`` when unknown).
    The reason is ``""`` for ``NORMAL``. All problems of the failing kind are listed, in
    name order, so the reason is stable.
    """
    gateway = _check_gateway(cp_version, dp_version)
    if gateway is not None:
        return gateway
    configured = sorted(set(configured_plugins))
    missing = [name for name in configured if name not in dp_plugins]
    if missing:
        return (
            SyncStatus.PLUGIN_SET_INCOMPATIBLE,
            "; ".join(f"configured {name} plugin is missing from data plane" for name in missing),
        )
    problems: list[str] = []
    for name in configured:
        cp_plugin = parse_version(cp_plugins.get(name, ""))
        dp_plugin = parse_version(dp_plugins[name])
        if cp_plugin is None or dp_plugin is None:
            continue  # only presence can be compared
        if dp_plugin[0] != cp_plugin[0] or dp_plugin[1] > cp_plugin[1]:
            problems.append(
                f"configured data plane {name} plugin version {dp_plugins[name]} is "
                f"different to control plane plugin version {cp_plugins[name]}"
            )
    if problems:
        return SyncStatus.PLUGIN_VERSION_INCOMPATIBLE, "; ".join(problems)
    return SyncStatus.NORMAL, ""
