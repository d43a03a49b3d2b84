"""Validating a declarative document into the runtime configuration (contracts.md §1).

Theory of operation, in five passes over the document:

1. *Collect*: walk the top-level entity lists and every nested list (an entity may nest
   below any entity it references: routes under services, plugins under routes, targets under
   upstreams...). Each entity becomes an ``_Item`` remembering its path in the document (for
   errors) and its parent (whose id fills the child's foreign key).
2. *Migrate*: documents older than 3.0 get Kong's 3.0 rewrite (regex route paths gain ``~``).
3. *Resolve and identify*, entity type by entity type in ``ENTITIES`` order (referenced types
   first): foreign keys given by endpoint key (``service: my-service``) or id become
   ``{"id": ...}``; a missing id is generated with UUIDv5 as Kong does (namespace from the
   entity name; name from the endpoint key, else the cache key, else the entity's content),
   so the same document always gives the same ids.
4. *Validate* each entity with its schema (defaults filled), then check uniqueness (primary
   key, unique fields, cache keys) across the whole document.
5. *Report or produce*: every error lands in one tree shaped like the input and one
   ``DeclarativeError``; otherwise the flat lists, each sorted by id, so that the same content
   in another order gives the same configuration (and the same hash).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.declarative._errors import DeclarativeError
from gateway.schema import ErrorTree, SchemaViolation
from gateway.schema.entities import ENTITIES, references, referencing

RuntimeConfig = dict[str, Any]

FORMAT_VERSION = "3.0"
SUPPORTED_VERSIONS = ("1.1", "2.1", "3.0")
META_KEYS = ("_format_version", "_transform", "_comment", "_workspace", "_info", "_ignore")
ITEM_META_KEYS = ("_comment", "_ignore")

#: Kong's root namespace for declarative ids (``declarative_config.lua``): an entity's id is
#: ``uuid5(uuid5(ROOT, entity_name), key)``, the same ids Kong generates for keyed entities.
ID_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")

_SINGULAR = {
    "certificates": "certificate",
    "ca_certificates": "ca_certificate",
    "snis": "sni",
    "services": "service",
    "routes": "route",
    "consumers": "consumer",
    "keyauth_credentials": "keyauth_credential",
    "upstreams": "upstream",
    "targets": "target",
    "plugins": "plugin",
}

Path = tuple[str | int, ...]


@dataclass
class _Item:
    entity: str
    raw: dict[str, Any]
    path: Path
    parent: _Item | None = None
    parent_field: str | None = None
    id: str | None = None
    resolved: dict[str, Any] = field(default_factory=dict)
    value: dict[str, Any] | None = None
    errors: ErrorTree = field(default_factory=dict)

    def entity_error(self, message: str) -> None:
        self.errors.setdefault("@entity", []).append(message)


class _Document:
    def __init__(self) -> None:
        self.items: dict[str, list[_Item]] = {name: [] for name in ENTITIES}
        self.tree: ErrorTree = {}
        self.by_id: dict[str, dict[str, _Item]] = {name: {} for name in ENTITIES}
        self.by_key: dict[str, dict[str, _Item]] = {name: {} for name in ENTITIES}

    # -- pass 1 --------------------------------------------------------------------------------
    def collect(self, entity: str, raw: Any, path: Path, parent: _Item | None) -> None:
        if not isinstance(raw, Mapping):
            _set_at(self.tree, path, "expected a record")
            return
        data = {k: v for k, v in raw.items() if k not in ITEM_META_KEYS}
        parent_field = None
        if parent is not None:
            parent_field = next(f for c, f in referencing(parent.entity) if c == entity)
        item = _Item(entity, data, path, parent, parent_field)
        self.items[entity].append(item)
        for child, _field in referencing(entity):
            if child not in data:
                continue
            nested = data.pop(child)
            if nested is None:
                continue
            if not isinstance(nested, list):
                _set_at(self.tree, (*path, child), "expected an array")
                continue
            for i, sub in enumerate(nested):
                self.collect(child, sub, (*path, child, i), item)

    # -- pass 3 --------------------------------------------------------------------------------
    def resolve(self, item: _Item) -> None:
        for fname, ref in references(item.entity).items():
            if item.parent is not None and fname == item.parent_field:
                given = item.raw.get(fname)
                if given is None:
                    item.resolved[fname] = {"id": item.parent.id}
                    continue
            value = item.raw.get(fname)
            if value is None:
                continue
            target = self.find(ref, value)
            if target is None:
                shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                item.entity_error(
                    f"invalid reference '{fname}: {shown}' (no such entry in '{ref}')"
                )
                item.resolved[fname] = _UNRESOLVED
            else:
                item.resolved[fname] = {"id": target.id}
        if item.entity == "services":
            self._check_ca_certificates(item)

    def _check_ca_certificates(self, item: _Item) -> None:
        cas = item.raw.get("ca_certificates")
        if not isinstance(cas, list):
            return
        for ca in cas:
            if isinstance(ca, str) and ca not in self.by_id["ca_certificates"]:
                item.entity_error(
                    f"invalid reference 'ca_certificates: {ca}' "
                    "(no such entry in 'ca_certificates')"
                )

    def find(self, entity: str, value: Any) -> _Item | None:
        if isinstance(value, str):
            return self.by_key[entity].get(value) or self.by_id[entity].get(value)
        if isinstance(value, Mapping):
            if isinstance(value.get("id"), str):
                return self.by_id[entity].get(value["id"])
            key = ENTITIES[entity].endpoint_key
            if key is not None and isinstance(value.get(key), str):
                return self.by_key[entity].get(value[key])
        return None

    def identify(self, item: _Item, used: set[str]) -> None:
        schema = ENTITIES[item.entity]
        if schema.on_insert is not None:
            # Auto values (a key-auth key) first: the id is derived from them.
            item.raw = schema.on_insert(dict(item.raw))
        given = item.raw.get("id")
        if given is not None:
            item.id = given if isinstance(given, str) else json.dumps(given)
            return
        generated, by_content = _generate_id(item)
        if by_content:
            # Identical unnamed entities (two equal routes of one service) stay distinct.
            n = 1
            while generated in used:
                n += 1
                generated, _ = _generate_id(item, suffix=f"#{n}")
        item.id = generated

    def index(self, item: _Item) -> None:
        assert item.id is not None
        self.by_id[item.entity].setdefault(item.id, item)
        key = ENTITIES[item.entity].endpoint_key
        if key is not None and isinstance(item.raw.get(key), str):
            self.by_key[item.entity].setdefault(item.raw[key], item)

    # -- pass 4 --------------------------------------------------------------------------------
    def validate(self, item: _Item, now: int | None) -> None:
        schema = ENTITIES[item.entity]
        data = dict(item.raw)
        if any(v is _UNRESOLVED for v in item.resolved.values()):
            # Still validate the rest; the reference error is already recorded.
            data.update({k: None for k, v in item.resolved.items() if v is _UNRESOLVED})
            data.update({k: v for k, v in item.resolved.items() if v is not _UNRESOLVED})
        else:
            data.update(item.resolved)
        data["id"] = item.id
        if now is not None and schema.timestamps:
            if data.get("created_at") is None:
                data["created_at"] = now
            if data.get("updated_at") is None:
                data["updated_at"] = now
        try:
            value = schema.validate_stored(data)
        except SchemaViolation as exc:
            fields = exc.fields or {}
            for k, v in fields.items():
                if k == "@entity":
                    item.errors.setdefault("@entity", []).extend(v)
                elif _is_unresolved_error(item, k, v):
                    continue
                else:
                    item.errors[k] = v
            return
        if not item.errors:
            item.value = value

    def check_uniqueness(self, entity: str) -> None:
        schema = ENTITIES[entity]
        checks: list[tuple[str, tuple[str, ...]]] = [
            (name, (name,)) for name in schema.unique_fields()
        ]
        if schema.cache_key:
            checks.append(("cache key", schema.cache_key))
        seen: dict[str, dict[Any, _Item]] = {label: {} for label, _ in checks}
        reported: set[int] = set()
        valid = [i for i in self.items[entity] if i.value is not None]
        for item in valid:
            assert item.value is not None
            for label, names in checks:
                values = tuple(_plain(item.value.get(n)) for n in names)
                if len(names) == 1 and values[0] is None:
                    continue
                if values in seen[label]:
                    if id(item) in reported:
                        continue  # one uniqueness error per entity is enough
                    shown = ", ".join(
                        f"{n} set to '{'null' if v is None else v}'"
                        for n, v in zip(names, values, strict=True)
                    )
                    item.entity_error(
                        f"uniqueness violation: '{entity}' entity with {shown} already declared"
                    )
                    reported.add(id(item))
                else:
                    seen[label][values] = item
        ids: dict[str, _Item] = {}
        for item in self.items[entity]:
            if item.id is None:
                continue
            if item.id in ids and id(item) not in reported:
                item.entity_error(
                    f"uniqueness violation: '{entity}' entity with primary key set to "
                    f"'{item.id}' already declared"
                )
            ids.setdefault(item.id, item)


_UNRESOLVED: Any = object()


def _is_unresolved_error(item: _Item, name: str, error: Any) -> bool:
    """A required foreign key we could not resolve already has its reference error."""
    return item.resolved.get(name) is _UNRESOLVED and error == "required field missing"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return value.get("id")
    if isinstance(value, list):
        return tuple(value)
    return value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _generate_id(item: _Item, suffix: str = "") -> tuple[str, bool]:
    """``(id, from_content)``: Kong's scheme for keyed entities, content otherwise.

    NOTE: Kong gives entities without an endpoint or cache key a random id, and builds plugin
    cache keys from whatever the file wrote (name or id). We derive every id from the
    document (content, resolved ids) so that a file always loads to the same configuration
    and config hash. Pinned by test_ids_are_deterministic_and_order_independent and
    test_generated_ids_follow_kongs_scheme.
    """
    schema = ENTITIES[item.entity]
    namespace = uuid.uuid5(ID_NAMESPACE, item.entity)

    def ref_id(name: str) -> str:
        ref = item.resolved.get(name)
        return str(ref["id"]) if isinstance(ref, dict) and ref.get("id") else ""

    key_name = schema.endpoint_key
    if key_name is not None and isinstance(item.raw.get(key_name), str):
        key = item.raw[key_name]
        if not schema.fields[key_name].unique:
            # Unique only below its parent (a target within its upstream).
            for fname, f in schema.foreign_keys().items():
                if f.on_delete == "cascade" and ref_id(fname):
                    key = f"{key}:{ref_id(fname)}"
        return str(uuid.uuid5(namespace, key)), False
    if schema.cache_key:
        parts = [item.entity]
        foreign = schema.foreign_keys()
        for name in schema.cache_key:
            if name in foreign:
                parts.append(ref_id(name))
            else:
                value = item.raw.get(name)
                parts.append("" if value is None else str(value))
        return str(uuid.uuid5(namespace, ":".join(parts))), False
    content = dict(item.raw)
    for name, ref in item.resolved.items():
        content[name] = ref if ref is not _UNRESOLVED else None
    return str(uuid.uuid5(namespace, "content:" + _canonical(content) + suffix)), True


# -- migrations ----------------------------------------------------------------------------------

_PLAIN_PATH = re.compile(r"^[A-Za-z0-9._~/%-]*$")


def _migrate_route_paths(item: _Item) -> None:
    """Kong 3.0: regex paths must start with ``~``; older files had bare regexes."""
    paths = item.raw.get("paths")
    if not isinstance(paths, list):
        return
    item.raw["paths"] = [
        "~" + p if isinstance(p, str) and not p.startswith("~") and not _PLAIN_PATH.match(p) else p
        for p in paths
    ]


# -- error tree ----------------------------------------------------------------------------------


def _set_at(tree: ErrorTree, path: Path, error: Any) -> None:
    """Put ``error`` at ``path`` (``("services", 0, "routes", 1)``) in the error tree."""
    node: Any = tree
    for depth in range(0, len(path) - 1, 2):
        name, index = path[depth], path[depth + 1]
        assert isinstance(name, str)
        assert isinstance(index, int)
        slot = node.setdefault(name, [])
        if not isinstance(slot, list):
            return
        while len(slot) <= index:
            slot.append(None)
        if depth + 2 == len(path):
            if isinstance(error, dict) and isinstance(slot[index], dict):
                _merge_errors(slot[index], error)
            elif slot[index] is None or not isinstance(error, dict):
                slot[index] = error
            return
        if slot[index] is None:
            slot[index] = {}
        node = slot[index]
        if not isinstance(node, dict):
            return
    if len(path) % 2 == 1:
        node[path[-1]] = error


def _merge_errors(into: dict[str, Any], errors: dict[str, Any]) -> None:
    for key, value in errors.items():
        if key == "@entity":
            into.setdefault("@entity", []).extend(value)
        else:
            into[key] = value


def _item_messages(errors: Any, prefix: str = "") -> Iterator[tuple[str | None, str]]:
    if isinstance(errors, str):
        yield (prefix or None), errors
    elif isinstance(errors, dict):
        for key in sorted(errors, key=lambda k: (k != "@entity", k)):
            if key == "@entity":
                for message in errors[key]:
                    yield (prefix or None), message
            else:
                yield from _item_messages(errors[key], f"{prefix}.{key}" if prefix else key)
    elif isinstance(errors, list):
        for i, sub in enumerate(errors):
            if sub is not None:
                yield from _item_messages(sub, f"{prefix}.{i + 1}" if prefix else str(i + 1))


def _flattened(item: _Item) -> dict[str, Any]:
    schema = ENTITIES[item.entity]
    key = schema.endpoint_key
    errors = []
    for fname, message in _item_messages(item.errors):
        if fname is None:
            errors.append({"type": "entity", "message": message})
        else:
            errors.append({"type": "field", "field": fname, "message": message})
    return {
        "entity_type": _SINGULAR.get(item.entity, item.entity),
        "entity_path": ".".join(str(p + 1) if isinstance(p, int) else p for p in item.path),
        "entity_id": item.id,
        "entity_name": item.raw.get(key) if key else None,
        "entity_tags": item.raw.get("tags"),
        "entity": item.raw,
        "errors": errors,
    }


# -- entry points --------------------------------------------------------------------------------


def parse_declarative(doc: Mapping[str, Any], *, now: int | None = None) -> RuntimeConfig:
    """Validate a declarative document (nested or flat) into the runtime configuration.

    ``now`` fills missing ``created_at`` / ``updated_at`` (left null otherwise, so the result
    depends only on the document). Raises one ``DeclarativeError`` listing every problem.
    """
    if not isinstance(doc, Mapping):
        raise DeclarativeError.from_tree({"@entity": ["expected a record"]})
    document = _Document()
    tree = document.tree
    version = doc.get("_format_version")
    if version is None:
        tree["_format_version"] = "required field missing"
    elif not isinstance(version, str):
        tree["_format_version"] = "expected a string"
    elif version not in SUPPORTED_VERSIONS:
        tree["_format_version"] = (
            f"unsupported declarative format version '{version}' "
            f"(expected one of: {', '.join(SUPPORTED_VERSIONS)})"
        )
    transform = doc.get("_transform", True)
    if not isinstance(transform, bool):
        tree["_transform"] = "expected a boolean"
    for key in doc:
        if key not in ENTITIES and key not in META_KEYS:
            tree[str(key)] = "unknown field"

    for entity in ENTITIES:
        entries = doc.get(entity)
        if entries is None:
            continue
        if isinstance(entries, dict) and not entries:
            entries = []
        if not isinstance(entries, list):
            tree[entity] = "expected an array"
            continue
        for i, raw in enumerate(entries):
            document.collect(entity, raw, (entity, i), None)

    if isinstance(version, str) and version in ("1.1", "2.1"):
        for item in document.items["routes"]:
            _migrate_route_paths(item)

    for entity in ENTITIES:
        used: set[str] = set()
        for item in document.items[entity]:
            document.resolve(item)
            document.identify(item, used)
            assert item.id is not None
            used.add(item.id)
            document.index(item)
        for item in document.items[entity]:
            document.validate(item, now)
        document.check_uniqueness(entity)

    flattened: list[dict[str, Any]] = []
    for entity in ENTITIES:
        for item in document.items[entity]:
            if item.errors:
                _set_at(tree, item.path, item.errors)
                flattened.append(_flattened(item))
    if tree:
        flattened.sort(key=lambda e: _path_key(e["entity_path"]))
        raise DeclarativeError.from_tree(tree, flattened)

    config: RuntimeConfig = {"_format_version": FORMAT_VERSION}
    for entity in ENTITIES:
        values = [i.value for i in document.items[entity] if i.value is not None]
        config[entity] = sorted(values, key=lambda v: str(v["id"]))
    return config


def _path_key(path: str) -> list[tuple[int, Any]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in path.split(".")]


def validate_config(config: Mapping[str, Any]) -> RuntimeConfig:
    """Validate a flat runtime configuration (what a data plane receives); same rules."""
    return parse_declarative(config)


def runtime_view(config: Mapping[str, Any]) -> RuntimeConfig:
    """The configuration a runtime runs: disabled services, their routes and the plugins
    scoped to either are removed (Kong does not sync them). Keep ``config`` itself for
    export and import."""
    services = list(config.get("services") or [])
    disabled = {s["id"] for s in services if s.get("enabled") is False}
    if not disabled:
        return dict(config)
    routes = list(config.get("routes") or [])
    dropped_routes = {r["id"] for r in routes if _ref(r, "service") in disabled}
    out = dict(config)
    out["services"] = [s for s in services if s["id"] not in disabled]
    out["routes"] = [r for r in routes if r["id"] not in dropped_routes]
    out["plugins"] = [
        p
        for p in config.get("plugins") or []
        if _ref(p, "service") not in disabled and _ref(p, "route") not in dropped_routes
    ]
    return out


def _ref(entity: Mapping[str, Any], name: str) -> str | None:
    value = entity.get(name)
    if isinstance(value, Mapping):
        ref = value.get("id")
        return ref if isinstance(ref, str) else None
    return None
