"""``python -m gateway check``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from settings_helpers import ClusterFiles

from gateway import cli
from gateway.cli import _check


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway")
    _check.register(parser.add_subparsers())
    return parser


def _run_in_process(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    result: int = args.func(args)
    return result


def test_check_ok(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("GATEWAY_")]:
        monkeypatch.delenv(var)
    assert _run_in_process(["check", "--set", "log_level=debug"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("configuration OK (role = traditional, prefix = ")
    assert lines[1].startswith("proxy hot path: ")  # compiled with mypyc, or pure Python
    assert err == ""


def test_check_reports_every_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_CLUSTER_MAX_PAYLOAD", "1")
    status = _run_in_process(["check", "--role", "data_plane", "--set", "proxy_listn=off"])
    assert status == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "configuration invalid: 4 error(s)",
        "  proxy_listn: unknown setting on the command line; did you mean 'proxy_listen'?",
        "  cluster_max_payload: must be 4194304 (4MB) or greater, got 1 "
        "(from environment variable GATEWAY_CLUSTER_MAX_PAYLOAD)",
        '  database: only in-memory storage can be used when role = "data_plane"; '
        "Hint: set database = off",
        "  cluster_cert: cluster certificate and key must be provided to use Hybrid mode "
        "(set cluster_cert and cluster_cert_key)",
    ]


_REGISTERED = "gateway.cli._check" in cli._COMMAND_MODULES


@pytest.mark.skipif(not _REGISTERED, reason="gateway.cli._check is not in _COMMAND_MODULES yet")
def test_check_subprocess(tmp_path: Path, cluster_files: ClusterFiles) -> None:
    conf = tmp_path / "dp.toml"
    conf.write_text(
        f'role = "data_plane"\ndatabase = "off"\ncluster_cert = "{cluster_files.cert}"\n'
        f'cluster_cert_key = "{cluster_files.key}"\ncluster_dp_labels = "region:eu"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "check", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    ok = run("--conf", str(conf))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("configuration OK (role = data_plane")

    bad = run("--conf", str(conf), "--set", "cluster_dp_labels=w@:_a", "--set", "database=sqlite")
    assert bad.returncode == 1
    assert bad.stdout == ""
    lines = bad.stderr.splitlines()
    assert lines[0] == "configuration invalid: 3 error(s)"
    assert lines[1].startswith("  cluster_dp_labels: label key validation failed: w@")
    assert lines[2].startswith("  cluster_dp_labels: label value validation failed: _a")
    assert lines[3].startswith("  database: only in-memory storage can be used")
