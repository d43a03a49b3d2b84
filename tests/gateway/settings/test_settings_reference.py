"""docs/reference/settings.md is generated from KEYS and lists every key."""

from __future__ import annotations

from pathlib import Path

from gateway.settings import KEYS
from gateway.settings._reference import render_reference

DOC = Path(__file__).resolve().parents[3] / "docs" / "reference" / "settings.md"


def test_reference_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render_reference(), (
        "docs/reference/settings.md is stale; regenerate it with "
        "`python -m gateway.settings._reference > docs/reference/settings.md`"
    )


def test_reference_lists_every_key() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name, key in KEYS.items():
        assert f"| `{name}` |" in text, name
        if key.secret:
            row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
            assert "**Secret.**" in row
