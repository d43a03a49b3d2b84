"""``python -m gateway check``: load and check the settings without starting anything."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway._build import hot_path_build
from gateway._errors import ConfigError
from gateway.settings import add_settings_arguments, settings_from_args


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="check the settings and exit",
        description="Load the settings as `start` would (defaults, --conf file, GATEWAY_<KEY> "
        "variables, flags), check them, including the certificate files, and report "
        "every problem. Exit status 0 when they are valid, 1 otherwise.",
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"configuration invalid: {len(exc.errors)} error(s)", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    print(f"configuration OK (role = {settings.role}, prefix = {settings.prefix})")
    if settings.proxy_listen:
        print(f"proxy hot path: {hot_path_build().describe()}")
    return 0
