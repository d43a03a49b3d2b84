"""Build hook: compiles the proxy's hot path with mypyc when it can.

Everything else about the package is in pyproject.toml. The modules listed in
``gateway._build.HOT_PATH`` are plain, strictly typed Python; mypyc turns them into C
extensions (about 1.8x the proxy throughput, see docs/performance.md). The build falls back
to pure Python, with a warning, when there is no C compiler or the compilation fails, and
``TRIO_GATEWAY_PURE_PYTHON=1`` skips it and deletes what an earlier in-place build left
(handy while editing those modules: an in-place build shadows the .py files until rebuilt).
``python -m gateway check`` and the start-up log say which of the two is running.
"""

from __future__ import annotations

import glob
import os
import runpy
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# the list lives with the runtime check of which build is running (stdlib-only module)
HERE = os.path.dirname(os.path.abspath(__file__))
HOT_PATH = runpy.run_path(os.path.join(HERE, "gateway", "_build.py"))["HOT_PATH"]
COMPILED = [name.replace(".", "/") + ".py" for name in HOT_PATH]


class OptionalBuildExt(build_ext):
    """Builds the mypyc extensions, or none of them: a half-built set would not import."""

    def run(self) -> None:
        self.parallel = os.cpu_count() or 1  # one extension per module: compile them in parallel
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, a mypyc failure...
            self._give_up(exc)
            return
        if not self.inplace and self.extensions and os.path.isdir(os.path.join(HERE, ".git")):
            # `pip install .` from a checkout: put the modules next to the sources too, as an
            # editable install does, or `python -m gateway` run in the checkout (the Quick
            # start) would import the uncompiled sources in front of the installed package
            self.copy_extensions_to_source()

    def _give_up(self, exc: Exception) -> None:
        for ext in self.extensions:
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.remove(path)
        self.extensions = []
        print(
            f"warning: the proxy hot path was not compiled ({exc}); installing pure Python",
            file=sys.stderr,
        )


def remove_inplace_builds() -> None:
    """Delete extension modules an earlier in-place (editable) build left next to the
    sources: they would shadow the .py files of a pure-Python install."""
    patterns = [os.path.join(HERE, "*__mypyc.*")]
    for name in HOT_PATH:
        stem = os.path.join(HERE, name.replace(".", os.sep))
        patterns += [stem + ".*", stem + "__mypyc.*"]
    for pattern in patterns:
        for path in glob.glob(pattern):
            if path.endswith((".so", ".pyd")):
                os.remove(path)


def extensions() -> list[object]:
    if os.environ.get("TRIO_GATEWAY_PURE_PYTHON", "") not in ("", "0"):
        remove_inplace_builds()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        print(f"warning: mypyc unavailable ({exc}); installing pure Python", file=sys.stderr)
        return []
    # Not the project's strict config: the build environment has only some of the runtime
    # dependencies (pyproject's build-system.requires: trio and attrs, whose types the
    # compiled modules need); the others are typed Any, and errors in modules that are not
    # compiled are not reported (mypy already checks them all in CI).
    options = ["--config-file=", "--ignore-missing-imports", "--follow-imports=silent"]
    try:
        # separate: one extension per module (X and X__mypyc next to X.py), built in parallel
        return list(mypycify([*options, *COMPILED], opt_level="3", separate=True))
    except (Exception, SystemExit) as exc:  # mypyc exits through SystemExit on a type error
        print(f"warning: mypyc failed ({exc!r}); installing pure Python", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
