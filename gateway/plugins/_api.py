"""The plugin contract.

Theory of operation: for each request the proxy builds a ``Context`` and runs the phases of
every plugin that applies (Kong's scoping and precedence decide which instance applies),
highest ``priority`` first:

``rewrite`` (before routing-dependent work; only global plugins) -> ``access`` (may
authenticate, reject with ``ctx.exit(...)``, or change ``ctx.service_request``) -> the
upstream request -> ``header_filter`` (may change ``ctx.response``) -> ``body_filter`` (per
chunk, streaming) -> ``log`` (after the response is sent; must not block).

Before all of them, once per connection of an ``ssl`` listener, the synchronous
``certificate`` phase runs during the TLS handshake, for global plugins only (no route is
known yet); it sees a ``Handshake`` (``gateway.plugins._handshake``), not a ``Context``.

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

import re
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn, Protocol

# RFC 9110 field names (tokens)
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# names checked already, as they go on the wire (plugins set the same few names over and
# over: a dict lookup instead of a regular expression); bounded, emptied when full
_NAMES: dict[str, bytes] = {}
_NAMES_SIZE = 1024


def _wire_name(name: str) -> bytes:
    key = _NAMES.get(name)
    if key is None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        key = name.lower().encode("ascii")
        if len(_NAMES) >= _NAMES_SIZE:
            _NAMES.clear()
        _NAMES[name] = key
    return key


def _lookup_key(name: str) -> bytes:
    """A name to look up, as stored (a name that is not Latin-1 matches nothing)."""
    return name.lower().encode("latin-1", "replace")


def _field(name: str, value: str) -> tuple[bytes, bytes]:
    """One header as it goes on the wire (name lower-cased); ``ValueError`` for a name that
    is not a token or a value that would break the message framing (CR, LF, NUL) or is not
    Latin-1."""
    key = _wire_name(name)
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"invalid value for header {name!r}: CR, LF or NUL")
    try:
        return key, value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"invalid value for header {name!r}: not Latin-1") from None


class Headers:
    """A case-insensitive multi-map of HTTP headers that keeps insertion order.

    Names are lower-case; values are ``str``. Every header a plugin adds is checked when it
    is added (``ValueError`` for a name that is not a token, or a value with CR, LF or NUL,
    or outside Latin-1: what could smuggle a header or a message), so a plugin's mistake
    surfaces at its own line. Headers are kept as the bytes they go out as: the proxy
    forwards the ones no plugin touched without encoding or checking them again.

    The last ``host`` value given to ``set``, ``add`` or the constructor is remembered
    (``ServiceRequest.host``); ``remove`` does not forget it. On the service request that is
    Kong's ``ngx.var.upstream_host``: the Host sent upstream and the TLS server name.
    """

    __slots__ = ("_host", "_raw")

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._host: bytes | None = None
        self._raw: list[tuple[bytes, bytes]] = []
        if items is not None:
            for k, v in items:
                self.add(k, v)

    @classmethod
    def from_raw(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        """Headers as a parser gave them (names lower-case, values already checked)."""
        headers = cls()
        headers._raw = list(raw)
        return headers

    def copy(self) -> Headers:
        headers = Headers.from_raw(self._raw)
        headers._host = self._host
        return headers

    def get(self, name: str, default: str | None = None) -> str | None:
        key = _lookup_key(name)
        for k, v in self._raw:
            if k == key:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        key = _lookup_key(name)
        return [v.decode("latin-1") for k, v in self._raw if k == key]

    def set(self, name: str, value: str) -> None:
        field = _field(name, value)
        key = field[0]
        if key == b"host":
            self._host = field[1]
        raw = self._raw
        for k, _ in raw:
            if k == key:  # replace: rebuild only when the name is there
                raw = self._raw = [kv for kv in raw if kv[0] != key]
                break
        raw.append(field)

    def add(self, name: str, value: str) -> None:
        field = _field(name, value)
        if field[0] == b"host":
            self._host = field[1]
        self._raw.append(field)

    def remove(self, name: str) -> None:
        key = _lookup_key(name)
        for k, _ in self._raw:
            if k == key:
                self._raw = [kv for kv in self._raw if kv[0] != key]
                return

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _lookup_key(name)
        return any(k == key for k, _ in self._raw)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._raw)

    def items(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._raw]

    def raw(self) -> list[tuple[bytes, bytes]]:
        """The headers as they go on the wire (a new list)."""
        return list(self._raw)


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
    ``headers`` start as the client's; setting or adding ``host`` there sets ``host``.
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

    @property
    def host(self) -> bytes | None:
        """The Host a plugin set for the service (the last ``host`` value set or added in
        ``headers``, as Kong's ``kong.service.request.set_header("Host", ...)``), or None:
        the proxy then sends its own (``preserve_host``, ``host_header``, the target). Over
        TLS its name without the port is also the server name sent and verified. Removing
        the header does not unset it (Kong: the Host is always sent); an empty value is
        the same as None."""
        return self.headers._host or None


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
