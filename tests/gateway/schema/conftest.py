from __future__ import annotations

import pytest

from schema.standins import Pem, use_plugins


@pytest.fixture(autouse=True)
def _standin_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    use_plugins(monkeypatch)


@pytest.fixture(scope="session")
def pem() -> Pem:
    return Pem()
