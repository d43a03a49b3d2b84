"""docs/reference/entities.md documents every field of every entity."""

from __future__ import annotations

from pathlib import Path

from gateway.schema._entities_doc import render_markdown, undocumented

DOC = Path(__file__).resolve().parents[3] / "docs" / "reference" / "entities.md"


def test_every_field_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert undocumented(text) == set()


def test_reference_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render_markdown(), (
        "regenerate: python -m gateway.schema._entities_doc > docs/reference/entities.md"
    )
