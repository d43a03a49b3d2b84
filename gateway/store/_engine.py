"""The SQL both backends run: entity rules, indexes, change log. Synchronous; the backends
call it from worker threads inside one transaction per operation.

Theory of operation: every entity is one row of ``entities`` (entity type, id, the JSON text
of the dict). Three side tables make the rules cheap and enforce them in the database too:
``entity_keys`` holds one row per unique field value and one per ``cache_key`` (primary key
``(entity, field, value)``: two entities can never share one), ``entity_refs`` one row per
non-null foreign key (a composite foreign key to ``entities``: no dangling references even if
the checks here were raced) and ``entity_tags`` one row per tag. A write first locks the
one-row ``config_version`` table (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` already holds the database write lock), so writers are serialized across
processes and the checks below see every committed write. If the write changed anything it
logs its changes under version ``locked + 1``, stores that version, and (PostgreSQL) queues a
``pg_notify`` that is delivered at commit. A failed write rolls back: no change, no version.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs

from gateway.schema import EntityError, EntitySchema, ErrorCode
from gateway.store._api import MAX_PAGE_SIZE, Change, Op, Row, TagsMode

T = TypeVar("T")

# The tables of migration 000_base, in the order they are created.
TABLES = (
    "schema_migrations",
    "config_version",
    "config_changes",
    "entities",
    "entity_keys",
    "entity_refs",
    "entity_tags",
    "clustering_data_planes",
)


class Tx(Protocol):
    """One open transaction. SQL uses ``?`` placeholders; the backend adapts them."""

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def run(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    def many(self, sql: str, params: Iterable[Sequence[Any]]) -> None: ...
    def lock_version(self) -> int: ...
    def notify(self, version: int) -> None: ...


# -- schema model -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class EntityModel:
    name: str
    uniques: tuple[str, ...]
    cache_key: tuple[str, ...]
    foreign: Mapping[str, tuple[str, str]]  # field -> (referenced entity, on_delete)
    has_tags: bool
    endpoint_key: str | None


@attrs.frozen(kw_only=True)
class Model:
    entities: Mapping[str, EntityModel]
    # referenced entity -> [(child entity, field, on_delete)]
    referrers: Mapping[str, tuple[tuple[str, str, str], ...]]

    def entity(self, name: str) -> EntityModel:
        try:
            return self.entities[name]
        except KeyError:
            raise ValueError(f"unknown entity {name!r}") from None


def build_model(schemas: Mapping[str, EntitySchema]) -> Model:
    entities: dict[str, EntityModel] = {}
    referrers: dict[str, list[tuple[str, str, str]]] = {name: [] for name in schemas}
    for name, schema in schemas.items():
        foreign: dict[str, tuple[str, str]] = {}
        for field, fk in schema.foreign_keys().items():
            if fk.reference not in schemas:
                raise ValueError(f"{name}.{field} references unknown entity {fk.reference!r}")
            if fk.on_delete not in ("restrict", "cascade", "null"):
                raise ValueError(f"{name}.{field}: unknown on_delete {fk.on_delete!r}")
            foreign[field] = (fk.reference, fk.on_delete)
            referrers[fk.reference].append((name, field, fk.on_delete))
        entities[name] = EntityModel(
            name=name,
            uniques=tuple(schema.unique_fields()),
            cache_key=schema.cache_key,
            foreign=foreign,
            has_tags="tags" in schema.fields,
            endpoint_key=schema.endpoint_key,
        )
    return Model(entities=entities, referrers={k: tuple(v) for k, v in referrers.items()})


# -- encoding ---------------------------------------------------------------------------------


def dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def canonical(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def load(text: str) -> Row:
    value: Row = json.loads(text)
    return value


def lua_pretty(value: Any) -> str:
    """A value as Kong's error messages print it (penlight ``pretty.write`` without spaces)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}={lua_pretty(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list | tuple):
        return "{" + ",".join(lua_pretty(v) for v in value) + "}"
    return lua_pretty(str(value))


def encode_offset(last_id: str) -> str:
    return base64.urlsafe_b64encode(dump([last_id]).encode()).decode().rstrip("=")


def decode_offset(offset: str) -> str:
    try:
        padded = offset + "=" * (-len(offset) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise _invalid_offset(offset, "bad base64 encoding") from None
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _invalid_offset(offset, "bad json encoding") from None
    if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], str)):
        raise _invalid_offset(offset, "bad json encoding")
    last: str = value[0]
    return last


def _invalid_offset(offset: str, why: str) -> EntityError:
    return EntityError(ErrorCode.INVALID_OFFSET, f"'{offset}' is not a valid offset: {why}")


def check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PAGE_SIZE:
        raise EntityError(
            ErrorCode.INVALID_SIZE, f"size must be an integer between 1 and {MAX_PAGE_SIZE}"
        )


# -- Kong's errors ----------------------------------------------------------------------------


def not_found(id: str) -> EntityError:
    pk = {"id": id}
    return EntityError(
        ErrorCode.NOT_FOUND,
        f"could not find the entity with primary key '{lua_pretty(pk)}'",
        fields=pk,
        status=404,
    )


def primary_key_violation(id: str) -> EntityError:
    pk = {"id": id}
    return EntityError(
        ErrorCode.PRIMARY_KEY_VIOLATION,
        f"primary key violation on key '{lua_pretty(pk)}'",
        fields=pk,
        status=409,
    )


def unique_violation(key: dict[str, Any]) -> EntityError:
    return EntityError(
        ErrorCode.UNIQUE_VIOLATION,
        f"UNIQUE violation detected on '{lua_pretty(key)}'",
        fields=key,
        status=409,
    )


def foreign_key_violation(field: str, ref: dict[str, Any], parent: str) -> EntityError:
    return EntityError(
        ErrorCode.FOREIGN_KEY_VIOLATION,
        f"the foreign key '{lua_pretty(ref)}' does not reference an existing '{parent}' entity.",
        fields={field: ref},
    )


def restricted(parent: str, child: str) -> EntityError:
    return EntityError(
        ErrorCode.FOREIGN_KEY_VIOLATION,
        f"an existing '{child}' entity references this '{parent}' entity",
        fields={"@referenced_by": child},
    )


# -- row helpers ------------------------------------------------------------------------------


def row_id(row: Mapping[str, Any]) -> str:
    value = row.get("id")
    if not isinstance(value, str) or not value:
        raise EntityError(
            ErrorCode.INVALID_PRIMARY_KEY, "missing primary key 'id'", fields={"id": "missing"}
        )
    return value


def ref_id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        ref: str = value["id"]
        return ref
    raise EntityError(ErrorCode.INVALID_FOREIGN_KEY, f"invalid foreign key: {lua_pretty(value)}")


def _keys(m: EntityModel, row: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(field, canonical value, Kong error key) for each unique value and the cache key."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for field in m.uniques:
        value = row.get(field)
        if value is not None:
            out.append((field, canonical(value), {field: value}))
    if m.cache_key:
        parts = {f: row.get(f) for f in m.cache_key}
        out.append(("@cache_key", canonical([parts[f] for f in m.cache_key]), parts))
    return out


def _refs(m: EntityModel, row: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(field, referenced entity, referenced id) for each non-null foreign key."""
    out: list[tuple[str, str, str]] = []
    for field, (reference, _) in m.foreign.items():
        target = ref_id(row.get(field))
        if target is not None:
            out.append((field, reference, target))
    return out


def _tags(m: EntityModel, row: Mapping[str, Any]) -> list[str]:
    if not m.has_tags:
        return []
    tags = row.get("tags") or []
    return sorted({t for t in tags if isinstance(t, str)})


# -- reads ------------------------------------------------------------------------------------


def get(tx: Tx, model: Model, entity: str, id: str) -> Row | None:
    model.entity(entity)
    found = tx.rows("SELECT data FROM entities WHERE entity = ? AND id = ?", (entity, id))
    return load(found[0][0]) if found else None


def get_by(tx: Tx, model: Model, entity: str, field: str, value: Any) -> Row | None:
    m = model.entity(entity)
    if field == "id":
        return get(tx, model, entity, str(value))
    if field not in m.uniques:
        if field != m.endpoint_key:
            raise ValueError(f"{entity}.{field} is neither unique nor the endpoint key")
        # A non-unique endpoint key (a target's ``target``): the first match by id.
        for (data,) in tx.rows("SELECT data FROM entities WHERE entity = ? ORDER BY id", (entity,)):
            row = load(data)
            if row.get(field) == value:
                return row
        return None
    found = tx.rows(
        "SELECT e.data FROM entity_keys k JOIN entities e ON e.entity = k.entity AND e.id = k.id"
        " WHERE k.entity = ? AND k.field = ? AND k.value = ?",
        (entity, field, canonical(value)),
    )
    return load(found[0][0]) if found else None


def page(
    tx: Tx,
    model: Model,
    entity: str,
    *,
    size: int,
    offset: str | None,
    tags: Sequence[str] | None,
    tags_mode: TagsMode,
    filters: Mapping[str, str] | None,
) -> tuple[list[Row], str | None]:
    m = model.entity(entity)
    check_size(size)
    sql = ["SELECT id, data FROM entities WHERE entity = ?"]
    params: list[Any] = [entity]
    if offset is not None:
        sql.append("AND id > ?")
        params.append(decode_offset(offset))
    if tags:
        if not m.has_tags:
            raise ValueError(f"{entity} has no tags")
        wanted = sorted(set(tags))
        marks = ", ".join("?" for _ in wanted)
        sub = f"SELECT id FROM entity_tags WHERE entity = ? AND tag IN ({marks})"
        if tags_mode == "and":
            sub += " GROUP BY id HAVING COUNT(*) = ?"
            sql.append(f"AND id IN ({sub})")
            params += [entity, *wanted, len(wanted)]
        elif tags_mode == "or":
            sql.append(f"AND id IN ({sub})")
            params += [entity, *wanted]
        else:
            raise ValueError(f"tags_mode must be 'and' or 'or', not {tags_mode!r}")
    for field, target in (filters or {}).items():
        if field not in m.foreign:
            raise ValueError(f"{entity}.{field} is not a foreign key")
        sql.append(
            "AND id IN (SELECT id FROM entity_refs WHERE entity = ? AND field = ? AND ref_id = ?)"
        )
        params += [entity, field, target]
    sql.append("ORDER BY id LIMIT ?")
    params.append(size + 1)
    found = tx.rows(" ".join(sql), params)
    more = len(found) > size
    found = found[:size]
    rows = [load(data) for _, data in found]
    return rows, (encode_offset(found[-1][0]) if more else None)


def count(tx: Tx, model: Model, entity: str) -> int:
    model.entity(entity)
    found = tx.rows("SELECT COUNT(*) FROM entities WHERE entity = ?", (entity,))
    return int(found[0][0])


def current_version(tx: Tx) -> int:
    return int(tx.rows("SELECT version FROM config_version WHERE id = 1")[0][0])


def changes_since(tx: Tx, version: int) -> list[Change]:
    found = tx.rows(
        "SELECT version, entity, id, op FROM config_changes WHERE version > ?"
        " ORDER BY version, seq",
        (version,),
    )
    return [Change(version=int(v), entity=e, id=i, op=op) for v, e, i, op in found]


def export(tx: Tx, model: Model) -> tuple[int, dict[str, list[Row]]]:
    """Call inside one snapshot (a read transaction) so the version matches the rows."""
    version = current_version(tx)
    out: dict[str, list[Row]] = {name: [] for name in model.entities}
    for entity, data in tx.rows("SELECT entity, data FROM entities ORDER BY entity, id"):
        if entity in out:
            out[entity].append(load(data))
    return version, out


# -- writes -----------------------------------------------------------------------------------


class Write:
    """One write transaction: the locked base version and the changes made so far."""

    def __init__(self, tx: Tx, model: Model) -> None:
        self.tx = tx
        self.model = model
        self.base = tx.lock_version()
        self.version = self.base + 1
        self.changes: list[tuple[str, str, Op]] = []

    def log(self, entity: str, id: str, op: Op) -> None:
        self.changes.append((entity, id, op))

    def finish(self) -> int | None:
        """Append the change log and bump the version; None when nothing changed."""
        if not self.changes:
            return None
        self.tx.many(
            "INSERT INTO config_changes (version, seq, entity, id, op) VALUES (?, ?, ?, ?, ?)",
            [(self.version, i, e, id, op) for i, (e, id, op) in enumerate(self.changes)],
        )
        self.tx.run("UPDATE config_version SET version = ? WHERE id = 1", (self.version,))
        self.tx.notify(self.version)
        return self.version


def run_write(tx: Tx, model: Model, fn: Callable[[Write], T]) -> tuple[T, int | None]:
    w = Write(tx, model)
    result = fn(w)
    return result, w.finish()


def _exists(tx: Tx, entity: str, id: str) -> bool:
    return bool(tx.rows("SELECT 1 FROM entities WHERE entity = ? AND id = ?", (entity, id)))


def _check(tx: Tx, m: EntityModel, id: str, row: Mapping[str, Any]) -> None:
    for field, reference, target in _refs(m, row):
        if not _exists(tx, reference, target):
            raise foreign_key_violation(field, {"id": target}, reference)
    for field, value, key in _keys(m, row):
        owner = tx.rows(
            "SELECT id FROM entity_keys WHERE entity = ? AND field = ? AND value = ?",
            (m.name, field, value),
        )
        if owner and owner[0][0] != id:
            raise unique_violation(key)


def _write_index(tx: Tx, m: EntityModel, id: str, row: Mapping[str, Any]) -> None:
    keys = _keys(m, row)
    if keys:
        tx.many(
            "INSERT INTO entity_keys (entity, field, value, id) VALUES (?, ?, ?, ?)",
            [(m.name, field, value, id) for field, value, _ in keys],
        )
    refs = _refs(m, row)
    if refs:
        tx.many(
            "INSERT INTO entity_refs (entity, id, field, ref_entity, ref_id)"
            " VALUES (?, ?, ?, ?, ?)",
            [(m.name, id, field, reference, target) for field, reference, target in refs],
        )
    tags = _tags(m, row)
    if tags:
        tx.many(
            "INSERT INTO entity_tags (entity, id, tag) VALUES (?, ?, ?)",
            [(m.name, id, tag) for tag in tags],
        )


def _drop_index(tx: Tx, entity: str, id: str) -> None:
    for table in ("entity_keys", "entity_refs", "entity_tags"):
        tx.run(f"DELETE FROM {table} WHERE entity = ? AND id = ?", (entity, id))


def insert(w: Write, entity: str, row: Row) -> Row:
    m = w.model.entity(entity)
    id = row_id(row)
    if _exists(w.tx, entity, id):
        raise primary_key_violation(id)
    _check(w.tx, m, id, row)
    w.tx.run("INSERT INTO entities (entity, id, data) VALUES (?, ?, ?)", (entity, id, dump(row)))
    _write_index(w.tx, m, id, row)
    w.log(entity, id, "insert")
    return row


def update(w: Write, entity: str, row: Row) -> Row:
    m = w.model.entity(entity)
    id = row_id(row)
    if not _exists(w.tx, entity, id):
        raise not_found(id)
    _check(w.tx, m, id, row)
    w.tx.run("UPDATE entities SET data = ? WHERE entity = ? AND id = ?", (dump(row), entity, id))
    _drop_index(w.tx, entity, id)
    _write_index(w.tx, m, id, row)
    w.log(entity, id, "update")
    return row


def upsert(w: Write, entity: str, row: Row) -> Row:
    w.model.entity(entity)
    if _exists(w.tx, entity, row_id(row)):
        return update(w, entity, row)
    return insert(w, entity, row)


def delete(w: Write, entity: str, id: str) -> bool:
    """Delete with Kong's rules: every ``restrict`` reference to anything that would go
    refuses the whole delete; ``cascade`` dependents go too (recursively, same
    transaction); ``null`` references are set to null (logged as updates)."""
    w.model.entity(entity)
    if not _exists(w.tx, entity, id):
        return False
    doomed: dict[tuple[str, str], None] = {(entity, id): None}
    queue = [(entity, id)]
    restricts: list[tuple[str, str, str]] = []  # (child entity, child id, parent entity)
    nulls: list[tuple[str, str, str]] = []  # (child entity, child id, field)
    while queue:
        parent, parent_id = queue.pop(0)
        referrers = w.tx.rows(
            "SELECT entity, id, field FROM entity_refs WHERE ref_entity = ? AND ref_id = ?"
            " ORDER BY entity, id, field",
            (parent, parent_id),
        )
        for child, child_id, field in referrers:
            on_delete = w.model.entity(child).foreign[field][1]
            if on_delete == "cascade":
                if (child, child_id) not in doomed:
                    doomed[(child, child_id)] = None
                    queue.append((child, child_id))
            elif on_delete == "null":
                nulls.append((child, child_id, field))
            else:
                restricts.append((child, child_id, parent))
    for child, child_id, parent in restricts:
        if (child, child_id) not in doomed:
            raise restricted(parent, child)
    for child, child_id, field in nulls:
        if (child, child_id) in doomed:
            continue
        row = get(w.tx, w.model, child, child_id)
        assert row is not None
        row[field] = None
        w.tx.run(
            "UPDATE entities SET data = ? WHERE entity = ? AND id = ?",
            (dump(row), child, child_id),
        )
        w.tx.run(
            "DELETE FROM entity_refs WHERE entity = ? AND id = ? AND field = ?",
            (child, child_id, field),
        )
        m = w.model.entity(child)
        if field in m.cache_key:
            # The cache key changed with the reference: re-index it (may now collide).
            w.tx.run(
                "DELETE FROM entity_keys WHERE entity = ? AND id = ? AND field = ?",
                (child, child_id, "@cache_key"),
            )
            for key_field, value, key in _keys(m, row):
                if key_field == "@cache_key":
                    if w.tx.rows(
                        "SELECT 1 FROM entity_keys WHERE entity = ? AND field = ? AND value = ?",
                        (child, key_field, value),
                    ):
                        raise unique_violation(key)
                    w.tx.run(
                        "INSERT INTO entity_keys (entity, field, value, id) VALUES (?, ?, ?, ?)",
                        (child, key_field, value, child_id),
                    )
        if (child, child_id, "update") not in w.changes:
            w.log(child, child_id, "update")
    # Dependents first in the log (as Kong's cascades run), the requested entity last.
    order = list(doomed)[::-1]
    for doomed_entity, doomed_id in order:
        _drop_index(w.tx, doomed_entity, doomed_id)
    for doomed_entity, doomed_id in order:
        w.tx.run("DELETE FROM entities WHERE entity = ? AND id = ?", (doomed_entity, doomed_id))
        w.log(doomed_entity, doomed_id, "delete")
    return True


def replace_all(w: Write, config: Mapping[str, Sequence[Row]]) -> None:
    """Make ``config`` the whole content; logs the difference with the previous content."""
    model = w.model
    for name in config:
        if not name.startswith("_"):
            model.entity(name)
    old = {(e, i): d for e, i, d in w.tx.rows("SELECT entity, id, data FROM entities")}
    new: dict[tuple[str, str], str] = {}
    seen_keys: dict[tuple[str, str, str], str] = {}
    key_rows: list[tuple[str, str, str, str]] = []
    tag_rows: list[tuple[str, str, str]] = []
    ref_rows: list[tuple[str, str, str, str, str]] = []
    for name, m in model.entities.items():
        for row in config.get(name, ()):
            id = row_id(row)
            if (name, id) in new:
                raise primary_key_violation(id)
            new[(name, id)] = dump(row)
            for field, value, key in _keys(m, row):
                if seen_keys.setdefault((name, field, value), id) != id:
                    raise unique_violation(key)
                key_rows.append((name, field, value, id))
            tag_rows += [(name, id, tag) for tag in _tags(m, row)]
            ref_rows += [(name, id, f, r, t) for f, r, t in _refs(m, row)]
    for _, _, field, reference, target in ref_rows:
        if (reference, target) not in new:
            raise foreign_key_violation(field, {"id": target}, reference)
    for table in ("entity_refs", "entity_keys", "entity_tags", "entities"):
        w.tx.run(f"DELETE FROM {table}")
    if new:
        w.tx.many(
            "INSERT INTO entities (entity, id, data) VALUES (?, ?, ?)",
            [(e, i, d) for (e, i), d in new.items()],
        )
    if key_rows:
        w.tx.many(
            "INSERT INTO entity_keys (entity, field, value, id) VALUES (?, ?, ?, ?)", key_rows
        )
    if tag_rows:
        w.tx.many("INSERT INTO entity_tags (entity, id, tag) VALUES (?, ?, ?)", tag_rows)
    if ref_rows:
        w.tx.many(
            "INSERT INTO entity_refs (entity, id, field, ref_entity, ref_id)"
            " VALUES (?, ?, ?, ?, ?)",
            ref_rows,
        )
    for e, i in old:
        if (e, i) not in new:
            w.log(e, i, "delete")
    for (e, i), d in new.items():
        if (e, i) not in old:
            w.log(e, i, "insert")
        elif old[(e, i)] != d:
            w.log(e, i, "update")


# -- data planes ------------------------------------------------------------------------------


def upsert_data_plane(tx: Tx, row: Row) -> None:
    id = row_id(row)
    last_seen = row.get("last_seen")
    if isinstance(last_seen, bool) or not isinstance(last_seen, int | float):
        raise ValueError("a data plane row needs a numeric 'last_seen'")
    tx.run(
        "INSERT INTO clustering_data_planes (id, last_seen, data) VALUES (?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, data = excluded.data",
        (id, float(last_seen), dump(row)),
    )


def get_data_plane(tx: Tx, id: str) -> Row | None:
    found = tx.rows("SELECT data FROM clustering_data_planes WHERE id = ?", (id,))
    return load(found[0][0]) if found else None


def page_data_planes(tx: Tx, size: int, offset: str | None) -> tuple[list[Row], str | None]:
    check_size(size)
    if offset is None:
        found = tx.rows(
            "SELECT id, data FROM clustering_data_planes ORDER BY id LIMIT ?", (size + 1,)
        )
    else:
        found = tx.rows(
            "SELECT id, data FROM clustering_data_planes WHERE id > ? ORDER BY id LIMIT ?",
            (decode_offset(offset), size + 1),
        )
    more = len(found) > size
    found = found[:size]
    return [load(d) for _, d in found], (encode_offset(found[-1][0]) if more else None)


def purge_data_planes(tx: Tx, older_than: float) -> int:
    return tx.run("DELETE FROM clustering_data_planes WHERE last_seen < ?", (float(older_than),))
