"""Which build of the proxy hot path runs (``gateway._build``) and how setup.py picks it."""

from __future__ import annotations

import glob
import importlib.machinery
import os
import runpy
import sys
from pathlib import Path

import pytest

from gateway._build import HOT_PATH, HotPathBuild, hot_path_build

ROOT = Path(__file__).resolve().parent.parent


def test_every_hot_path_module_exists_as_source() -> None:
    for name in HOT_PATH:
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), name


def test_setup_compiles_exactly_the_hot_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []

    def fake_setup(**kwargs: object) -> None:
        calls.append(kwargs)

    import mypyc.build
    import setuptools

    seen: list[list[str]] = []
    monkeypatch.setattr(setuptools, "setup", fake_setup)
    monkeypatch.setattr(mypyc.build, "mypycify", lambda paths, **kw: seen.append(paths) or [])
    monkeypatch.delenv("TRIO_GATEWAY_PURE_PYTHON", raising=False)
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"))
    assert len(calls) == 1
    files = [p for p in seen[0] if not p.startswith("-")]
    assert files == [name.replace(".", "/") + ".py" for name in HOT_PATH]

    seen.clear()
    monkeypatch.setenv("TRIO_GATEWAY_PURE_PYTHON", "1")
    globbed: list[str] = []
    # (a pure install deletes in-place builds: not the ones this test session runs on)
    monkeypatch.setattr(glob, "glob", lambda pattern: globbed.append(pattern) or [])
    runpy.run_path(str(ROOT / "setup.py"))
    assert seen == []
    assert any(p.endswith("_handler.*") for p in globbed)
    assert any(p.endswith("__mypyc.*") for p in globbed)


def test_the_build_under_test_is_the_expected_one() -> None:
    build = hot_path_build()
    assert not build.stale
    if os.environ.get("TRIO_GATEWAY_PURE_PYTHON", "") not in ("", "0"):
        assert build.compiled == ()
        assert build.describe().startswith("pure Python")
    elif os.environ.get("CI") == "true":
        # CI machines have a C compiler: the README's install must have compiled it all
        assert build.compiled == HOT_PATH, build.describe()
        assert build.describe() == "compiled with mypyc"


def _fake_package(tmp_path: Path, checkout: bool) -> tuple[str, Path, Path]:
    pkg = tmp_path / "fakehot" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "fakehot" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    source = pkg / "mod.py"
    source.write_text("X = 1\n")
    compiled = pkg / ("mod" + importlib.machinery.EXTENSION_SUFFIXES[0])
    compiled.write_bytes(b"")  # found by find_spec, never loaded
    if checkout:
        (tmp_path / "setup.py").write_text("")
    return "fakehot.sub.mod", source, compiled


@pytest.mark.parametrize("checkout", [True, False])
def test_stale_extension_is_reported_only_in_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkout: bool
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name, source, compiled = _fake_package(tmp_path, checkout)
    os.utime(source, (1000, 1000))
    os.utime(compiled, (2000, 2000))
    fresh = hot_path_build((name,))
    assert fresh.compiled == (name,)
    assert fresh.stale == ()
    assert fresh.describe() == "compiled with mypyc"

    os.utime(source, (3000, 3000))  # edited after the build
    edited = hot_path_build((name,))
    if checkout:
        assert edited.stale == (name,)
        assert "STALE" in edited.describe()
        assert "pip install -e ." in edited.describe()
    else:
        assert edited.stale == ()
    for mod in [m for m in sys.modules if m.startswith("fakehot")]:
        del sys.modules[mod]


def test_descriptions() -> None:
    assert HotPathBuild((), (), 3).describe().startswith("pure Python")
    assert HotPathBuild(("a",), (), 3).describe() == "partly compiled (1 of 3 modules)"
    assert HotPathBuild(("a", "b", "c"), (), 3).describe() == "compiled with mypyc"
