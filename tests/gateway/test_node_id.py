from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from gateway._node_id import load_or_create_node_id


def test_generated_once_and_reused(tmp_path: Path) -> None:
    first = load_or_create_node_id(tmp_path)
    assert str(uuid.UUID(first)) == first
    assert load_or_create_node_id(tmp_path) == first


def test_corrupt_file_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "node.id").write_text("not-a-uuid")
    with caplog.at_level(logging.WARNING, logger="gateway"):
        node_id = load_or_create_node_id(tmp_path)
    assert "corrupt" in caplog.text
    assert load_or_create_node_id(tmp_path) == node_id


def test_configured_id_wins(tmp_path: Path) -> None:
    wanted = str(uuid.uuid4())
    assert load_or_create_node_id(tmp_path, wanted) == wanted
