from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser("start", help="start a node")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    print("not wired yet")
    return 1
