"""Fixtures for real-process integration tests (see helpers.py)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ProcessGroup, Upstream, gen_shared_cert


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessGroup]:
    """Gateway processes of one test; all stopped at the end, logs printed on failure."""
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            print(group.logs())


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture
def shared_certs(tmp_path: Path) -> tuple[Path, Path]:
    """``cluster.crt`` / ``cluster.key`` made by ``python -m gateway hybrid gen_cert``."""
    return gen_shared_cert(tmp_path / "cluster-certs")
