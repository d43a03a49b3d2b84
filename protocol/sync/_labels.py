"""Data plane labels (``cluster_dp_labels``), validated as Kong does (kong-behaviour.md §10.2).

At most 10 labels; keys and values have 1 to 63 characters, start and end with an ASCII
letter or digit, and contain only ASCII letters, digits, ``_``, ``.``, ``:`` and ``-``
inside. Keys may not start with ``kong``, ``konnect``, ``insomnia``, ``mesh`` or ``kic``
(case-insensitive). Error texts follow Kong's so that operators recognise them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, cast

__all__ = ["MAX_LABELS", "parse_labels", "validate_labels"]

MAX_LABELS: Final = 10
MAX_LABEL_LENGTH: Final = 63
_BASE: Final = r"[a-z0-9](?:[\w.:-]*[a-z0-9])?"
_VALUE: Final = re.compile(_BASE, re.ASCII | re.IGNORECASE)
_KEY: Final = re.compile(r"(?!kong)(?!konnect)(?!insomnia)(?!mesh)(?!kic)" + _BASE, re.ASCII | re.I)
_RESERVED_HINT: Final = "(not starting with kong, konnect, insomnia, mesh or kic)"


def _check(kind: str, text: str, pattern: re.Pattern[str]) -> str | None:
    if not 1 <= len(text) <= MAX_LABEL_LENGTH:
        return (
            f"label {kind} validation failed: {text} must have between 1 and "
            f"{MAX_LABEL_LENGTH} characters"
        )
    if pattern.fullmatch(text) is None:
        hint = f" {_RESERVED_HINT}" if kind == "key" else ""
        return (
            f"label {kind} validation failed: {text} is invalid. Must match pattern: {_BASE}{hint}"
        )
    return None


def validate_labels(labels: Mapping[str, str]) -> list[str]:
    """Every problem with *labels*, as messages; an empty list when they are valid."""
    errors: list[str] = []
    if len(labels) > MAX_LABELS:
        errors.append(f"labels validation failed: count exceeded {MAX_LABELS} max elements")
    # Labels may come from untrusted JSON: check the types the signature promises.
    for key, value in cast(Mapping[object, object], labels).items():
        if not isinstance(key, str) or not isinstance(value, str):
            errors.append("labels validation failed: keys and values must be strings")
            continue
        for kind, text, pattern in (("key", key, _KEY), ("value", value, _VALUE)):
            problem = _check(kind, text, pattern)
            if problem is not None:
                errors.append(problem)
    return errors


def parse_labels(text: str) -> dict[str, str]:
    """Parse ``cluster_dp_labels`` (``"deployment:mycloud,region:us-east-1"``).

    Items are separated by ``,`` and split at their first ``:`` (values may contain ``:``);
    surrounding spaces of an item are ignored, an empty string means no labels. Raises
    ``ValueError`` whose message lists every problem, separated by ``"; "``.
    """
    if not text.strip():
        return {}
    items = [item.strip() for item in text.split(",")]
    labels: dict[str, str] = {}
    errors: list[str] = []
    if len(items) > MAX_LABELS:
        errors.append(f"labels validation failed: count exceeded {MAX_LABELS} max elements")
    for item in items:
        key, colon, value = item.partition(":")
        if not colon:
            errors.append(f"label key validation failed: {item} is not written key:value")
            continue
        if key in labels:
            errors.append(f"labels validation failed: duplicate key {key}")
        labels[key] = value
    errors.extend(e for e in validate_labels(labels) if "count exceeded" not in e)
    if errors:
        raise ValueError("; ".join(errors))
    return labels
