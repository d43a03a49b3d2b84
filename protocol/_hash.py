"""Content hash of a runtime configuration (the "config dict" of docs/design/contracts.md §1).

Theory of operation
-------------------
The hash answers one question: "do these two nodes run the same configuration?". It must
therefore depend on content only, never on the order in which a store happened to list
entities or keys, and it must be cheap to recompute on a data plane after every apply.

Definition (also in docs/reference/protocol.md, "Config hash"):

1. Top-level keys that start with ``_`` (``_format_version``, ``_transform``, ``_comment``)
   are metadata and are left out. Every other top-level key is included.
2. A top-level value that is a list is an entity collection. Inside each entity (a JSON
   object directly in such a list) the ``updated_at`` field is dropped: it is bookkeeping
   that a no-op write bumps, and hashing it would make every data plane re-apply an
   unchanged configuration. ``created_at`` is kept: it never changes for an entity and it
   anchors TTL expiry, so it is runtime-relevant.
3. Each element is serialised as canonical JSON (below); the elements of a collection are
   sorted by (``id`` when it is a string else ``""``, canonical text), so the order of
   entities does not matter. Nested lists (route ``paths``, plugin config arrays) keep
   their order: it is meaningful there.
4. Empty collections are treated exactly like missing keys.
5. If nothing remains, the hash is :data:`EMPTY_CONFIG_HASH` (32 zeros), which is also the
   hash a data plane reports when it runs no configuration at all (Kong's
   ``DECLARATIVE_EMPTY_CONFIG_HASH``).
6. Otherwise the document ``{key: sorted elements | value, ...}`` is written as canonical
   JSON and hashed with SHA-256; the hash is the first 32 lower-case hex digits (the width
   of Kong's ``config_hash`` column).

Canonical JSON is Python's ``json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)``: object keys sorted by code point, no whitespace,
every non-ASCII character escaped as ``\\uXXXX`` (lower-case hex, surrogate pairs for
astral characters), floats in shortest round-trip form (``0.1``, ``1e+16``), integers
without a decimal point. ASCII escaping makes the hash defined for every Python string,
including lone surrogates that a JSON parser lets through, so hashing untrusted input on a
data plane cannot fail on encoding. ``1`` and ``1.0`` hash differently: configurations are
type-normalised by ``gateway.schema`` before they are hashed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["EMPTY_CONFIG_HASH", "HASH_LENGTH", "config_hash", "is_config_hash"]

HASH_LENGTH: Final = 32
#: Hash of a configuration without any entity, and of "no configuration at all".
EMPTY_CONFIG_HASH: Final = "0" * HASH_LENGTH

#: Fields of an entity that do not take part in the hash (see the module docstring).
_EXCLUDED_ENTITY_FIELDS: Final = frozenset({"updated_at"})
_HEX: Final = frozenset("0123456789abcdef")


def _canonical(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _element(value: Any) -> tuple[str, str]:
    if isinstance(value, Mapping):
        entity_id = value.get("id")
        kept = {k: v for k, v in value.items() if k not in _EXCLUDED_ENTITY_FIELDS}
        return (entity_id if isinstance(entity_id, str) else "", _canonical(kept))
    return ("", _canonical(value))


def config_hash(config: Mapping[str, Any]) -> str:
    """Return the 32-hex-digit content hash of a runtime configuration.

    Raises ``ValueError`` or ``TypeError`` if the configuration is not JSON-serialisable
    (NaN, infinities, non-string keys mixed with string keys, arbitrary objects).
    """
    parts: list[str] = []
    for key in sorted(config):
        if not isinstance(key, str):
            raise TypeError(f"configuration keys must be strings, not {type(key).__name__}")
        if key.startswith("_"):
            continue
        value = config[key]
        if isinstance(value, list | tuple):
            if not value:
                continue
            elements = sorted(_element(item) for item in value)
            text = "[" + ",".join(canonical for _, canonical in elements) + "]"
        else:
            text = _canonical(value)
        parts.append(_canonical(key) + ":" + text)
    if not parts:
        return EMPTY_CONFIG_HASH
    digest = hashlib.sha256()
    digest.update(b"{")
    for index, part in enumerate(parts):
        if index:
            digest.update(b",")
        digest.update(part.encode("ascii"))
    digest.update(b"}")
    return digest.hexdigest()[:HASH_LENGTH]


def is_config_hash(value: object) -> bool:
    """True if *value* is a well-formed config hash (32 lower-case hex digits)."""
    return isinstance(value, str) and len(value) == HASH_LENGTH and set(value) <= _HEX
