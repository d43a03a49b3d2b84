"""The Admin API as an I/O-free application: ``AdminApp.handle(request) -> response``.

Theory of operation: every entity schema with ``generate_admin_api`` gets Kong's endpoints
(``/services``, ``/services/{id or name}``), and every foreign key adds the nested forms
(``/services/{s}/routes``, ``/routes/{r}/service``). Handlers validate with the entity schema,
then call the store; the store enforces uniqueness, foreign keys and cascades in one
transaction and bumps the config version, which is what propagates a change to the proxy
(traditional role) or to the data planes (control plane). Errors are Kong's bodies
(``{"message", "name", "code", "fields"}``) with Kong's status codes.

``/tags`` and ``/upstreams/{u}/targets/all`` are built here too: they only need the store.
Path segments are matched percent-encoded and decoded one by one (``PathMatch``), so a name
may contain ``/``.

The HTTP server (``gateway.admin._server``) only parses HTTP and calls ``handle``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote, unquote

import attrs

from gateway.admin._body import BodyError, coerce_form_types, decode_body
from gateway.plugins import available_plugins
from gateway.schema import EntityError, EntitySchema, ErrorCode, SchemaViolation
from gateway.store import Store, TagsMode

JSON = dict[str, Any]

# Kong's names for the nested forms that differ from the collection's admin path.
_NESTED_NAMES = {"keyauth_credentials": "key-auth"}
_MAX_PAGE = 1000


@attrs.frozen(kw_only=True)
class AdminRequest:
    method: str
    path: str
    query: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] = attrs.field(factory=dict)  # lower-case names
    body: bytes = b""
    #: The path as sent (still percent-encoded), so that ``/services/a%2Fb`` names the
    #: service ``a/b``; None when the caller only has the decoded ``path``.
    raw_path: str | None = None

    def query_value(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None


@attrs.frozen(kw_only=True)
class AdminResponse:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(
        cls, status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()
    ) -> AdminResponse:
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(
            status=status,
            body=data,
            headers=(("content-type", "application/json; charset=utf-8"), *headers),
        )

    @classmethod
    def message(cls, status: int, message: str) -> AdminResponse:
        return cls.json(status, {"message": message})


class PathMatch:
    """The named segments of a matched path, percent-decoded one by one."""

    __slots__ = ("_groups",)

    def __init__(self, groups: Mapping[str, str]) -> None:
        self._groups = dict(groups)

    @classmethod
    def from_match(cls, m: re.Match[str], *, encoded: bool) -> PathMatch:
        groups = m.groupdict()
        if encoded:
            groups = {k: unquote(v) for k, v in groups.items()}
        return cls(groups)

    def group(self, name: str) -> str:
        return self._groups[name]


class Extension(Protocol):
    """Optional endpoints contributed by the node (status, clustering, health)."""

    async def __call__(self, request: AdminRequest, match: PathMatch) -> AdminResponse: ...


Handler = Callable[[AdminRequest, PathMatch], Awaitable[AdminResponse]]


class _Route:
    __slots__ = ("handlers", "pattern")

    def __init__(self, pattern: str, handlers: dict[str, Handler]) -> None:
        self.pattern = re.compile("^" + pattern + "/?$")
        self.handlers = handlers


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


class AdminApp:
    """Kong's Admin API over a store and the entity schemas."""

    def __init__(
        self,
        *,
        store: Store | None,
        schemas: Mapping[str, EntitySchema],
        clock: Callable[[], float] = time.time,
        read_only_reason: str | None = None,
    ) -> None:
        self.store = store
        self.schemas = schemas
        self.clock = clock
        self.read_only_reason = read_only_reason
        self._routes: list[_Route] = []
        self._by_path = {s.admin_path: s for s in schemas.values() if s.generate_admin_api}
        self._build_entity_routes()

    # -- routing --------------------------------------------------------------------------
    def add_route(self, pattern: str, handlers: dict[str, Handler]) -> None:
        """Register extra endpoints; they take precedence over the entity endpoints."""
        self._routes.insert(0, _Route(pattern, handlers))

    def _build_entity_routes(self) -> None:
        seg = r"(?P<{}>[^/]+)"
        for schema in self._by_path.values():
            path = re.escape(schema.admin_path)
            if schema.owner is None:
                self._routes.append(
                    _Route(path, {"GET": self._list(schema), "POST": self._create(schema)})
                )
            else:
                self._routes.append(_Route(path, {"GET": self._list(schema)}))
            self._routes.append(
                _Route(
                    path + "/" + seg.format("key"),
                    {
                        "GET": self._get(schema),
                        "PATCH": self._patch(schema),
                        "PUT": self._put(schema),
                        "DELETE": self._delete(schema),
                    },
                )
            )
            for fname, field in schema.foreign_keys().items():
                parent = self.schemas.get(field.reference)
                if parent is None or not parent.generate_admin_api:
                    continue
                ppath = re.escape(parent.admin_path) + "/" + seg.format("parent")
                child = re.escape(_NESTED_NAMES.get(schema.name, schema.admin_path))
                self._routes.append(
                    _Route(
                        ppath + "/" + child,
                        {
                            "GET": self._list(schema, fname, parent),
                            "POST": self._create(schema, fname, parent),
                        },
                    )
                )
                self._routes.append(
                    _Route(
                        ppath + "/" + child + "/" + seg.format("key"),
                        {
                            "GET": self._get(schema, fname, parent),
                            "PATCH": self._patch(schema, fname, parent),
                            "PUT": self._put(schema, fname, parent),
                            "DELETE": self._delete(schema, fname, parent),
                        },
                    )
                )
                # /routes/{r}/service: the referenced parent itself.
                self._routes.append(
                    _Route(
                        path + "/" + seg.format("key") + "/" + re.escape(fname),
                        {
                            "GET": self._get_parent(schema, fname, parent),
                            "PATCH": self._patch_parent(schema, fname, parent),
                        },
                    )
                )

        upstreams, targets = self._by_path.get("upstreams"), self.schemas.get("targets")
        if upstreams is not None and targets is not None:
            # Kong's /upstreams/{u}/targets/all lists every target, also those of weight 0
            # (here: the same list as /targets, which hides none). Checked before the
            # /targets/{key} form, so "all" is never taken for a target's name.
            self.add_route(
                re.escape(upstreams.admin_path) + "/" + seg.format("parent") + "/targets/all",
                {"GET": self._list(targets, "upstream", upstreams)},
            )
        self.add_route("tags", {"GET": self._tags})
        self.add_route("tags/" + seg.format("tag"), {"GET": self._tags})

    async def handle(self, request: AdminRequest) -> AdminResponse:
        try:
            return await self._dispatch(request)
        except EntityError as exc:
            return AdminResponse.json(_status_for(exc), exc.body())
        except BodyError as exc:
            return AdminResponse.message(exc.status, exc.message)

    async def _dispatch(self, request: AdminRequest) -> AdminResponse:
        encoded = request.raw_path is not None
        raw = request.raw_path if request.raw_path is not None else request.path
        path = raw.rstrip("/") or "/"
        for route in self._routes:
            found = route.pattern.match(path.lstrip("/"))
            if found is None:
                continue
            m = PathMatch.from_match(found, encoded=encoded)
            method = "GET" if request.method == "HEAD" else request.method
            if method == "OPTIONS":
                allow = ", ".join(sorted({*route.handlers, "OPTIONS"}))
                return AdminResponse(status=204, headers=(("allow", allow),))
            handler = route.handlers.get(method)
            if handler is None:
                return AdminResponse.message(405, "Method not allowed")
            return await handler(request, m)
        return AdminResponse.message(404, "Not found")

    # -- helpers --------------------------------------------------------------------------
    def _now(self) -> int:
        return int(self.clock())

    def _require_store(self, schema: EntitySchema, verb: str) -> Store:
        if self.store is None or self.read_only_reason is not None:
            reason = self.read_only_reason or "not using a database"
            raise EntityError(
                ErrorCode.OPERATION_UNSUPPORTED,
                f"cannot {verb} '{schema.name}' entities when {reason}",
                status=405,
            )
        return self.store

    def _reader(self) -> Store:
        if self.store is None:
            raise EntityError(ErrorCode.DATABASE_ERROR, "no configuration store", status=500)
        return self.store

    async def find(self, schema: EntitySchema, key: str) -> JSON | None:
        store = self._reader()
        if _is_uuid(key):
            row = await store.get(schema.name, key.lower())
            if row is not None:
                return row
        if schema.endpoint_key:
            row = await store.get_by(schema.name, schema.endpoint_key, key)
            if row is not None:
                return row
        if schema.name == "consumers":
            return await store.get_by(schema.name, "custom_id", key)
        return None

    async def _find_parent(
        self, parent: EntitySchema, m: PathMatch
    ) -> tuple[JSON | None, AdminResponse | None]:
        row = await self.find(parent, m.group("parent"))
        if row is None:
            return None, AdminResponse.message(404, "Not found")
        return row, None

    async def _body(self, schema: EntitySchema, request: AdminRequest) -> JSON:
        data, is_form = decode_body(request.headers.get("content-type"), request.body)
        if is_form:
            data = coerce_form_types(schema.record, data)
            config = data.get("config")
            if schema.name == "plugins" and isinstance(config, dict):
                # The entity's ``config`` is a placeholder record: the plugin's own schema
                # says that ``config.minute=5`` is a number and ``config.origins=*`` a list.
                cls = available_plugins().get(str(data.get("name")))
                if cls is not None:
                    data["config"] = coerce_form_types(cls.config_schema, config)
        return await self._resolve_foreign(schema, data)

    async def _resolve_foreign(self, schema: EntitySchema, data: JSON) -> JSON:
        """``{"service": {"name": "x"}}`` -> ``{"service": {"id": "<id of x>"}}``.

        NOTE: Kong's Admin API takes references by id; names are resolved here as in
        declarative files (pinned by test_entities.py::test_routes_nested_under_services).
        """
        errors: dict[str, Any] = {}
        for fname, field in schema.foreign_keys().items():
            ref = data.get(fname)
            target = self.schemas.get(field.reference)
            if isinstance(ref, str):
                # A bare value (form ``service=my-service``): an id or the endpoint key.
                if _is_uuid(ref):
                    data = {**data, fname: {"id": ref.lower()}}
                    continue
                ref = {target.endpoint_key if target and target.endpoint_key else "name": ref}
            if not isinstance(ref, dict) or "id" in ref or len(ref) != 1:
                continue
            key_field = next(iter(ref))
            if target is None or target.endpoint_key is None or key_field != target.endpoint_key:
                continue
            found = await self._reader().get_by(target.name, key_field, ref[key_field])
            if found is None:
                errors[fname] = (
                    f"the foreign key '{_lua_repr(ref)}' does not reference an existing "
                    f"'{field.reference}' entity."
                )
            else:
                data = {**data, fname: {"id": found["id"]}}
        if errors:
            raise SchemaViolation(errors)
        return data

    def _page_args(
        self, request: AdminRequest, schema: EntitySchema | None = None
    ) -> tuple[int, str | None, list[str] | None, TagsMode]:
        raw_size = request.query_value("size")
        size = 100
        if raw_size is not None:
            try:
                size = int(raw_size)
            except ValueError:
                raise EntityError(ErrorCode.INVALID_SIZE, "size must be a number") from None
            if not 1 <= size <= _MAX_PAGE:
                raise EntityError(
                    ErrorCode.INVALID_SIZE, f"size must be an integer between 1 and {_MAX_PAGE}"
                )
        offset = request.query_value("offset") or None
        raw_tags = request.query_value("tags")
        tags: list[str] | None = None
        mode: TagsMode = "and"
        if raw_tags and schema is not None and "tags" not in schema.fields:
            raise EntityError(
                ErrorCode.INVALID_OPTIONS,
                f"invalid option (tags: cannot be used with '{schema.name}')",
            )
        if raw_tags:
            if "," in raw_tags and "/" in raw_tags:
                raise EntityError(
                    ErrorCode.INVALID_OPTIONS,
                    "invalid option (tags: cannot mix 'and' with 'or')",
                )
            if "/" in raw_tags:
                mode = "or"
                tags = raw_tags.split("/")
            else:
                tags = raw_tags.split(",")
        return size, offset, tags, mode

    # -- generic handlers -----------------------------------------------------------------
    def _list(
        self, schema: EntitySchema, fname: str | None = None, parent: EntitySchema | None = None
    ) -> Handler:
        async def handler(request: AdminRequest, m: PathMatch) -> AdminResponse:
            filters: dict[str, Any] = {}
            if fname is not None and parent is not None:
                prow, err = await self._find_parent(parent, m)
                if err is not None or prow is None:
                    return err or AdminResponse.message(404, "Not found")
                filters[fname] = prow["id"]
            size, offset, tags, mode = self._page_args(request, schema)
            rows, next_offset = await self._reader().page(
                schema.name, size=size, offset=offset, tags=tags, tags_mode=mode, filters=filters
            )
            payload: JSON = {"data": rows, "next": None}
            if next_offset is not None:
                base = request.path.rstrip("/")
                extra = "".join(
                    f"&{k}={quote(v, safe='')}" for k, v in request.query if k in ("size", "tags")
                )
                payload["next"] = f"{base}?offset={quote(next_offset, safe='')}{extra}"
                payload["offset"] = next_offset
            return AdminResponse.json(200, payload)

        return handler

    def _create(
        self, schema: EntitySchema, fname: str | None = None, parent: EntitySchema | None = None
    ) -> Handler:
        async def handler(request: AdminRequest, m: PathMatch) -> AdminResponse:
            store = self._require_store(schema, "create")
            if fname is not None and parent is not None:
                prow, err = await self._find_parent(parent, m)
                if err is not None or prow is None:
                    return err or AdminResponse.message(404, "Not found")
                data = await self._body(schema, request)
                data[fname] = {"id": prow["id"]}
            else:
                data = await self._body(schema, request)
            row = schema.validate_insert(data, now=self._now())
            return AdminResponse.json(201, await store.insert(schema.name, row))

        return handler

    async def _find_child(
        self,
        schema: EntitySchema,
        m: PathMatch,
        fname: str | None,
        parent: EntitySchema | None,
    ) -> tuple[JSON | None, JSON | None, AdminResponse | None]:
        prow: JSON | None = None
        if fname is not None and parent is not None:
            prow, err = await self._find_parent(parent, m)
            if err is not None:
                return None, None, err
        key = m.group("key")
        if schema.name == "targets" and prow is not None and not _is_uuid(key):
            row = await self._find_target(prow["id"], key)
        else:
            row = await self.find(schema, key)
        if row is not None and prow is not None and fname is not None:
            ref = row.get(fname)
            if not isinstance(ref, dict) or ref.get("id") != prow["id"]:
                row = None
        return prow, row, None

    async def _find_target(self, upstream_id: str, target: str) -> JSON | None:
        rows, _ = await self._reader().page(
            "targets", size=_MAX_PAGE, filters={"upstream": upstream_id}
        )
        wanted = {target, target + ":8000"}
        return next((r for r in rows if r.get("target") in wanted), None)

    def _get(
        self, schema: EntitySchema, fname: str | None = None, parent: EntitySchema | None = None
    ) -> Handler:
        async def handler(request: AdminRequest, m: PathMatch) -> AdminResponse:
            _, row, err = await self._find_child(schema, m, fname, parent)
            if err is not None:
                return err
            if row is None:
                return AdminResponse.message(404, "Not found")
            return AdminResponse.json(200, row)

        return handler

    def _patch(
        self, schema: EntitySchema, fname: str | None = None, parent: EntitySchema | None = None
    ) -> Handler:
        async def handler(request: AdminRequest, m: PathMatch) -> AdminResponse:
            store = self._require_store(schema, "update")
            prow, row, err = await self._find_child(schema, m, fname, parent)
            if err is not None:
                return err
            if row is None:
                return AdminResponse.message(404, "Not found")
            data = await self._body(schema, request)
            if fname is not None and prow is not None:
                data[fname] = {"id": prow["id"]}
            updated = schema.validate_update(row, data, now=self._now())
            return AdminResponse.json(200, await store.update(schema.name, updated))

        return handler

    def _put(
        self, schema: EntitySchema, fname: str | None = None, parent: EntitySchema | None = None
    ) -> Handler:
        async def handler(request: AdminRequest, m: PathMatch) -> AdminResponse:
            store = self._require_store(schema, "update")
            prow, row, err = await self._find_child(schema, m, fname, parent)
            if err is not None:
                return err
            data = await self._body(schema, request)
            key = m.group("key")
            if row is not None:
                entity_id = row["id"]
                created = row.get("created_at")
            elif _is_uuid(key):
                entity_id, created = key.lower(), None
            else:
                entity_id, created = str(uuid.uuid4()), None
            by_key = schema.endpoint_key is not None and not _is_uuid(key)
            if by_key and (row is None or row.get(schema.endpoint_key or "") == key):
                # PUT /services/{name}: the name in the URL wins over one in the body (Kong's
                # upsert_by_name), so the same request always addresses the same entity.
                data[schema.endpoint_key or ""] = key
            if fname is not None and prow is not None:
                data[fname] = {"id": prow["id"]}
            new = schema.validate_replace(entity_id, data, now=self._now(), created_at=created)
            return AdminResponse.json(200, await store.upsert(schema.name, new))

        return handler

    def _delete(
        self, schema: EntitySchema, fname: str | None = None, parent: EntitySchema | None = None
    ) -> Handler:
        async def handler(request: AdminRequest, m: PathMatch) -> AdminResponse:
            store = self._require_store(schema, "delete")
            _, row, err = await self._find_child(schema, m, fname, parent)
            if err is not None:
                return err
            if row is None:
                if fname is not None:
                    # Kong: nested forms answer 404 for an entity that is not below the
                    # parent; the top-level form is idempotent (204).
                    return AdminResponse.message(404, "Not found")
                return AdminResponse(status=204)
            await store.delete(schema.name, row["id"])
            return AdminResponse(status=204)

        return handler

    async def _tags(self, request: AdminRequest, m: PathMatch) -> AdminResponse:
        """``GET /tags`` and ``/tags/{tag}``: ``{"entity_name", "entity_id", "tag"}`` rows,
        ordered by tag, entity name and id, paginated like the entity lists."""
        wanted: str | None = None
        try:
            wanted = m.group("tag")
        except KeyError:
            wanted = None
        if wanted is not None and not _TAG.match(wanted):
            raise EntityError(
                ErrorCode.INVALID_OPTIONS,
                "invalid option (tags: invalid tag: a tag has printable characters, "
                "except ',' and '/', and no spaces)",
            )
        size, offset, _, _ = self._page_args(request)
        after = _decode_tag_offset(offset) if offset is not None else None
        _, entities = await self._reader().export()
        rows: list[tuple[str, str, str]] = []
        for name, items in entities.items():
            schema = self.schemas.get(name)
            if schema is None or "tags" not in schema.fields:
                continue
            for item in items:
                for tag in item.get("tags") or ():
                    if isinstance(tag, str) and (wanted is None or tag == wanted):
                        rows.append((tag, name, str(item["id"])))
        rows.sort()
        if after is not None:
            rows = [r for r in rows if r > after]
        page, more = rows[:size], len(rows) > size
        payload: JSON = {
            "data": [{"entity_name": e, "entity_id": i, "tag": t} for t, e, i in page],
            "next": None,
        }
        if more:
            nxt = _encode_tag_offset(page[-1])
            base = request.path.rstrip("/")
            extra = "".join(f"&size={quote(v, safe='')}" for k, v in request.query if k == "size")
            payload["next"] = f"{base}?offset={nxt}{extra}"
            payload["offset"] = nxt
        return AdminResponse.json(200, payload)

    def _get_parent(self, schema: EntitySchema, fname: str, parent: EntitySchema) -> Handler:
        async def handler(request: AdminRequest, m: PathMatch) -> AdminResponse:
            row = await self.find(schema, m.group("key"))
            ref = row.get(fname) if row else None
            if not isinstance(ref, dict):
                return AdminResponse.message(404, "Not found")
            prow = await self._reader().get(parent.name, ref["id"])
            if prow is None:
                return AdminResponse.message(404, "Not found")
            return AdminResponse.json(200, prow)

        return handler

    def _patch_parent(self, schema: EntitySchema, fname: str, parent: EntitySchema) -> Handler:
        async def handler(request: AdminRequest, m: PathMatch) -> AdminResponse:
            store = self._require_store(parent, "update")
            row = await self.find(schema, m.group("key"))
            ref = row.get(fname) if row else None
            if not isinstance(ref, dict):
                return AdminResponse.message(404, "Not found")
            prow = await store.get(parent.name, ref["id"])
            if prow is None:
                return AdminResponse.message(404, "Not found")
            data = await self._body(parent, request)
            updated = parent.validate_update(prow, data, now=self._now())
            return AdminResponse.json(200, await store.update(parent.name, updated))

        return handler


_TAG = re.compile(r"^[\x21-\x2b\x2d-\x2e\x30-\x7e\x80-\U0010ffff]+$")  # no ",", "/", spaces


def _encode_tag_offset(key: tuple[str, str, str]) -> str:
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_tag_offset(offset: str) -> tuple[str, str, str]:
    try:
        raw = base64.urlsafe_b64decode(offset + "=" * (-len(offset) % 4))
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        value = None
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)):
        raise EntityError(ErrorCode.INVALID_OFFSET, f"'{offset}' is not a valid offset")
    return value[0], value[1], value[2]


def _status_for(exc: EntityError) -> int:
    if exc.code is ErrorCode.UNIQUE_VIOLATION or exc.code is ErrorCode.PRIMARY_KEY_VIOLATION:
        return 409
    if exc.code is ErrorCode.NOT_FOUND:
        return 404
    return exc.status


def _lua_repr(ref: Mapping[str, Any]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in ref.items())
    return "{" + inner + "}"
