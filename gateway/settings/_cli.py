"""Command-line flags shared by every command that needs settings."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from gateway._errors import ConfigError
from gateway.settings._load import load_settings
from gateway.settings._model import Settings

__all__ = ["add_settings_arguments", "settings_from_args"]


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--conf``, ``--role``, ``--prefix`` and ``--set KEY=VALUE`` to ``parser``."""
    group = parser.add_argument_group("settings")
    group.add_argument(
        "--conf", "-c", metavar="FILE", help="TOML settings file (keys as in kong.conf)"
    )
    group.add_argument(
        "--role", metavar="ROLE", help="traditional, control_plane or data_plane (sets role)"
    )
    group.add_argument("--prefix", "-p", metavar="DIR", help="working directory (sets prefix)")
    group.add_argument(
        "--set",
        dest="set_values",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="set any key; repeatable; wins over the file and GATEWAY_<KEY> variables",
    )


def overrides_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The ``--set`` values, then ``--role`` and ``--prefix`` (which win over ``--set``)."""
    overrides: dict[str, str] = {}
    errors: list[ConfigError] = []
    for item in getattr(args, "set_values", None) or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            errors.append(ConfigError(f"--set: expected KEY=VALUE, got {item!r}", key="--set"))
            continue
        overrides[name] = value
    for name in ("role", "prefix"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if errors:
        raise ConfigError.combine(errors)
    return overrides


def settings_from_args(
    args: argparse.Namespace,
    *,
    env: Mapping[str, str] | None = None,
    check_files: bool = True,
) -> Settings:
    """Load settings from parsed flags (see ``add_settings_arguments``)."""
    return load_settings(
        getattr(args, "conf", None),
        env=env,
        overrides=overrides_from_args(args),
        check_files=check_files,
    )
