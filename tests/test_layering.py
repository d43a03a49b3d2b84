"""The three layers import in one direction: gateway -> protocol, certs; never the reverse.

protocol/ and certs/ are pure: no trio, socket, ssl or time (time is an argument).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"trio", "trio_websocket", "socket", "ssl", "time", "gateway", "asyncio", "threading"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _pure_modules() -> list[Path]:
    return sorted(p for pkg in ("protocol", "certs") for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", _pure_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_layers_do_no_io(path: Path) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for line, name in _imports(path)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert not bad, "\n".join(bad)


def test_checker_sees_forbidden_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import time\nfrom trio import sleep\nfrom gateway.x import y\n")
    names = {name.split(".")[0] for _, name in _imports(sample)}
    assert {"time", "trio", "gateway"} <= names
