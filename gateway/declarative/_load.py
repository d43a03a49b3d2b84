"""Reading and writing declarative documents (YAML or JSON)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from gateway.declarative._errors import DeclarativeError


def load_declarative(source: str | bytes | os.PathLike[str]) -> dict[str, Any]:
    """Parse a kong.yml / kong.json document.

    ``source`` is a path (``PathLike``, or a one-line string naming an existing file or
    ending in .yml, .yaml or .json) or the document's text. JSON is detected by its leading
    ``{``; anything else is read as YAML.
    """
    text: str
    if isinstance(source, os.PathLike):
        text = _read(Path(source))
    elif isinstance(source, bytes):
        text = source.decode("utf-8")
    elif "\n" not in source and _names_a_file(source):
        text = _read(Path(source))
    else:
        text = source
    try:
        doc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise DeclarativeError(f"failed parsing declarative configuration: {exc}") from exc
    if not isinstance(doc, dict):
        raise DeclarativeError(
            "failed parsing declarative configuration: expected an object at the top level"
        )
    return doc


def _names_a_file(source: str) -> bool:
    stripped = source.strip()
    if not stripped or stripped.startswith(("{", "_format_version")):
        return False
    path = Path(stripped)
    return path.is_file() or path.suffix.lower() in (".yml", ".yaml", ".json")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DeclarativeError(f"failed reading declarative configuration: {exc}") from exc


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings (PEM) as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(doc: Any) -> str:
    """YAML text of a document (keys in their given order, ``_format_version`` first)."""
    return yaml.dump(
        doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )


def dump_json(doc: Any) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
