"""The Admin API as an I/O-free application: ``AdminApp.handle(request) -> response``.

Theory of operation: every entity schema with ``generate_admin_api`` gets Kong's endpoints
(``/services``, ``/services/{id or name}``), and every foreign key adds the nested forms
(``/services/{s}/routes``, ``/routes/{r}/service``). Handlers validate with the entity schema,
then call the store; the store enforces uniqueness, foreign keys and cascades in one
transaction and bumps the config version, which is what propagates a change to the proxy
(traditional role) or to the data planes (control plane). Errors are Kong's bodies
(``{"message", "name", "code", "fields"}``) with Kong's status codes.

The HTTP server (``gateway.admin._server``) only parses HTTP and calls ``handle``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

import attrs

from gateway.admin._body import BodyError, coerce_form_types, decode_body
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


class Extension(Protocol):
    """Optional endpoints contributed by the node (status, clustering, health)."""

    async def __call__(self, request: AdminRequest, match: re.Match[str]) -> AdminResponse: ...


Handler = Callable[[AdminRequest, "re.Match[str]"], Awaitable[AdminResponse]]


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

    async def handle(self, request: AdminRequest) -> AdminResponse:
        try:
            return await self._dispatch(request)
        except EntityError as exc:
            return AdminResponse.json(_status_for(exc), exc.body())
        except BodyError as exc:
            return AdminResponse.message(exc.status, exc.message)

    async def _dispatch(self, request: AdminRequest) -> AdminResponse:
        path = request.path.rstrip("/") or "/"
        for route in self._routes:
            m = route.pattern.match(path.lstrip("/"))
            if m is None:
                continue
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
        self, parent: EntitySchema, m: re.Match[str]
    ) -> tuple[JSON | None, AdminResponse | None]:
        row = await self.find(parent, m.group("parent"))
        if row is None:
            return None, AdminResponse.message(404, "Not found")
        return row, None

    async def _body(self, schema: EntitySchema, request: AdminRequest) -> JSON:
        data, is_form = decode_body(request.headers.get("content-type"), request.body)
        if is_form:
            data = coerce_form_types(schema.record, data)
        return await self._resolve_foreign(schema, data)

    async def _resolve_foreign(self, schema: EntitySchema, data: JSON) -> JSON:
        """``{"service": {"name": "x"}}`` -> ``{"service": {"id": "<id of x>"}}``."""
        errors: dict[str, Any] = {}
        for fname, field in schema.foreign_keys().items():
            ref = data.get(fname)
            if isinstance(ref, str) and not _is_uuid(ref):
                ref = {"name": ref}
            if not isinstance(ref, dict) or "id" in ref or not ref:
                continue
            target = self.schemas.get(field.reference)
            key_field = next(iter(ref))
            if target is None or target.endpoint_key not in (key_field, None):
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
        self, request: AdminRequest
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
        async def handler(request: AdminRequest, m: re.Match[str]) -> AdminResponse:
            filters: dict[str, Any] = {}
            if fname is not None and parent is not None:
                prow, err = await self._find_parent(parent, m)
                if err is not None or prow is None:
                    return err or AdminResponse.message(404, "Not found")
                filters[fname] = prow["id"]
            size, offset, tags, mode = self._page_args(request)
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
        async def handler(request: AdminRequest, m: re.Match[str]) -> AdminResponse:
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
        m: re.Match[str],
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
        async def handler(request: AdminRequest, m: re.Match[str]) -> AdminResponse:
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
        async def handler(request: AdminRequest, m: re.Match[str]) -> AdminResponse:
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
        async def handler(request: AdminRequest, m: re.Match[str]) -> AdminResponse:
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
                if schema.endpoint_key:
                    data.setdefault(schema.endpoint_key, key)
            if fname is not None and prow is not None:
                data[fname] = {"id": prow["id"]}
            new = schema.validate_replace(entity_id, data, now=self._now(), created_at=created)
            return AdminResponse.json(200, await store.upsert(schema.name, new))

        return handler

    def _delete(
        self, schema: EntitySchema, fname: str | None = None, parent: EntitySchema | None = None
    ) -> Handler:
        async def handler(request: AdminRequest, m: re.Match[str]) -> AdminResponse:
            store = self._require_store(schema, "delete")
            _, row, err = await self._find_child(schema, m, fname, parent)
            if err is not None:
                return err
            if row is not None:
                await store.delete(schema.name, row["id"])
            return AdminResponse(status=204)

        return handler

    def _get_parent(self, schema: EntitySchema, fname: str, parent: EntitySchema) -> Handler:
        async def handler(request: AdminRequest, m: re.Match[str]) -> AdminResponse:
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
        async def handler(request: AdminRequest, m: re.Match[str]) -> AdminResponse:
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


def _status_for(exc: EntityError) -> int:
    if exc.code is ErrorCode.UNIQUE_VIOLATION or exc.code is ErrorCode.PRIMARY_KEY_VIOLATION:
        return 409
    if exc.code is ErrorCode.NOT_FOUND:
        return 404
    return exc.status


def _lua_repr(ref: Mapping[str, Any]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in ref.items())
    return "{" + inner + "}"
