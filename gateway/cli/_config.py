"""``python -m gateway config parse|db_import|db_export FILE`` (as ``kong config``).

``parse`` validates a declarative file and prints every error with its entity path.
``db_import`` validates the file and makes it the whole content of the database (one
transaction, one new config version). ``db_export`` writes the database's content as a
``_format_version: "3.0"`` document (YAML, or JSON when FILE ends in ``.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import trio

from gateway._errors import ConfigError
from gateway.declarative import (
    DeclarativeError,
    dump_json,
    dump_yaml,
    export_declarative,
    load_declarative,
    parse_declarative,
)
from gateway.schema import EntityError
from gateway.schema.entities import ENTITIES


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "config",
        help="validate, import or export declarative configuration (kong.yml)",
        description="parse: validate FILE and list every error. db_import: replace the "
        "database's configuration with FILE. db_export: write the database's configuration "
        "to FILE (YAML; JSON when FILE ends in .json).",
    )
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    parse = sub.add_parser("parse", help="validate a declarative file")
    parse.add_argument("file", metavar="FILE")
    parse.set_defaults(func=run_parse)

    db_import = sub.add_parser("db_import", help="replace the database's content with FILE")
    db_import.add_argument("file", metavar="FILE")
    _add_settings(db_import)
    db_import.set_defaults(func=run_db_import)

    db_export = sub.add_parser("db_export", help="write the database's content to FILE")
    db_export.add_argument("file", metavar="FILE", nargs="?", default="kong.yml")
    db_export.add_argument(
        "--nested",
        action="store_true",
        help="nest routes under services, targets under upstreams, ... (default: flat)",
    )
    _add_settings(db_export)
    db_export.set_defaults(func=run_db_export)


def _add_settings(parser: argparse.ArgumentParser) -> None:
    from gateway.settings import add_settings_arguments

    add_settings_arguments(parser)


def _print_declarative_error(exc: DeclarativeError) -> None:
    print(f"Error: {exc.name}", file=sys.stderr)
    for line in exc.messages:
        print(f"  {line}", file=sys.stderr)


def _load_and_parse(file: str, *, now: int | None) -> dict[str, Any]:
    return parse_declarative(load_declarative(Path(file)), now=now)


def run_parse(args: argparse.Namespace) -> int:
    try:
        config = _load_and_parse(args.file, now=None)
    except DeclarativeError as exc:
        _print_declarative_error(exc)
        return 1
    counts = ", ".join(f"{len(config[name])} {name}" for name in ENTITIES if config[name])
    print(f"parse successful: {counts or 'no entities'}")
    return 0


def run_db_import(args: argparse.Namespace) -> int:
    from gateway.settings import settings_from_args

    try:
        settings = settings_from_args(args, check_files=False)
        config = _load_and_parse(args.file, now=int(time.time()))
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except DeclarativeError as exc:
        _print_declarative_error(exc)
        return 1

    # Imported here: ``parse`` must work without the database drivers.
    from gateway.store import StoreError, open_store

    async def work() -> int:
        async with open_store(settings, ENTITIES) as store:
            return await store.replace_all(config)

    try:
        version = trio.run(work)
    except (StoreError, EntityError, ConfigError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"import successful: config version {version}")
    return 0


def run_db_export(args: argparse.Namespace) -> int:
    from gateway.settings import settings_from_args

    try:
        settings = settings_from_args(args, check_files=False)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1

    from gateway.store import StoreError, open_store

    async def work() -> tuple[int, dict[str, list[dict[str, Any]]]]:
        async with open_store(settings, ENTITIES) as store:
            return await store.export()

    try:
        version, entities = trio.run(work)
    except (StoreError, EntityError, ConfigError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    doc = export_declarative(entities, nested=args.nested)
    path = Path(args.file)
    text = dump_json(doc) if path.suffix == ".json" else dump_yaml(doc)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"Error: cannot write {path}: {exc}", file=sys.stderr)
        return 1
    print(f"export successful: config version {version} written to {path}")
    return 0
