"""Third-party plugins arrive through the ``gateway.plugins`` entry point group."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from typing import Any, ClassVar

import pytest

from gateway.plugins import Plugin, _registry, available_plugins, plugin_versions
from gateway.schema import Record, String


class ThirdParty(Plugin):
    name: ClassVar[str] = "third-party"
    version: ClassVar[str] = "1.2.3"
    priority: ClassVar[int] = 5
    config_schema: ClassVar[Record] = Record([("greeting", String(default="hi"))], required=True)


class NotAPlugin:
    pass


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EntryPoint]]:
    found: list[EntryPoint] = []

    def fake(*, group: str) -> list[EntryPoint]:
        assert group == "gateway.plugins"
        return found

    monkeypatch.setattr(_registry, "entry_points", fake)
    available_plugins.cache_clear()
    yield found
    available_plugins.cache_clear()


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group="gateway.plugins")


def test_entry_point_plugin_is_available_with_its_version(entry_points: list[Any]) -> None:
    entry_points.append(_ep("third-party", f"{__name__}:ThirdParty"))
    assert available_plugins()["third-party"] is ThirdParty
    assert plugin_versions()["third-party"] == "1.2.3"
    assert "key-auth" in available_plugins()  # bundled ones stay


def test_broken_entry_points_are_skipped_with_a_log_line(
    entry_points: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    entry_points.extend(
        [
            _ep("missing", "no_such_module_anywhere:Plugin"),
            _ep("wrong", f"{__name__}:NotAPlugin"),
            _ep("clash", "gateway.plugins.bundled.key_auth:KeyAuth"),
        ]
    )
    with caplog.at_level(logging.ERROR, logger="gateway.plugins"):
        plugins = available_plugins()
    assert "missing" not in plugins
    assert "wrong" not in plugins
    assert plugins["key-auth"].__module__ == "gateway.plugins.bundled.key_auth"
    assert "cannot load plugin missing" in caplog.text
    assert "does not name a Plugin subclass" in caplog.text
    assert "the name is taken" in caplog.text
