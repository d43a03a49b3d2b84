"""Every example script runs as is and shows what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("embedded_traditional.py", ["-> 200"]),
        ("shared_mode.py", ["-> 200", "sync_status=normal", "every data plane answers 404"]),
        ("pki_mode.py", ["PKI, 1 intermediate", "-> 200", "every data plane answers 404"]),
    ],
)
def test_example_runs(script: str, expected: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT / "examples",
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for text in expected:
        assert text in result.stdout, (text, result.stdout, result.stderr[-3000:])
