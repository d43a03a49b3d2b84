"""Entity schemas: a ``Record`` plus what the DAO and the Admin API need to know."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.schema._errors import SchemaViolation
from gateway.schema._fields import (
    EntityCheck,
    Field,
    Foreign,
    Record,
    Timestamp,
    Uuid,
    _deepcopy,
)

Preprocess = Callable[[dict[str, Any]], dict[str, Any]]


class EntitySchema:
    """One entity type (``services``, ``routes``...).

    ``endpoint_key``: the unique field that may stand for the id in URLs (``name``,
    ``username``). ``preprocess``: rewrites shorthands before validation (a service's
    ``url``). ``owner``: the foreign field of an entity that only exists below another one
    (``keyauth_credentials.consumer``). ``cache_key``: fields that together are unique.
    ``on_insert``: fills auto-generated values (a key-auth ``key``) on insert and replace
    only, never on PATCH.
    """

    def __init__(
        self,
        name: str,
        fields: Sequence[tuple[str, Field]],
        *,
        endpoint_key: str | None = None,
        entity_checks: Sequence[EntityCheck] = (),
        preprocess: Preprocess | None = None,
        admin_path: str | None = None,
        owner: str | None = None,
        cache_key: Sequence[str] = (),
        timestamps: bool = True,
        generate_admin_api: bool = True,
        on_insert: Preprocess | None = None,
    ) -> None:
        base: list[tuple[str, Field]] = [("id", Uuid(auto=True))]
        if timestamps:
            base += [("created_at", Timestamp(auto=True)), ("updated_at", Timestamp(auto=True))]
        self.name = name
        self.record = Record(base + list(fields), entity_checks=entity_checks)
        self.endpoint_key = endpoint_key
        self.preprocess = preprocess
        self.admin_path = admin_path or name
        self.owner = owner
        self.cache_key = tuple(cache_key)
        self.timestamps = timestamps
        self.generate_admin_api = generate_admin_api
        self.on_insert = on_insert

    # -- metadata ---------------------------------------------------------------------------
    @property
    def fields(self) -> dict[str, Field]:
        return self.record.fields

    def foreign_keys(self) -> dict[str, Foreign]:
        return {n: f for n, f in self.fields.items() if isinstance(f, Foreign)}

    def unique_fields(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.unique and n != "id"]

    def defaults(self) -> dict[str, Any]:
        """Every field with its default (``None`` where there is none), as an entity stored
        without those fields would have them: a base for tests and tools that build
        entities by hand (ids and timestamps are ``None``, to be filled in). Nested records
        come with their own defaults filled in, as validation fills them."""
        out: dict[str, Any] = {}
        for name, field in self.fields.items():
            value = field.default_value()
            if isinstance(field, Record) and isinstance(value, dict):
                filled, errors = field.validate_record(value)
                if errors is None:
                    value = filled
            out[name] = value
        return out

    # -- validation -------------------------------------------------------------------------
    def _prepare(self, data: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise SchemaViolation({"@entity": ["expected a record"]})
        out = dict(data)
        if self.preprocess is not None:
            out = self.preprocess(out)
        return out

    def validate_insert(self, data: Mapping[str, Any], *, now: int) -> dict[str, Any]:
        """A new entity: defaults filled, id generated unless given, timestamps set."""
        prepared = self._prepare(data)
        if self.on_insert is not None:
            prepared = self.on_insert(prepared)
        if prepared.get("id") is None:
            prepared["id"] = str(uuid.uuid4())
        if self.timestamps:
            prepared.setdefault("created_at", now)
            prepared["updated_at"] = now
        return self._validate_full(prepared)

    def validate_update(
        self, existing: Mapping[str, Any], patch: Mapping[str, Any], *, now: int
    ) -> dict[str, Any]:
        """PATCH semantics: merge ``patch`` into ``existing`` (records merged deeply)."""
        prepared = self._prepare(patch)
        merged = self._merge(existing, prepared)
        merged["id"] = existing["id"]
        if self.timestamps:
            merged["created_at"] = existing.get("created_at", now)
            merged["updated_at"] = now
        return self._validate_full(merged)

    def validate_replace(
        self, entity_id: str, data: Mapping[str, Any], *, now: int, created_at: int | None
    ) -> dict[str, Any]:
        """PUT semantics: the body replaces the entity entirely (defaults fill the rest)."""
        prepared = self._prepare(data)
        if self.on_insert is not None:
            prepared = self.on_insert(prepared)
        prepared["id"] = entity_id
        if self.timestamps:
            prepared["created_at"] = created_at if created_at is not None else now
            prepared["updated_at"] = now
        return self._validate_full(prepared)

    def _merge(self, existing: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
        return _merge(dict(existing), patch, self.record)

    def validate_stored(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """A complete entity (declarative config, DP apply): validate, fill defaults."""
        return self._validate_full(self._prepare(data))

    def _validate_full(self, data: dict[str, Any]) -> dict[str, Any]:
        value, errors = self.record.validate_record(data)
        if errors is not None:
            raise SchemaViolation(errors if isinstance(errors, dict) else {"@entity": [errors]})
        result: dict[str, Any] = value
        return result

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "primary_key": ["id"],
            "fields": [{n: f.describe()} for n, f in self.fields.items()],
        }
        if self.endpoint_key:
            out["endpoint_key"] = self.endpoint_key
        if self.cache_key:
            out["cache_key"] = list(self.cache_key)
        return out


def _merge(
    base: dict[str, Any], patch: Mapping[str, Any], record: Record | None = None
) -> dict[str, Any]:
    """Kong's PATCH merge: records (plugin config, healthchecks) merge field by field;
    maps, arrays and scalars are replaced. Without a ``record`` every dict merges."""
    out: dict[str, Any] = _deepcopy(base)
    for key, value in patch.items():
        current = out.get(key)
        field = record.fields.get(key) if record is not None else None
        is_record = record is None or isinstance(field, Record)
        if is_record and isinstance(current, dict) and isinstance(value, Mapping) and value:
            sub = field if isinstance(field, Record) else None
            out[key] = _merge(current, value, sub)
        else:
            out[key] = _deepcopy(value)
    merged: dict[str, Any] = out
    return merged
