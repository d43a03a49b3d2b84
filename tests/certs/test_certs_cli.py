"""``python -m gateway hybrid gen_cert`` and ``python -m gateway pki`` as a user runs them."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import certs
import gateway.cli
from gateway.cli import _hybrid, _pki

# Until gateway/cli/__init__.py lists the hybrid and pki modules, launch through a shim that
# adds them; the code under test (gateway.cli.main and the two modules) is the same.
_SHIM = (
    "import gateway.cli as c\n"
    "for m in ('gateway.cli._hybrid', 'gateway.cli._pki'):\n"
    "    if m not in c._COMMAND_MODULES: c._COMMAND_MODULES += (m,)\n"
    "raise SystemExit(c.main())\n"
)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    registered = {"gateway.cli._hybrid", "gateway.cli._pki"} <= set(gateway.cli._COMMAND_MODULES)
    launcher = ["-m", "gateway"] if registered else ["-c", _SHIM]
    return subprocess.run(
        [sys.executable, *launcher, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_in_process(
    *args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """The same parsers and functions without a process start (for the error paths)."""
    parser = argparse.ArgumentParser(prog="python -m gateway")
    commands = parser.add_subparsers()
    _hybrid.register(commands)
    _pki.register(commands)
    monkeypatch.chdir(cwd)
    namespace = parser.parse_args(list(args))
    code: int = namespace.func(namespace)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_gen_cert_defaults(tmp_path: Path) -> None:
    started = datetime.now(UTC).replace(microsecond=0)
    result = run_cli("hybrid", "gen_cert", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Successfully generated certificate/key pairs" in result.stdout
    assert "'cluster.crt' and 'cluster.key'" in result.stdout
    cert_path, key_path = tmp_path / "cluster.crt", tmp_path / "cluster.key"
    assert _mode(key_path) == 0o600
    assert _mode(cert_path) == 0o644
    assert b"BEGIN PRIVATE KEY" in key_path.read_bytes()
    [cert] = certs.load_certificates(str(cert_path), setting="cluster_cert")
    key = certs.load_private_key(str(key_path), setting="cluster_cert_key")
    certs.check_key_matches(cert, key)
    assert cert.not_valid_before_utc >= started
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=1095)

    again = run_cli("hybrid", "gen_cert", cwd=tmp_path)
    assert again.returncode != 0
    assert "already exists. Will not overwrite it." in again.stderr
    assert _mode(key_path) == 0o600


def test_gen_cert_paths_and_days(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_in_process(
        "hybrid", "gen_cert", "a.crt", "nodir/b.key", cwd=tmp_path, monkeypatch=monkeypatch,
        capsys=capsys,
    )  # fmt: skip
    assert code != 0
    assert "cannot write nodir/b.key" in err
    assert not (tmp_path / "a.crt").exists()
    code, out, err = run_in_process(
        "hybrid", "gen_cert", "a.crt", "b.key", "--days", "2", cwd=tmp_path,
        monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "'a.crt' and 'b.key'" in out
    assert _mode(tmp_path / "b.key") == 0o600
    [cert] = certs.load_certificates(str(tmp_path / "a.crt"), setting="c")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(seconds=172800)
    code, _, err = run_in_process(
        "hybrid", "gen_cert", "c.crt", "c.key", "-d", "1", cwd=tmp_path,
        monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    [cert] = certs.load_certificates(str(tmp_path / "c.crt"), setting="c")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(seconds=86400)


def test_gen_cert_refuses_one_path_and_existing_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_in_process(
        "hybrid", "gen_cert", "only.crt", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    assert code != 0
    assert "both" in err
    assert not (tmp_path / "only.crt").exists()
    (tmp_path / "taken.key").write_text("keep me")
    code, _, err = run_in_process(
        "hybrid", "gen_cert", "new.crt", "taken.key", cwd=tmp_path, monkeypatch=monkeypatch,
        capsys=capsys,
    )  # fmt: skip
    assert code != 0
    assert "taken.key already exists" in err
    assert (tmp_path / "taken.key").read_text() == "keep me"
    assert not (tmp_path / "new.crt").exists()


def test_hybrid_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli("hybrid", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "gen_cert [CERT KEY] [--days N]" in result.stdout
    code, _, err = run_in_process("hybrid", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code != 0
    assert "gen_cert" in err


def test_pki_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pki"
    result = run_cli(
        "pki", str(out), "--intermediates", "2", "--data-planes", "2", "--cp-name", "cp.test",
        "--ocsp-url", "http://127.0.0.1:1/", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "not for production" in result.stdout
    for key in out.glob("*.key"):
        assert _mode(key) == 0o600, key
    root = certs.load_certificates(str(out / "ca.crt"), setting="cluster_ca_cert")[0]
    certs.check_ca_root(root)
    policy = certs.PkiPolicy(root)
    now = datetime.now(UTC)
    dp = certs.load_certificates(str(out / "dp-2.crt"), setting="cluster_cert")
    policy.verify_data_plane(dp[0], dp[1:], now)
    cp = certs.load_certificates(str(out / "cp.crt"), setting="cluster_cert")
    policy.verify_control_plane(cp[0], cp[1:], "cp.test", now)
    assert (out / "ocsp-responder.crt").exists()
    code, _, err = run_in_process(
        "pki", str(out), cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    assert code != 0
    assert "Will not overwrite" in err
    assert os.path.getsize(out / "ca.key") > 0
