"""Which build of the proxy hot path is running: compiled by mypyc, or pure Python.

The install compiles the modules of ``HOT_PATH`` when it can (setup.py) and falls back to
the same modules as plain Python otherwise. The start-up log and ``python -m gateway check``
report the result, so a slow node is easy to explain. In a source checkout built in place
(``pip install -e .``) an extension module shadows its ``.py`` file: after an edit the old
code would keep running, so a compiled module older than its source is reported as stale
(and the test suite refuses to run on it).
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["HOT_PATH", "HotPathBuild", "hot_path_build"]

# the modules setup.py compiles (it reads this tuple; keep this module stdlib-only)
HOT_PATH = (
    "gateway.http._events",
    "gateway.http._fast_backend",
    "gateway.http._io",
    "gateway.http._parser",
    "gateway.http._server",
    "gateway.plugins._api",
    "gateway.plugins.bundled.key_auth",
    "gateway.plugins.bundled.rate_limiting",
    "gateway.proxy._handler",
    "gateway.proxy._pipeline",
    "gateway.proxy._pool",
    "gateway.proxy._router",
    "gateway.proxy._router_paths",
    "gateway.proxy._state",
)


class HotPathBuild:
    """``compiled``: the modules that are extension modules; ``stale``: those of them older
    than their source (only checked in a source checkout, where sources get edited)."""

    __slots__ = ("compiled", "stale", "total")

    def __init__(
        self, compiled: tuple[str, ...], stale: tuple[str, ...], total: int = len(HOT_PATH)
    ) -> None:
        self.compiled = compiled
        self.stale = stale
        self.total = total

    def describe(self) -> str:
        if self.stale:
            return (
                f"compiled with mypyc, but STALE ({', '.join(self.stale)} older than the "
                "source: rebuild with `pip install -e .`, or set TRIO_GATEWAY_PURE_PYTHON=1 when "
                "installing to run the sources)"
            )
        if len(self.compiled) == self.total:
            return "compiled with mypyc"
        if not self.compiled:
            return "pure Python (not compiled: slower, see docs/performance.md)"
        return f"partly compiled ({len(self.compiled)} of {self.total} modules)"


def hot_path_build(modules: tuple[str, ...] = HOT_PATH) -> HotPathBuild:
    compiled: list[str] = []
    stale: list[str] = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is None or origin.endswith(".py"):
            continue
        compiled.append(name)
        source = os.path.join(os.path.dirname(origin), name.rpartition(".")[2] + ".py")
        if _in_checkout(origin) and _newer(source, origin):
            stale.append(name)
    return HotPathBuild(tuple(compiled), tuple(stale), len(modules))


def _in_checkout(origin: str) -> bool:
    # gateway/<package>/<module>.so -> the repository root holds setup.py
    root = os.path.dirname(os.path.dirname(os.path.dirname(origin)))
    return os.path.exists(os.path.join(root, "setup.py"))


def _newer(source: str, compiled: str) -> bool:
    try:
        return os.path.getmtime(source) > os.path.getmtime(compiled)
    except OSError:
        return False
