"""Writing entities back as a Kong-style declarative document.

The export keeps ids and timestamps and drops only nulls that the import would restore (a
null field whose default is null), so ``parse_declarative(export_declarative(x))`` gives
``x`` back exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.declarative._parse import FORMAT_VERSION
from gateway.schema import Field, Foreign, Record
from gateway.schema._entities_plugins import find_plugin
from gateway.schema.entities import ENTITIES

#: child entity -> (parent entity, foreign field) used when nesting.
_NEST_UNDER: dict[str, tuple[str, str]] = {
    "snis": ("certificates", "certificate"),
    "routes": ("services", "service"),
    "keyauth_credentials": ("consumers", "consumer"),
    "targets": ("upstreams", "upstream"),
}
_PLUGIN_PARENTS = {"route": "routes", "service": "services", "consumer": "consumers"}


def export_declarative(
    entities: Mapping[str, Sequence[Mapping[str, Any]]], *, nested: bool = False
) -> dict[str, Any]:
    """A ``_format_version: "3.0"`` document of ``entities`` (``{entity: [rows]}``, the
    runtime configuration or a store export). Unknown keys of ``entities`` are ignored.

    Flat: one top-level list per entity type. Nested (``nested=True``): routes under their
    service, targets under their upstream, SNIs under their certificate, key-auth
    credentials under their consumer, and plugins scoped to exactly one route, service or
    consumer under it; everything else stays at the top level.
    """
    rows: dict[str, list[dict[str, Any]]] = {}
    by_id: dict[str, dict[str, dict[str, Any]]] = {}
    for name, schema in ENTITIES.items():
        exported = [
            _export_record(schema.record, row, plugin_config=(name == "plugins"))
            for row in sorted(entities.get(name) or [], key=lambda r: str(r.get("id")))
        ]
        rows[name] = exported
        by_id[name] = {str(r.get("id")): r for r in exported}

    if nested:
        for name in ENTITIES:
            kept: list[dict[str, Any]] = []
            for row in rows[name]:
                parent = _parent_of(name, row)
                if parent is None:
                    kept.append(row)
                    continue
                parent_entity, fname = parent
                parent_row = by_id[parent_entity].get(str(row[fname]))
                if parent_row is None:
                    kept.append(row)
                    continue
                del row[fname]
                parent_row.setdefault(name, []).append(row)
            rows[name] = kept

    doc: dict[str, Any] = {"_format_version": FORMAT_VERSION}
    for name in ENTITIES:
        if rows[name]:
            doc[name] = rows[name]
    return doc


def _parent_of(entity: str, row: Mapping[str, Any]) -> tuple[str, str] | None:
    if entity in _NEST_UNDER:
        parent, fname = _NEST_UNDER[entity]
        return (parent, fname) if row.get(fname) is not None else None
    if entity == "plugins":
        scoped = [f for f in _PLUGIN_PARENTS if row.get(f) is not None]
        if len(scoped) == 1:
            return _PLUGIN_PARENTS[scoped[0]], scoped[0]
    return None


def _export_record(
    record: Record, row: Mapping[str, Any], *, plugin_config: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in record.fields.items():
        if name not in row:
            continue
        value = row[name]
        if plugin_config and name == "config":
            plugin = find_plugin(str(row.get("name")))
            if plugin is not None and isinstance(value, Mapping):
                out[name] = _export_record(plugin.config_schema, value)
            else:
                out[name] = value
            continue
        if value is None:
            if _restored_as_null(field):
                continue
            out[name] = None
        elif isinstance(field, Foreign):
            out[name] = value.get("id") if isinstance(value, Mapping) else value
        elif isinstance(field, Record) and isinstance(value, Mapping):
            out[name] = _export_record(field, value)
        else:
            out[name] = _copy(value)
    if record.allow_unknown:
        for name, value in row.items():
            if name not in record.fields:
                out[name] = _copy(value)
    return out


def _restored_as_null(field: Field) -> bool:
    """True when an absent field imports as null again."""
    if isinstance(field, Record):
        return field.default_value() is None
    return field.default is None


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
