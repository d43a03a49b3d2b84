"""Kong 3.x core entities: ``ENTITIES`` maps each entity name to its ``EntitySchema``.

The order of ``ENTITIES`` is a dependency order: an entity only references entities listed
before it (a route its service, a plugin its route, service and consumer). The declarative
loader, the store's import and the documentation rely on it.
"""

from __future__ import annotations

from gateway.schema._entities_core import CONSUMERS, KEYAUTH_CREDENTIALS, ROUTES, SERVICES
from gateway.schema._entities_lb import TARGETS, UPSTREAMS, normalize_target
from gateway.schema._entities_plugins import PLUGINS, PluginsSchema
from gateway.schema._entities_tls import (
    CA_CERTIFICATES,
    CERTIFICATES,
    SNIS,
    certificate_digest,
)
from gateway.schema._entities_types import PROTOCOLS, compile_route_regex
from gateway.schema._entity import EntitySchema

ENTITIES: dict[str, EntitySchema] = {
    schema.name: schema
    for schema in (
        CERTIFICATES,
        CA_CERTIFICATES,
        SNIS,
        SERVICES,
        ROUTES,
        CONSUMERS,
        KEYAUTH_CREDENTIALS,
        UPSTREAMS,
        TARGETS,
        PLUGINS,
    )
}


def references(entity: str) -> dict[str, str]:
    """``{foreign field: referenced entity}`` of ``entity`` (``routes`` -> ``{service:
    services}``)."""
    return {name: f.reference for name, f in ENTITIES[entity].foreign_keys().items()}


def referencing(entity: str) -> list[tuple[str, str]]:
    """``[(child entity, foreign field)]`` of the entities that reference ``entity``."""
    return [
        (child, field)
        for child in ENTITIES
        for field, ref in references(child).items()
        if ref == entity
    ]


__all__ = [
    "ENTITIES",
    "PROTOCOLS",
    "PluginsSchema",
    "certificate_digest",
    "compile_route_regex",
    "normalize_target",
    "references",
    "referencing",
]
