"""The plugin contract.

Theory of operation: for each request the proxy builds a ``Context`` and runs the phases of
every plugin that applies (Kong's scoping and precedence decide which instance applies),
highest ``priority`` first:

``rewrite`` (before routing-dependent work; only global plugins) -> ``access`` (may
authenticate, reject with ``ctx.exit(...)``, or change ``ctx.service_request``) -> the
upstream request -> ``header_filter`` (may change ``ctx.response``) -> ``body_filter`` (per
chunk, streaming) -> ``log`` (after the response is sent; must not block).

A plugin is a subclass of ``Plugin`` with class attributes ``name``, ``version`` (semver),
``priority`` and ``config_schema``. One instance exists per configured plugin entity and
lives for one configuration version; ``__init__`` receives the validated config and the
plugin entity's id (``cls(config, plugin_id=entity["id"])``). Phases the
subclass does not override cost nothing: the runtime skips them.

Third-party plugins are registered with the ``gateway.plugins`` entry point group:

    [project.entry-points."gateway.plugins"]
    my-plugin = "my_package.module:MyPlugin"

This module holds what the proxy builds per request (``Context``, ``Headers``...); it is on
the compiled hot path (``gateway._build``). The ``Plugin`` base class lives in
``gateway.plugins._plugin``, plain Python, so that any class may derive from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NoReturn, Protocol


class Headers:
    """A case-insensitive multi-map of HTTP headers that keeps insertion order.

    Names are stored lower-case (as h11 gives them); values are ``str``.
    """

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = items if items is not None else []

    @classmethod
    def from_raw(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        return cls([(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw])

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self._items:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self._items if k == name]

    def set(self, name: str, value: str) -> None:
        name = name.lower()
        items = self._items
        for k, _ in items:
            if k == name:  # replace: rebuild only when the name is there
                items = self._items = [kv for kv in items if kv[0] != name]
                break
        items.append((name, value))

    def add(self, name: str, value: str) -> None:
        self._items.append((name.lower(), value))

    def remove(self, name: str) -> None:
        name = name.lower()
        for k, _ in self._items:
            if k == name:
                self._items = [kv for kv in self._items if kv[0] != name]
                return

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(k == name.lower() for k, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def raw(self) -> list[tuple[bytes, bytes]]:
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self._items]


class EntityIndex(Protocol):
    """Read access to the running configuration's entities (built once per version)."""

    def by_id(self, entity: str, entity_id: str) -> dict[str, Any] | None: ...

    def by_field(self, entity: str, field: str, value: Any) -> dict[str, Any] | None: ...


class ExitResponse(Exception):
    """Raised by ``Context.exit``: the proxy answers with this response, skipping upstream."""

    def __init__(
        self, status: int, body: bytes | str | Mapping[str, Any] | None, headers: Headers
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers


class ClientRequest:
    """The request as the client sent it (read-only by convention)."""

    __slots__ = (
        "client_ip",
        "forwarded_ip",
        "headers",
        "host",
        "method",
        "path",
        "port",
        "raw_query",
        "scheme",
    )

    def __init__(
        self,
        *,
        method: str,
        scheme: str,
        host: str,
        port: int,
        path: str,
        raw_query: str,
        headers: Headers,
        client_ip: str,
        forwarded_ip: str | None = None,
    ) -> None:
        self.method = method
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path
        self.raw_query = raw_query
        self.headers = headers
        self.client_ip = client_ip
        self.forwarded_ip = forwarded_ip or client_ip


class ServiceRequest:
    """The request the proxy will send upstream; plugins change it in ``access``.

    ``query`` is a list of (name, value) pairs (``None`` value = flag without ``=``).
    ``body``: ``None`` streams the client's body through; bytes replace it.
    """

    __slots__ = ("body", "headers", "method", "path", "query")

    def __init__(
        self,
        *,
        method: str,
        path: str,
        query: list[tuple[str, str | None]],
        headers: Headers,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body: bytes | None = None


class Response:
    """The response headed to the client (changed in ``header_filter``)."""

    __slots__ = ("headers", "source", "status")

    def __init__(self, *, status: int, headers: Headers, source: str) -> None:
        self.status = status
        self.headers = headers
        self.source = source  # "service" | "exit" | "error"


class Context:
    """Everything a plugin sees of one request.

    Its attributes are fixed (``__slots__``, and a compiled class in the compiled build):
    state a plugin keeps for the request goes in ``shared``.
    """

    __slots__ = (
        "_body_reader",
        "consumer",
        "credential",
        "entities",
        "now",
        "request",
        "response",
        "route",
        "service",
        "service_request",
        "shared",
    )

    def __init__(
        self,
        *,
        request: ClientRequest,
        service_request: ServiceRequest,
        entities: EntityIndex,
        route: dict[str, Any] | None,
        service: dict[str, Any] | None,
        now: float,
    ) -> None:
        self.request = request
        self.service_request = service_request
        self.entities = entities
        self.route = route
        self.service = service
        self.now = now
        self.consumer: dict[str, Any] | None = None
        self.credential: dict[str, Any] | None = None
        self.response: Response | None = None
        self.shared: dict[str, Any] = {}
        self._body_reader: Any = None

    def authenticate(
        self, consumer: dict[str, Any] | None, credential: dict[str, Any] | None
    ) -> None:
        """Record the authenticated consumer (Kong's ``kong.client.authenticate``)."""
        self.consumer = consumer
        self.credential = credential

    def exit(
        self,
        status: int,
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> NoReturn:
        """Answer the client now (Kong's ``kong.response.exit``). A mapping body is JSON."""
        h = Headers()
        for k, v in (headers or {}).items():
            h.set(k, v)
        raise ExitResponse(status, body, h)

    async def read_body(self, limit: int) -> bytes:
        """Buffer the client's request body; a body over ``limit`` bytes answers 413.

        Only for plugins that must inspect the body; the proxy otherwise streams it. The
        runtime sets ``_body_reader(limit) -> bytes``, which reads at most ``limit + 1``
        bytes; the body read is kept, so later calls (and the upstream request) see it.
        """
        cached = self.shared.get("_request_body")
        if isinstance(cached, bytes):
            if len(cached) > limit:
                self.exit(413, {"message": "Request size limit exceeded"})
            return cached
        if self._body_reader is None:
            return b""
        data: bytes = await self._body_reader(limit)
        self.shared["_request_body"] = data
        if len(data) > limit:
            self.exit(413, {"message": "Request size limit exceeded"})
        return data
