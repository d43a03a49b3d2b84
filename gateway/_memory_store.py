"""A read-only view of an in-memory configuration with the store's read API.

Used by the Admin API of a node without a database (``database = off``): entities can be
listed and read, never written (writes answer 405 before reaching the store).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.schema import EntityError, ErrorCode

Row = dict[str, Any]


class MemoryStore:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self._entities: dict[str, list[Row]] = {}
        self._version = 0
        self.replace(config)

    def replace(self, config: Mapping[str, Any]) -> None:
        """Show ``config`` from now on (``POST /config`` of a node without a database)."""
        self._entities = {
            k: sorted(v, key=lambda r: str(r.get("id")))
            for k, v in config.items()
            if not k.startswith("_") and isinstance(v, list)
        }
        self._version += 1

    async def get(self, entity: str, entity_id: str) -> Row | None:
        return next((r for r in self._entities.get(entity, []) if r.get("id") == entity_id), None)

    async def get_by(self, entity: str, field: str, value: Any) -> Row | None:
        return next((r for r in self._entities.get(entity, []) if r.get(field) == value), None)

    async def page(
        self,
        entity: str,
        *,
        size: int = 100,
        offset: str | None = None,
        tags: Sequence[str] | None = None,
        tags_mode: str = "and",
        filters: Mapping[str, Any] | None = None,
    ) -> tuple[list[Row], str | None]:
        rows = self._entities.get(entity, [])
        for field, wanted in (filters or {}).items():
            rows = [r for r in rows if (r.get(field) or {}).get("id") == wanted]
        if tags:
            want = set(tags)
            if tags_mode == "or":
                rows = [r for r in rows if want & set(r.get("tags") or ())]
            else:
                rows = [r for r in rows if want <= set(r.get("tags") or ())]
        start = 0
        if offset:
            try:
                start = int(base64.urlsafe_b64decode(offset.encode()).decode())
            except (ValueError, UnicodeDecodeError):
                start = -1
            if start < 0:
                raise EntityError(ErrorCode.INVALID_OFFSET, f"'{offset}' is not a valid offset")
        chunk = rows[start : start + size]
        nxt = None
        if start + size < len(rows):
            nxt = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return chunk, nxt

    async def count(self, entity: str) -> int:
        return len(self._entities.get(entity, []))

    async def current_version(self) -> int:
        """1 for the configuration the node started with, one more per ``replace``."""
        return self._version

    async def export(self) -> tuple[int, dict[str, list[Row]]]:
        return self._version, {k: list(v) for k, v in self._entities.items()}
