"""``python -m gateway config parse|db_import|db_export`` (in process, SQLite in tmp_path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.declarative import load_declarative, parse_declarative

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "kong" / "kong.yml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


def test_parse_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "parse", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("parse successful: ")
    assert "4 services" in out


def test_parse_lists_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        '_format_version: "3.0"\n'
        "services:\n- name: s\n  routes:\n  - paths: [nope]\n"
        "consumers:\n- tags: [x]\n",
        encoding="utf-8",
    )
    assert main(["config", "parse", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "Error: invalid declarative configuration",
        "  consumers.1: at least one of these fields must be non-empty: 'custom_id', 'username'",
        "  services.1.host: required field missing",
        "  services.1.routes.1.paths.1: should start with: / (fixed path) or ~/ (regex path)",
    ]


def test_parse_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "parse", str(tmp_path / "none.yml")]) == 1
    assert "failed reading declarative configuration" in capsys.readouterr().err


def _settings(tmp_path: Path) -> list[str]:
    return ["--prefix", str(tmp_path), "--set", "database=sqlite"]


def test_db_import_then_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gateway.store")
    assert main(["config", "db_import", str(FIXTURE), *_settings(tmp_path)]) == 0
    assert "import successful: config version" in capsys.readouterr().out
    out_file = tmp_path / "export.yml"
    assert main(["config", "db_export", str(out_file), *_settings(tmp_path)]) == 0
    assert f"written to {out_file}" in capsys.readouterr().out
    exported: dict[str, Any] = load_declarative(out_file)
    original = parse_declarative(load_declarative(FIXTURE))
    again = parse_declarative(exported)
    strip = {"created_at", "updated_at"}

    def without_times(config: dict[str, Any]) -> dict[str, Any]:
        return {
            k: [{f: v for f, v in e.items() if f not in strip} for e in rows]
            if isinstance(rows, list)
            else rows
            for k, rows in config.items()
        }

    assert without_times(again) == without_times(original)
    assert all(s["created_at"] is not None for s in again["services"])
    json_file = tmp_path / "export.json"
    assert main(["config", "db_export", str(json_file), "--nested", *_settings(tmp_path)]) == 0
    nested = load_declarative(json_file)
    assert "routes" not in nested
    assert parse_declarative(nested) == again


def test_db_import_refuses_invalid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text('_format_version: "9.9"\n', encoding="utf-8")
    assert main(["config", "db_import", str(bad), *_settings(tmp_path)]) == 1
    assert "unsupported declarative format version '9.9'" in capsys.readouterr().err
