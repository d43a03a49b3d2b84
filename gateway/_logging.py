"""Logging for a node: one line per event on stderr, levels named like kong.conf's."""

from __future__ import annotations

import logging
import sys

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "crit": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emerg": logging.CRITICAL,
}


def configure_logging(level: str, *, role: str | None = None) -> None:
    """Install a stderr handler on the ``gateway`` logger (idempotent)."""
    logger = logging.getLogger("gateway")
    logger.setLevel(_LEVELS.get(level, logging.INFO))
    if any(getattr(h, "_gateway", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    tag = f" [{role}]" if role else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s"))
    handler._gateway = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
