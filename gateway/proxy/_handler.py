"""One proxied request, from the client's head to the log phase.

Theory of operation (one task per client connection, requests in order):

1. ``state.current`` is read once: the whole request runs on that config version.
2. Global ``rewrite`` plugins, then the router. No route -> 404; an https-only route over
   http -> its ``https_redirect_status_code``.
3. The plugin plan for (route, service) and the ``access`` phase (``_pipeline`` explains the
   consumer re-resolution). ``ctx.exit`` -> that response; a plugin exception -> 500. Then
   a route without service -> 503 (after its plugins, as Kong).
4. The upstream leg: a target (balancer or the service host), a pooled or new connection,
   our own framing and hop-by-hop stripping, the request body streamed with backpressure
   (or the body a plugin buffered or replaced). Connect failures are retried up to
   ``service.retries`` on other targets; a failure on a reused connection is retried only
   for idempotent requests whose body we still have and before any response byte.
5. The response head goes through ``header_filter``; the body is streamed (``body_filter``
   per chunk) with the client's framing chosen by us. ``log`` runs at the end.

A client that leaves while we wait on the upstream is seen by the server's watchdog (which
peeks at its socket, as nginx): the wait raises ``ClientGone``, the upstream connection is
closed, nothing is retried or reported to the balancer's health checks, and the log phase
sees 499.

Timeouts are the service's ``connect_timeout``, ``write_timeout`` (between two successful
writes) and ``read_timeout`` (between two successful reads), in milliseconds, as nginx.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from gateway._access_log import AccessLog, basic_user, combined_line
from gateway._version import __version__
from gateway.http import (
    END,
    LAST_CHUNK,
    NEED_DATA,
    Backend,
    ClientGone,
    HeaderList,
    HttpError,
    Limits,
    RequestHead,
    ResponseHead,
    ServerConnection,
    encode_chunk,
    encode_request_head,
    encode_response_head,
    make_response_parser,
)
from gateway.http._events import header_tokens
from gateway.http._io import receive, send_all
from gateway.plugins import (
    ClientRequest,
    Context,
    ExitResponse,
    Headers,
    Plugin,
    Response,
    ServiceRequest,
)
from gateway.proxy._balancer import (
    Balancer,
    TargetAddress,
    hash_cookie_header,
    hash_key_for,
    uri_args,
)
from gateway.proxy._errors import UpstreamFailure, error_body
from gateway.proxy._pipeline import EMPTY_PLAN, PluginPlan
from gateway.proxy._pool import ConnectionPool, UpstreamConnection, connect_upstream
from gateway.proxy._router import RouteMatch
from gateway.proxy._router_paths import decoded_path
from gateway.proxy._state import CompiledConfig, ProxyState

__all__ = ["ProxyHandler", "ProxyOptions"]

log = logging.getLogger("gateway.proxy")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

VIA = f"1.1 gateway/{__version__}".encode()
SERVER = f"gateway/{__version__}".encode()
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
FLUSH_AT = 64 * 1024

# Hop-by-hop (RFC 9110 7.6.1) and framing (we set it): never forwarded in either direction.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)
_FORWARDED = (
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-path",
    b"x-forwarded-prefix",
)
_RESPONSE_DROP = _HOP_BY_HOP
# ... and on the request, the headers we compute ourselves
_REQUEST_DROP = _HOP_BY_HOP | {b"host", b"expect", b"x-real-ip", b"x-forwarded-for", *_FORWARDED}


class ClientFailure(Exception):
    """The client broke its request body while we were forwarding it (re-raised as is)."""

    def __init__(self, error: HttpError | trio.TooSlowError) -> None:
        super().__init__(str(error))
        self.error = error


class ProxyOptions:
    """What the proxy takes from settings (kong.conf names), with Kong's defaults."""

    def __init__(
        self,
        *,
        backend: Backend = "httptools",
        limits: Limits | None = None,
        trusted_ips: Sequence[Network] = (),
        real_ip_header: str = "X-Real-IP",
        real_ip_recursive: bool = False,
        client_max_body_size: int = 0,
        headers: Sequence[str] = ("server_tokens", "latency_tokens"),
        pool_size: int = 512,
        pool_max_requests: int = 10000,
        pool_idle_timeout: float = 60.0,
        client_header_timeout: float = 60.0,
        client_body_timeout: float = 60.0,
        client_send_timeout: float = 60.0,
        keepalive_timeout: float = 60.0,
        access_log: str | Path = "off",
    ) -> None:
        self.backend: Backend = backend
        # proxy_access_log: "off", "stdout", "stderr" or a path (serve_proxy opens it)
        self.access_log: str | Path = access_log
        self.limits = limits or Limits()
        self.upstream_limits = Limits(max_header_bytes=64 * 1024, max_headers=200)
        self.trusted_ips = tuple(trusted_ips)
        self.trust_all = any(n.prefixlen == 0 for n in self.trusted_ips)
        self.real_ip_header = real_ip_header.lower().encode("latin-1")
        self.real_ip_recursive = real_ip_recursive
        self.client_max_body_size = client_max_body_size
        names = {h.lower() for h in headers}
        self.via = bool(names & {"server_tokens", "via", "server"})
        self.latency = bool(
            names
            & {
                "latency_tokens",
                "x-gateway-upstream-latency",
                "x-gateway-proxy-latency",
                "x-kong-upstream-latency",
                "x-kong-proxy-latency",
            }
        )
        self.pool_size = pool_size
        self.pool_max_requests = pool_max_requests
        self.pool_idle_timeout = pool_idle_timeout
        self.client_header_timeout = client_header_timeout
        self.client_body_timeout = client_body_timeout
        self.client_send_timeout = client_send_timeout
        self.keepalive_timeout = keepalive_timeout
        self._trusted_cache: dict[str, bool] = {}

    @classmethod
    def from_settings(cls, settings: object, **overrides: Any) -> ProxyOptions:
        g = getattr
        header_buffers = g(settings, "large_client_header_buffers", (4, 8192))
        kwargs: dict[str, Any] = {
            "backend": g(settings, "proxy_http_parser", "httptools"),
            "limits": Limits(
                max_request_line=int(header_buffers[1]),
                max_header_bytes=max(int(header_buffers[0]) * int(header_buffers[1]), 16384),
            ),
            "trusted_ips": tuple(g(settings, "trusted_ips", ())),
            "real_ip_header": g(settings, "real_ip_header", "X-Real-IP"),
            "real_ip_recursive": bool(g(settings, "real_ip_recursive", False)),
            "client_max_body_size": int(g(settings, "client_max_body_size", 0)),
            "headers": tuple(g(settings, "headers", ("server_tokens", "latency_tokens"))),
            "pool_size": int(g(settings, "upstream_keepalive_pool_size", 512)),
            "pool_max_requests": int(g(settings, "upstream_keepalive_max_requests", 10000)),
            "pool_idle_timeout": float(g(settings, "upstream_keepalive_idle_timeout", 60.0)),
            "access_log": g(settings, "proxy_access_log", "off"),
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def is_trusted(self, ip: str) -> bool:
        if self.trust_all:
            return True
        if not self.trusted_ips:
            return False
        known = self._trusted_cache.get(ip)
        if known is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                known = False
            else:
                known = any(addr in net for net in self.trusted_ips)
            if len(self._trusted_cache) > 4096:
                self._trusted_cache.clear()
            self._trusted_cache[ip] = known
        return known


class _LazyHeaders(Mapping[str, str]):
    """The request headers as the router's mapping, decoded only if a route needs them."""

    __slots__ = ("_dict", "_raw")

    def __init__(self, raw: HeaderList) -> None:
        self._raw = raw
        self._dict: dict[str, str] | None = None

    def _d(self) -> dict[str, str]:
        if self._dict is None:
            d: dict[str, str] = {}
            for k, v in self._raw:
                name = k.decode("latin-1")
                value = v.decode("latin-1")
                d[name] = f"{d[name]}, {value}" if name in d else value
            self._dict = d
        return self._dict

    def __getitem__(self, key: str) -> str:
        return self._d()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d())

    def __len__(self) -> int:
        return len(self._raw)


def _with_connection_tokens(drop: frozenset[bytes], connection: bytes | None) -> frozenset[bytes]:
    """``drop`` plus the header names a Connection header lists (RFC 9110 7.6.1). The
    usual ``keep-alive`` / ``close`` are hop-by-hop already: no new set for them."""
    if not connection:
        return drop
    extra = [name for name in header_tokens(connection) if name and name not in drop]
    return drop.union(extra) if extra else drop


def _header(raw: HeaderList, name: bytes) -> bytes | None:
    for k, v in raw:
        if k == name:
            return v
    return None


# the end of a kong_log_format line: the gateway makes no request id (ProxyHandler._access_log)
_NO_REQUEST_ID: Final = b' kong_request_id: "-"'


def _body_bytes_sent(conn: ServerConnection) -> int:
    """nginx's ``$body_bytes_sent``: what went out after the response head (0: none sent)."""
    return max(conn.sent - conn.head_size, 0) if conn.status else 0


def _without_port(host: str) -> str:
    """A Host value without its ``:port`` (an IPv6 literal keeps its brackets)."""
    if host and host[-1] != "]" and ":" in host:
        return host.rpartition(":")[0]
    return host


def _server_name_of(host: str) -> str:
    """The TLS server name for a Host value: without its port or IPv6 brackets, as nginx's
    ``proxy_ssl_name`` (the name it sends and verifies). Empty for an empty Host."""
    host = _without_port(host)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _encode_body(body: bytes | str | Mapping[str, Any] | None) -> tuple[bytes, bool]:
    if body is None:
        return b"", False
    if isinstance(body, bytes):
        return body, False
    if isinstance(body, str):
        return body.encode("utf-8"), False
    return json.dumps(body, separators=(",", ":")).encode("utf-8"), True


class _Exchange:
    """Per-request values shared by the steps of ``ProxyHandler``."""

    __slots__ = (
        "body",
        "cfg",
        "client_ip",
        "ctx",
        "forwarded_ip",
        "head",
        "match",
        "path",
        "plan",
        "query",
        "scheme",
        "set_cookie",
        "started",
        "trusted",
        "upstream_latency",
        "upstream_started",
        "ws",
    )

    def __init__(self, cfg: CompiledConfig, head: RequestHead, started: float) -> None:
        self.cfg = cfg
        self.head = head
        self.started = started
        self.ctx: Context | None = None
        self.plan: PluginPlan = EMPTY_PLAN
        self.match: RouteMatch | None = None
        self.body: bytes | None = None
        self.upstream_started = 0.0
        self.upstream_latency = 0
        self.path = ""
        self.query = ""
        self.scheme = "http"
        self.client_ip = ""
        self.forwarded_ip = ""
        self.trusted = False
        self.ws = False
        # the Set-Cookie of a hash cookie the balancer generated (hash_on = "cookie")
        self.set_cookie: bytes | None = None


class ProxyHandler:
    """The ``gateway.http`` handler of the proxy listeners."""

    def __init__(
        self,
        state: ProxyState,
        options: ProxyOptions,
        pool: ConnectionPool,
        access_log: AccessLog | None = None,
    ) -> None:
        self.state = state
        self.options = options
        self.pool = pool
        self.access_log = access_log

    # -- entry ------------------------------------------------------------------------------
    async def __call__(self, conn: ServerConnection, head: RequestHead) -> None:
        self.state.requests_total += 1
        ex = _Exchange(self.state.current, head, time.perf_counter())
        target = head.target
        q = target.find("?")
        if q < 0:
            ex.path = target
        else:
            ex.path, ex.query = target[:q], target[q + 1 :]
        upgrade = head.upgrade
        ex.ws = upgrade is not None and upgrade.lower() == "websocket"
        scheme = conn.info.scheme
        ex.scheme = ("wss" if scheme == "https" else "ws") if ex.ws else scheme
        self._client_address(conn, ex)
        limit = self.options.client_max_body_size
        if limit and head.content_length is not None and head.content_length > limit:
            await self._error(conn, ex, 413, "Request size limit exceeded")
            return
        try:
            await self._run(conn, ex)
        except ClientFailure as client_failure:
            conn.keep_alive = False
            if not conn.response_started:
                conn.status = _failure_status(client_failure.error)
            raise client_failure.error from None
        except ExitResponse as exit_:
            await self._exit(conn, ex, exit_)
        except UpstreamFailure as upstream_failure:
            await self._error(conn, ex, upstream_failure.status, upstream_failure.message)
        except ClientGone:
            # as nginx (ngx_http_upstream_check_broken_connection): the upstream connection
            # is closed already (_exchange), the client's is closed quietly by the server,
            # and the log phase sees 499 unless a response was on its way
            conn.keep_alive = False
            log.info(
                "client closed the connection while waiting for the upstream; upstream "
                "connection closed (%s %s)",
                head.method,
                head.target,
            )
            if not conn.response_started:
                conn.status = 499
                if ex.ctx is not None:
                    ex.ctx.response = Response(status=499, headers=Headers(), source="error")
            raise
        except (
            HttpError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as exc:
            if not conn.response_started:
                # what the server answers (a client error) or nothing (the client is gone)
                conn.status = _failure_status(exc)
            raise
        except Exception:
            log.exception("error while proxying %s %s", head.method, head.target)
            conn.keep_alive = False
            if not conn.response_started:
                await self._error(conn, ex, 500, "An unexpected error occurred")
        finally:
            self._log_phase(ex)
            if ex.ctx is not None:
                # the body reader closure holds the context: without this, every request
                # with plugins left a reference cycle (~40 objects) for the collector
                ex.ctx._body_reader = None
            if self.access_log is not None:
                self._access_log(conn, ex, self.access_log)

    def _access_log(self, conn: ServerConnection, ex: _Exchange, access_log: AccessLog) -> None:
        # Kong's kong_log_format: nginx's combined, then the request id.
        # NOTE: the gateway generates no request id (no X-Kong-Request-Id): the field is
        # written as nginx writes an empty variable, "-" (test_access_log_proxy_line).
        head = ex.head
        referer = user_agent = authorization = None
        for k, v in head.headers:
            if k == b"user-agent":
                user_agent = v
            elif k == b"referer":
                referer = v
            elif k == b"authorization":
                authorization = v
        status = conn.status
        line = combined_line(
            access_log.stamp(),
            ex.forwarded_ip,
            f"{head.method} {head.target} HTTP/{head.version}".encode("latin-1", "replace"),
            status,
            _body_bytes_sent(conn),
            remote_user=basic_user(authorization) if authorization is not None else None,
            referer=referer,
            user_agent=user_agent,
        )
        access_log.write(line + _NO_REQUEST_ID)

    def log_refused(self, conn: ServerConnection) -> None:
        """The access log line of a request the parser refused (no handler saw it): as
        nginx, the client's address (no trusted_ips: no header was believed) and status;
        the request line as ``-``, since it may be what was malformed."""
        access_log = self.access_log
        if access_log is None:
            return
        line = combined_line(
            access_log.stamp(),
            conn.info.client_ip,
            b"",
            conn.status,
            _body_bytes_sent(conn),
        )
        access_log.write(line + _NO_REQUEST_ID)

    def _client_address(self, conn: ServerConnection, ex: _Exchange) -> None:
        ip = conn.info.client_ip
        ex.client_ip = ex.forwarded_ip = ip
        opts = self.options
        if not opts.trusted_ips or not opts.is_trusted(ip):
            return
        ex.trusted = True
        value = _header(ex.head.headers, opts.real_ip_header)
        if not value:
            return
        candidates = [a.strip() for a in value.decode("latin-1").split(",") if a.strip()]
        if opts.real_ip_recursive:
            for addr in reversed(candidates):
                if not opts.is_trusted(addr):
                    break
        else:
            addr = candidates[-1] if candidates else ""
        if addr and _valid_ip(addr):
            ex.forwarded_ip = addr

    # -- plugins ----------------------------------------------------------------------------
    def _context(self, conn: ServerConnection, ex: _Exchange) -> Context:
        head = ex.head
        host, _, port_text = (
            head.host.rpartition(":") if "]" not in head.host[-1:] else ("", "", "")
        )
        if not host or not port_text.isdigit():
            host, port = head.host, conn.info.server_port
        else:
            port = int(port_text)
        headers = Headers.from_raw(head.headers)
        request = ClientRequest(
            method=head.method,
            scheme=ex.scheme,
            host=host.lower(),
            port=port,
            path=ex.path,
            raw_query=ex.query,
            headers=headers,
            client_ip=ex.client_ip,
            forwarded_ip=ex.forwarded_ip,
        )
        query: list[tuple[str, str | None]] = []
        if ex.query:
            for part in ex.query.split("&"):
                name, eq, value = part.partition("=")
                query.append((name, value if eq else None))
        service_request = ServiceRequest(
            method=head.method, path=ex.path, query=query, headers=headers.copy()
        )
        ctx = Context(
            request=request,
            service_request=service_request,
            entities=ex.cfg.entities,
            route=None,
            service=None,
            now=time.time(),
        )

        async def read_body(limit: int) -> bytes:
            if ex.body is not None:
                if len(ex.body) > limit:
                    ctx.exit(413, {"message": "Request size limit exceeded"})
                return ex.body
            if head.content_length is not None and head.content_length > limit:
                ctx.exit(413, {"message": "Request size limit exceeded"})
            parts: list[bytes] = []
            size = 0
            while True:
                chunk = await conn.receive_body()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    conn.keep_alive = False
                    ctx.exit(413, {"message": "Request size limit exceeded"})
                parts.append(chunk)
            ex.body = b"".join(parts)
            return ex.body

        ctx._body_reader = read_body
        return ctx

    async def _run(self, conn: ServerConnection, ex: _Exchange) -> None:
        cfg = ex.cfg
        head = ex.head
        plugins = cfg.plugins
        if plugins.rewrite:
            ctx = ex.ctx = self._context(conn, ex)
            for plugin in plugins.rewrite:
                if plugins.applies(plugin, ex.scheme):
                    await plugin.rewrite(ctx)
        match = cfg.router.match(
            head.method, head.host, ex.path, _LazyHeaders(head.headers), conn.info.sni, ex.scheme
        )
        if match is None:
            await self._error(conn, ex, 404, "no Route matched with those values")
            return
        ex.match = match
        if match.redirect_status is not None:
            await self._redirect(conn, ex, match.redirect_status)
            return
        service = match.service
        route_id: str | None = match.route.get("id")
        service_id: str | None = service.get("id") if service is not None else None
        plan = plugins.static_plan(route_id, service_id)
        if plan is None or plan.instances or ex.ctx is not None:
            ctx = ex.ctx if ex.ctx is not None else self._context(conn, ex)
            ex.ctx = ctx
            ctx.route = match.route
            ctx.service = service
            ctx.service_request.path = match.upstream_path
            if match.uri_captures:
                # as Kong's router_matches.uri_captures: request-transformer templates
                ctx.shared["uri_captures"] = match.uri_captures
            ex.plan = await self._access(ctx, ex, plan, route_id, service_id)
        if service is None:
            # as Kong, after the access phase: a plugin on a route without service (an
            # authentication, a termination) answers first
            await self._error(conn, ex, 503, "no Service found with those values")
            return
        await self._proxy(conn, ex, match, service)

    async def _access(
        self,
        ctx: Context,
        ex: _Exchange,
        plan: PluginPlan | None,
        route_id: str | None,
        service_id: str | None,
    ) -> PluginPlan:
        plugins = ex.cfg.plugins
        ran: list[Plugin] = []
        if plan is not None:
            # the phases after access run for the plugins that were reached (as Kong): on an
            # exit or an error, only those
            try:
                for plugin in plan.instances:
                    if plugins.applies(plugin, ex.scheme):
                        ran.append(plugin)
                        if plugin in plan.access:
                            await plugin.access(ctx)
            except BaseException:
                ex.plan = PluginPlan(ran)
                raise
            return plan if len(ran) == len(plan.instances) else PluginPlan(ran)
        try:
            for name in plugins.order():
                consumer = ctx.consumer
                consumer_id = consumer.get("id") if consumer else None
                found = plugins.resolve(name, route_id, service_id, consumer_id)
                if found is None or not plugins.applies(found, ex.scheme):
                    continue
                ran.append(found)
                await found.access(ctx)
        except BaseException:
            ex.plan = PluginPlan(ran)
            raise
        return PluginPlan(ran)

    def _header_filter(
        self, ex: _Exchange, status: int, headers: HeaderList, source: str
    ) -> tuple[int, HeaderList]:
        ctx = ex.ctx
        if ctx is None or not ex.plan.header_filter:
            return status, headers
        ctx.response = Response(status=status, headers=Headers.from_raw(headers), source=source)
        for plugin in ex.plan.header_filter:
            plugin.header_filter(ctx)
        return ctx.response.status, ctx.response.headers.raw()

    def _body_filter(self, ex: _Exchange, chunk: bytes, eof: bool) -> bytes:
        ctx = ex.ctx
        assert ctx is not None
        for plugin in ex.plan.body_filter:
            chunk = plugin.body_filter(ctx, chunk, eof)
        return chunk

    def _log_phase(self, ex: _Exchange) -> None:
        ctx = ex.ctx
        if ctx is None:
            return
        for plugin in ex.plan.log:
            try:
                plugin.log(ctx)
            except Exception:
                log.exception("plugin %s failed in the log phase", plugin.name)

    # -- responses made here ----------------------------------------------------------------
    def _own_headers(self, ex: _Exchange) -> HeaderList:
        headers: HeaderList = []
        if self.options.via:
            headers.append((b"server", SERVER))
        if self.options.latency:
            ms = int((time.perf_counter() - ex.started) * 1000)
            headers.append((b"x-gateway-response-latency", b"%d" % ms))
        return headers

    async def _send(
        self,
        conn: ServerConnection,
        ex: _Exchange,
        status: int,
        headers: HeaderList,
        body: bytes,
        source: str,
    ) -> None:
        headers = [*headers, *self._own_headers(ex)]
        try:
            status, headers = self._header_filter(ex, status, headers, source)
            if ex.plan.body_filter:
                body = self._body_filter(ex, body, True)
        except Exception:
            log.exception("plugin failed while filtering a %s response", source)
            status, headers, body = 500, _json_headers(), error_body("An unexpected error occurred")
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        await conn.send_simple(status, headers, body, head_only=ex.head.method == "HEAD")

    async def _error(
        self, conn: ServerConnection, ex: _Exchange, status: int, message: str
    ) -> None:
        await self._send(conn, ex, status, _json_headers(), error_body(message), "error")

    async def _exit(self, conn: ServerConnection, ex: _Exchange, exit_: ExitResponse) -> None:
        if conn.response_started:
            conn.keep_alive = False
            return
        headers = exit_.headers.raw()
        body, is_json = _encode_body(exit_.body)
        if is_json and not any(k == b"content-type" for k, _ in headers):
            headers = [*_json_headers(), *headers]
        await self._send(conn, ex, exit_.status, headers, body, "exit")

    async def _redirect(self, conn: ServerConnection, ex: _Exchange, status: int) -> None:
        if status == 426:
            headers = [*_json_headers(), (b"upgrade", b"TLS/1.2, HTTP/1.1")]
            conn.keep_alive = False
            await self._send(
                conn, ex, 426, headers, error_body("Please use HTTPS protocol"), "error"
            )
            return
        host = (
            ex.head.host.rpartition(":")[0]
            if ex.head.host.rpartition(":")[2].isdigit()
            else ex.head.host
        )
        location = f"https://{host}{ex.head.target}".encode("latin-1")
        await self._send(conn, ex, status, [(b"location", location)], b"", "error")

    # -- the upstream leg -------------------------------------------------------------------
    def _upstream_headers(
        self, conn: ServerConnection, ex: _Exchange, match: RouteMatch, host_header: bytes
    ) -> HeaderList:
        head = ex.head
        ctx = ex.ctx
        info = conn.info
        trusted = ex.trusted
        # one pass over the client's headers: what Connection names, X-Forwarded-For, and
        # (from trusted clients) the X-Forwarded-* values to keep
        connection: bytes | None = None
        xff: bytes | None = None
        given: dict[bytes, bytes] = {}
        for k, v in head.headers:
            if k == b"connection":
                connection = v if connection is None else connection + b"," + v
            elif k == b"x-forwarded-for":
                xff = v if xff is None else xff + b", " + v
            elif trusted and k in _FORWARDED:
                given[k] = v
        drop = _with_connection_tokens(_REQUEST_DROP, connection)
        raw = ctx.service_request.headers.raw() if ctx is not None else head.headers
        out: HeaderList = [(b"host", host_header)]
        out += [kv for kv in raw if kv[0] not in drop]
        # as Kong: X-Forwarded-For is always appended to (nginx's proxy_add_x_forwarded_for);
        # trust only decides whether the other X-Forwarded-* values are kept
        ip = info.client_ip_bytes
        forwarded_ip = ip if ex.forwarded_ip == ex.client_ip else ex.forwarded_ip.encode("latin-1")
        host = _without_port(head.host)
        out += [
            (b"x-real-ip", forwarded_ip),
            (b"x-forwarded-for", xff + b", " + ip if xff else ip),
            (b"x-forwarded-proto", given.get(b"x-forwarded-proto") or info.scheme_bytes),
            (b"x-forwarded-host", given.get(b"x-forwarded-host") or host.encode("latin-1")),
            (b"x-forwarded-port", given.get(b"x-forwarded-port") or info.server_port_bytes),
            (b"x-forwarded-path", given.get(b"x-forwarded-path") or ex.path.encode("latin-1")),
        ]
        prefix = given.get(b"x-forwarded-prefix")
        if prefix is None and match.strip_path and match.matched_path and match.matched_path != "/":
            prefix = match.matched_path.encode("latin-1")
        if prefix is not None:
            out.append((b"x-forwarded-prefix", prefix))
        if self.options.via:
            out.append((b"via", VIA))
        if ex.ws:
            out.append((b"connection", b"upgrade"))
            out.append((b"upgrade", b"websocket"))
        return out

    async def _proxy(
        self, conn: ServerConnection, ex: _Exchange, match: RouteMatch, service: Mapping[str, Any]
    ) -> None:
        cfg = ex.cfg
        head = ex.head
        ctx = ex.ctx
        plan = cfg.service_plan(service)
        https = plan.https
        balancer = plan.balancer
        method = ctx.service_request.method if ctx is not None else head.method
        path = ctx.service_request.path if ctx is not None else match.upstream_path
        query = _encode_query(ctx.service_request.query) if ctx is not None else ex.query
        target = f"{path}?{query}" if query else path
        if ctx is not None and ctx.service_request.body is not None:
            ex.body = ctx.service_request.body
        connect_timeout = plan.connect_timeout
        write_timeout = plan.write_timeout
        read_timeout = plan.read_timeout
        retries = plan.retries
        tls_key = plan.tls_key
        ssl_context = plan.ssl_context
        hash_key: str | None = None
        if balancer is not None and (balancer.upstream.get("hash_on") or "none") != "none":
            hash_key = self._hash_key(ex, balancer, match)
        # Host and the TLS server name, as Kong's set_host_header and nginx's
        # `proxy_ssl_name $upstream_host`: the Host a plugin set (ngx.var.upstream_host, in
        # either phase), else the client's Host with preserve_host, else the chosen target's
        # precomputed values (upstream.host_header, or the target's host), so a retry on
        # another target names that target
        preserved: bytes | None = ctx.service_request.host if ctx is not None else None
        preserved_name = ""
        if preserved is not None:
            if https:
                preserved_name = _server_name_of(preserved.decode("latin-1"))
        elif match.preserve_host:
            preserved = head.host.encode("latin-1")
            if https:
                preserved_name = _server_name_of(head.host)
        tried: list[TargetAddress] = []
        ex.upstream_started = time.perf_counter()
        attempt = 0
        while True:
            if balancer is not None:
                picked = balancer.select(hash_key, exclude=tried)
                if picked is None:
                    raise UpstreamFailure(503, "failure to get a peer from the ring-balancer")
                address = picked
            else:
                picked = None
                address = plan.address
            host, port = address.host, address.port
            if preserved is None:
                host_header = address.host_values[https]
                server_name = address.server_name
            else:
                host_header = preserved
                server_name = preserved_name or address.server_name
            # the pool key names the server name: a connection is never reused for another
            key = (host, port, tls_key, server_name if https else None)
            upstream = self.pool.acquire(key)
            if upstream is None:
                try:
                    stream = await connect_upstream(
                        host,
                        port,
                        ssl_context=ssl_context,
                        server_hostname=server_name,
                        connect_timeout=connect_timeout,
                        verify_depth=plan.verify_depth,
                    )
                except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                    timeout = isinstance(exc, trio.TooSlowError)
                    if balancer is not None and picked is not None:
                        balancer.report(picked, "timeout" if timeout else "tcp_failure")
                        tried.append(picked)
                    log.info("connect to %s:%d failed: %r", host, port, exc)
                    if attempt < retries:
                        attempt += 1
                        continue
                    if timeout:
                        raise UpstreamFailure(504, "The upstream server is timing out") from None
                    raise UpstreamFailure(
                        502, "An invalid response was received from the upstream server"
                    ) from None
                upstream = self.pool.new(stream, key)
            if balancer is not None and picked is not None:
                balancer.connection_started(picked)
            try:
                retry = await self._exchange(
                    conn,
                    ex,
                    upstream,
                    method,
                    target,
                    host_header,
                    write_timeout,
                    read_timeout,
                    balancer,
                    picked,
                )
            finally:
                if balancer is not None and picked is not None:
                    balancer.connection_finished(
                        picked, response_time=time.perf_counter() - ex.upstream_started
                    )
            if not retry:
                return
            # a stale pooled connection (the only retry _exchange asks for): the target is
            # not at fault, try again on a fresh or another pooled connection; bounded by
            # the pool, since the failed connection was discarded

    def _hash_key(self, ex: _Exchange, balancer: Balancer, match: RouteMatch) -> str | None:
        ctx = ex.ctx
        upstream = balancer.upstream
        kinds = (upstream.get("hash_on"), upstream.get("hash_fallback"))
        consumer = ctx.consumer if ctx is not None else None
        credential = ctx.credential if ctx is not None else None
        # As Kong, which hashes after the access phase: the headers and the query string as
        # the plugins left them (nginx's request), the path as the client sent it ($uri).
        # The query and the cookies are parsed only for the hash inputs that read them.
        raw = ctx.service_request.headers.raw() if ctx is not None else ex.head.headers
        query: dict[str, list[str]] = {}
        if "query_arg" in kinds:
            if ctx is not None:
                query = uri_args(ctx.service_request.query)
            elif ex.query:
                pairs: list[tuple[str, str | None]] = []
                for part in ex.query.split("&"):
                    name, eq, value = part.partition("=")
                    pairs.append((name, value if eq else None))
                query = uri_args(pairs)
        cookies: dict[str, str] = {}
        if "cookie" in kinds:
            for k, v in raw:
                if k == b"cookie":
                    for item in v.decode("latin-1").split(";"):
                        name, eq, value = item.strip().partition("=")
                        if eq:
                            cookies.setdefault(name, value)
        key, cookie = hash_key_for(
            upstream,
            consumer_id=consumer.get("id") if consumer else None,
            credential_id=credential.get("id") if credential else None,
            client_ip=ex.forwarded_ip,
            headers=_LazyHeaders(raw),
            cookies=cookies,
            path=decoded_path(ex.path) if "path" in kinds else None,
            query=query,
            uri_captures=match.uri_captures,
        )
        if cookie is not None:
            # as Kong: the client gets the generated cookie, so its next requests stick to
            # the target this one hashes to
            ex.set_cookie = hash_cookie_header(cookie).encode("latin-1")
        return key

    async def _exchange(
        self,
        conn: ServerConnection,
        ex: _Exchange,
        upstream: UpstreamConnection,
        method: str,
        target: str,
        host_header: bytes,
        write_timeout: float,
        read_timeout: float,
        balancer: Balancer | None,
        picked: TargetAddress | None,
    ) -> bool:
        """One request/response on ``upstream``. True -> safe to retry elsewhere."""
        head = ex.head
        match = ex.match
        assert match is not None
        headers = self._upstream_headers(conn, ex, match, host_header)
        body = ex.body
        streaming = body is None and not conn.body_done
        if body is not None:
            headers.append((b"content-length", b"%d" % len(body)))
        elif head.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        elif head.content_length is not None:
            headers.append((b"content-length", b"%d" % head.content_length))
        stream = upstream.stream
        sock = upstream.sock
        replayable = not streaming and method in IDEMPOTENT
        sent_body = False
        got_bytes = False
        parser = make_response_parser(
            self.options.backend, self.options.upstream_limits, method, upgrade=ex.ws
        )
        # The service timeouts apply between two successful operations, as nginx's; the
        # I/O helpers only pay for a cancel scope when they actually have to wait.
        ev: Any = None
        try:
            data = encode_request_head(method, target, headers)
            if body:
                data += body
            await send_all(stream, data, timeout=write_timeout, slot=conn.slot, sock=sock)
            if streaming:
                sent_body = True
                await self._stream_request_body(conn, head, stream, write_timeout)
            while True:
                ev = parser.next_event()
                if ev is NEED_DATA:
                    chunk = await receive(
                        stream, timeout=read_timeout, wait_first=True, slot=conn.slot, sock=sock
                    )
                    if chunk:
                        got_bytes = True
                    parser.receive_data(chunk)
                    continue
                assert isinstance(ev, ResponseHead)
                if ev.status < 200 and not (ev.status == 101 and ex.ws):
                    continue
                break
        except ClientGone:
            # the client left while we waited on this connection (which is unusable now):
            # not the target's fault (no health report) and nobody to retry for
            self.pool.discard(upstream)
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, HttpError) as exc:
            self.pool.discard(upstream)
            if upstream.reused and replayable and not sent_body and not got_bytes:
                return True
            self._report(balancer, picked, "tcp_failure")
            log.info("upstream exchange failed: %r", exc)
            raise UpstreamFailure(
                502, "An invalid response was received from the upstream server"
            ) from None
        except trio.TooSlowError:
            self.pool.discard(upstream)
            self._report(balancer, picked, "timeout")
            raise UpstreamFailure(504, "The upstream server is timing out") from None
        except BaseException:
            self.pool.discard(upstream)
            raise
        assert isinstance(ev, ResponseHead)
        ex.upstream_latency = int((time.perf_counter() - ex.upstream_started) * 1000)
        if balancer is not None and picked is not None:
            balancer.report(picked, ("http", ev.status))
        if ev.status == 101:
            await self._switch(conn, ex, upstream, parser.trailing_data(), ev, read_timeout)
            return False
        try:
            await self._respond(conn, ex, parser, ev, upstream, read_timeout)
        except BaseException:
            self.pool.discard(upstream)
            raise
        self.pool.release(upstream, parser.reusable)
        return False

    def _report(
        self, balancer: Balancer | None, picked: TargetAddress | None, outcome: Any
    ) -> None:
        if balancer is not None and picked is not None:
            balancer.report(picked, outcome)

    async def _stream_request_body(
        self,
        conn: ServerConnection,
        head: RequestHead,
        stream: trio.abc.Stream,
        write_timeout: float,
    ) -> None:
        limit = self.options.client_max_body_size
        size = 0
        chunked = head.chunked
        while True:
            try:
                chunk = await conn.receive_body()
            except (HttpError, trio.TooSlowError) as exc:
                raise ClientFailure(exc) from exc  # the client's fault, not the upstream's
            if not chunk:
                break
            size += len(chunk)
            if limit and size > limit:
                conn.keep_alive = False
                raise ExitResponse(413, {"message": "Request size limit exceeded"}, Headers())
            await send_all(
                stream,
                encode_chunk(chunk) if chunked else chunk,
                timeout=write_timeout,
                slot=conn.slot,
            )
        if chunked:
            await send_all(stream, LAST_CHUNK, timeout=write_timeout, slot=conn.slot)

    async def _respond(
        self,
        conn: ServerConnection,
        ex: _Exchange,
        parser: Any,
        resp: ResponseHead,
        upstream: UpstreamConnection,
        read_timeout: float,
    ) -> None:
        head = ex.head
        stream = upstream.stream
        sock = upstream.sock
        drop = _with_connection_tokens(_RESPONSE_DROP, _header(resp.headers, b"connection"))
        headers = [kv for kv in resp.headers if kv[0] not in drop]
        opts = self.options
        if opts.via:
            headers.append((b"via", VIA))
        if opts.latency:
            headers.append((b"x-gateway-upstream-latency", b"%d" % ex.upstream_latency))
            proxy_ms = int((ex.upstream_started - ex.started) * 1000)
            headers.append((b"x-gateway-proxy-latency", b"%d" % proxy_ms))
        if ex.set_cookie is not None:
            _add_hash_cookie(headers, ex.set_cookie)
        status = resp.status
        if ex.ctx is not None and ex.plan.header_filter:
            status, headers = self._header_filter(ex, status, headers, "service")
            headers = [
                kv for kv in headers if kv[0] not in (b"content-length", b"transfer-encoding")
            ]
        filtering = bool(ex.plan.body_filter)
        no_body = head.method == "HEAD" or status in (204, 304) or status < 200
        chunked = False
        if no_body:
            if resp.content_length is not None and status != 204:
                headers.append((b"content-length", b"%d" % resp.content_length))
        elif resp.content_length is not None and not filtering:
            headers.append((b"content-length", b"%d" % resp.content_length))
        elif head.version == "1.1":
            headers.append((b"transfer-encoding", b"chunked"))
            chunked = True
        else:
            conn.keep_alive = False
        if not conn.keep_alive or not conn.body_done:
            conn.keep_alive = False
            headers.append((b"connection", b"close"))
        elif head.version == "1.0":
            headers.append((b"connection", b"keep-alive"))
        reason = resp.reason if status == resp.status and resp.reason else None
        data = encode_response_head(status, reason, headers)
        conn.status = status
        conn.head_size = len(data)
        conn.write(data)
        try:
            while True:
                ev = parser.next_event()
                if type(ev) is bytes:
                    if filtering:
                        ev = self._body_filter(ex, ev, False)
                    if no_body or not ev:
                        continue
                    conn.write(encode_chunk(ev) if chunked else ev)
                    if conn.buffered >= FLUSH_AT:
                        await conn.flush()
                elif ev is END:
                    break
                elif ev is NEED_DATA:
                    await conn.flush()
                    parser.receive_data(
                        await receive(stream, timeout=read_timeout, slot=conn.slot, sock=sock)
                    )
                else:
                    break
        except ClientGone:
            conn.keep_alive = False
            raise  # nobody to send the rest to (_exchange closes the upstream connection)
        except (HttpError, trio.BrokenResourceError, OSError, trio.TooSlowError) as exc:
            # the head is gone: all we can do is cut the connection so the client notices
            log.info("upstream failed in the middle of a response: %r", exc)
            conn.keep_alive = False
            await conn.flush()
            raise trio.BrokenResourceError("upstream response truncated") from exc
        if filtering:
            tail = self._body_filter(ex, b"", True)
            if tail and not no_body:
                conn.write(encode_chunk(tail) if chunked else tail)
        if chunked:
            conn.write(LAST_CHUNK)
        if conn.buffered:
            await conn.flush()

    async def _switch(
        self,
        conn: ServerConnection,
        ex: _Exchange,
        upstream: UpstreamConnection,
        upstream_rest: bytes,
        resp: ResponseHead,
        read_timeout: float,
    ) -> None:
        """101 Switching Protocols: relay bytes both ways until one side closes."""
        headers = [
            kv for kv in resp.headers if kv[0] not in (b"content-length", b"transfer-encoding")
        ]
        if self.options.via:
            headers.append((b"via", VIA))
        if ex.set_cookie is not None:
            _add_hash_cookie(headers, ex.set_cookie)
        data = encode_response_head(101, resp.reason, headers)
        conn.status = 101
        conn.head_size = len(data)
        conn.write(data)
        if upstream_rest:
            conn.write(upstream_rest)
        await conn.flush()
        conn.keep_alive = False
        client_rest = conn.trailing_data()
        client = conn.stream
        remote = upstream.stream

        async def pump(src: trio.abc.Stream, dst: trio.abc.Stream, timeout: float | None) -> None:
            try:
                while True:
                    if timeout is None:
                        data = await src.receive_some(65536)
                    else:
                        with trio.fail_after(timeout):
                            data = await src.receive_some(65536)
                    if not data:
                        break
                    await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
                pass
            nursery.cancel_scope.cancel()

        try:
            if client_rest:
                await remote.send_all(client_rest)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, remote, None)
                nursery.start_soon(pump, remote, client, read_timeout)
        finally:
            self.pool.discard(upstream)
            conn.body_done = True


def _failure_status(exc: BaseException) -> int:
    """The status the access log shows for a request the handler gave up on."""
    if isinstance(exc, HttpError):
        return exc.status
    if isinstance(exc, trio.TooSlowError):
        return 408
    return 499  # the client's connection broke before any response


def _add_hash_cookie(headers: HeaderList, set_cookie: bytes) -> None:
    """Add the balancer's hash cookie to a response; as Kong, it replaces the upstream's
    Set-Cookie of the same name instead of sending the name twice."""
    prefix = set_cookie[: set_cookie.index(b"=") + 1]
    for i, (name, value) in enumerate(headers):
        if name == b"set-cookie" and value.startswith(prefix):
            headers[i] = (name, set_cookie)
            return
    headers.append((b"set-cookie", set_cookie))


def _encode_query(query: Sequence[tuple[str, str | None]]) -> str:
    return "&".join(name if value is None else f"{name}={value}" for name, value in query)


def _json_headers() -> HeaderList:
    return [(b"content-type", b"application/json; charset=utf-8")]
