"""The plugins entity: its ``config`` is validated by the named plugin's own schema.

Theory of operation: the generic part of a plugin entity (name, scope, protocols...) is an
ordinary record. The ``config`` field is a placeholder in that record (so ``/schemas`` and
PATCH merging see a record); validation swaps in ``get_plugin(name).config_schema``, nests its
errors under ``config`` and applies the class's scoping restrictions (``no_consumer``,
``no_route``, ``no_service``) and protocol choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.schema import _entities_types as t
from gateway.schema._entity import EntitySchema, _merge
from gateway.schema._errors import SchemaViolation
from gateway.schema._fields import Boolean, Record, String, _deepcopy

if TYPE_CHECKING:
    from gateway.plugins._plugin import Plugin

DEFAULT_PLUGIN_PROTOCOLS = ("grpc", "grpcs", "http", "https")


def find_plugin(name: str) -> type[Plugin] | None:
    # Imported late: gateway.plugins imports gateway.schema.
    from gateway.plugins._registry import get_plugin

    return get_plugin(name)


def not_enabled_message(name: str) -> str:
    return f"plugin '{name}' not enabled; add it to the 'plugins' configuration property"


class PluginsSchema(EntitySchema):
    """``plugins``: validates ``config`` against the plugin class's ``config_schema``."""

    def __init__(self) -> None:
        super().__init__(
            "plugins",
            [
                ("name", String(required=True)),
                ("instance_name", t.utf8_name()),
                ("route", t.foreign("routes", on_delete="cascade")),
                ("service", t.foreign("services", on_delete="cascade")),
                ("consumer", t.foreign("consumers", on_delete="cascade")),
                ("config", Record([], required=True, allow_unknown=True)),
                ("protocols", t.protocol_set(default=DEFAULT_PLUGIN_PROTOCOLS, exclusive=False)),
                ("enabled", Boolean(required=True, default=True)),
                ("tags", t.tags()),
            ],
            endpoint_key="instance_name",
            cache_key=("name", "route", "service", "consumer"),
        )

    def _validate_full(self, data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        name = data.get("name")
        cls = find_plugin(name) if isinstance(name, str) else None
        raw_config = data.pop("config", None)
        if cls is not None and data.get("protocols") is None:
            data["protocols"] = list(cls.protocols)
        errors: dict[str, Any] = {}
        base = dict(data)
        base["config"] = {}
        value, base_errors = self.record.validate_record(base)
        if isinstance(base_errors, dict):
            errors.update(base_errors)
        elif base_errors is not None:
            errors["@entity"] = [base_errors]
        if isinstance(name, str) and cls is None and "name" not in errors:
            errors["name"] = not_enabled_message(name)
        config: Any = None
        if cls is not None:
            config, config_errors = cls.config_schema.validate_record(
                {} if raw_config is None else raw_config
            )
            if config_errors is not None:
                errors["config"] = config_errors
            if not errors:
                errors.update(_scope_errors(cls, value))
        if errors:
            raise SchemaViolation(errors)
        result: dict[str, Any] = dict(value)
        result["config"] = config
        return result

    def _merge(self, existing: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
        rest = {k: v for k, v in patch.items() if k != "config"}
        merged = _merge(dict(existing), rest, self.record)
        if "config" in patch:
            new = patch["config"]
            old = existing.get("config")
            name = merged.get("name")
            cls = find_plugin(name) if isinstance(name, str) else None
            if isinstance(new, Mapping) and new and isinstance(old, dict):
                merged["config"] = _merge(old, new, cls.config_schema if cls else None)
            else:
                merged["config"] = _deepcopy(new)
        return merged


def _scope_errors(cls: type[Plugin], plugin: Mapping[str, Any]) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    for field, forbidden in (
        ("consumer", cls.no_consumer),
        ("route", cls.no_route),
        ("service", cls.no_service),
    ):
        if forbidden and plugin.get(field) is not None:
            errors[field] = "value must be null"
    allowed = tuple(cls.protocols)
    protocols = plugin.get("protocols") or []
    if any(p not in allowed for p in protocols):
        message = "expected one of: " + ", ".join(allowed)
        errors["protocols"] = [None if p in allowed else message for p in protocols]
    return errors


PLUGINS = PluginsSchema()
