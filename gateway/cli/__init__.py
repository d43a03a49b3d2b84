"""The ``python -m gateway`` command line.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module adds
its parser and sets ``func`` (``func(args) -> int``) as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway._version import __version__

# Modules that contribute subcommands. Each exposes ``register(subparsers)``.
_COMMAND_MODULES: tuple[str, ...] = (
    "gateway.cli._start",
    "gateway.cli._check",
    "gateway.cli._hybrid",
    "gateway.cli._pki",
    "gateway.cli._config",
    "gateway.cli._migrations",
    "gateway.cli._quickstart",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Trio API gateway (Kong-compatible hybrid mode).",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # ``python -m gateway --role data_plane`` (no subcommand) means "start".
    bare_flags = args_list and args_list[0].startswith("-")
    if not args_list or (bare_flags and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "start")
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    result: int = func(args)
    return result
