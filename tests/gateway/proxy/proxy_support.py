"""Test support for the proxy: config builders, tiny h11 upstreams, clients, a proxy runner."""

from __future__ import annotations

import json
import socket
import struct
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

from gateway.http import Limits
from gateway.proxy import ProxyOptions, ProxyState, compile_config, serve_proxy
from gateway.schema.entities import ENTITIES
from gateway.settings import ListenAddress


def uid() -> str:
    return str(uuid.uuid4())


def service(port: int, **fields: Any) -> dict[str, Any]:
    return {
        **ENTITIES["services"].defaults(),
        "id": uid(),
        "name": f"svc-{uid()[:8]}",
        "host": "127.0.0.1",
        "port": port,
        **fields,
    }


def route(svc: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
    return {
        **ENTITIES["routes"].defaults(),
        "id": uid(),
        "paths": ["/"],
        "service": {"id": svc["id"]} if svc is not None else None,
        **fields,
    }


def plugin(name: str, config: dict[str, Any] | None = None, **scope: Any) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "id": uid(),
        "name": name,
        "instance_name": None,
        "config": config or {},
        "enabled": True,
        "protocols": ["grpc", "grpcs", "http", "https"],
        "route": None,
        "service": None,
        "consumer": None,
    }
    for key, value in scope.items():
        entity[key] = {"id": value["id"]} if isinstance(value, dict) else value
    return entity


def config(**lists: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"_format_version": "3.0"}
    base.update(lists)
    return base


def simple_config(port: int, **service_fields: Any) -> dict[str, Any]:
    svc = service(port, **service_fields)
    return config(services=[svc], routes=[route(svc)])


# -- upstreams ------------------------------------------------------------------------------

UpstreamHandler = Callable[
    [h11.Request, bytes], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes] | None]
]


async def echo(request: h11.Request, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    payload = {
        "method": request.method.decode(),
        "target": request.target.decode(),
        "headers": [[k.decode(), v.decode()] for k, v in request.headers],
        "body": body.decode("latin-1"),
    }
    return 200, [(b"content-type", b"application/json")], json.dumps(payload).encode()


class Upstream:
    """A tiny h11 server. ``handler`` returns (status, headers, body) or None to hang up."""

    def __init__(
        self, handler: UpstreamHandler = echo, *, close_after_response: bool = False
    ) -> None:
        self.handler = handler
        self.close_after_response = close_after_response
        self.port = 0
        self.connections = 0
        self.requests = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        if conn.they_are_waiting_for_100_continue:
                            await stream.send_all(
                                conn.send(
                                    h11.InformationalResponse(
                                        status_code=100, headers=[], reason=b"Continue"
                                    )
                                )
                            )
                        data = await stream.receive_some(65536)
                        conn.receive_data(bytes(data))
                        continue
                    if isinstance(ev, h11.Request):
                        request = ev
                    elif isinstance(ev, h11.Data):
                        body += bytes(ev.data)
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                self.requests += 1
                result = await self.handler(request, body)
                if result is None:
                    return
                status, headers, content = result
                if not any(k == b"content-length" or k == b"transfer-encoding" for k, _ in headers):
                    headers = [*headers, (b"content-length", b"%d" % len(content))]
                out = conn.send(h11.Response(status_code=status, headers=headers))
                if content and request.method != b"HEAD":
                    out += conn.send(h11.Data(data=content))
                out += conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                if conn.our_state is h11.MUST_CLOSE or self.close_after_response:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()


# -- clients --------------------------------------------------------------------------------


class Reply:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.decode().lower() == name.lower():
                return v.decode()
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """An h11 keep-alive client over one connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def request(
        self,
        method: str = "GET",
        target: str = "/",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Reply:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        hs = [(k.encode(), v.encode()) for k, v in (headers or [])]
        if not any(k.lower() == b"host" for k, _ in hs):
            hs.insert(0, (b"host", b"example.test"))
        if body and not any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in hs):
            hs.append((b"content-length", b"%d" % len(body)))
        data = self.conn.send(h11.Request(method=method, target=target, headers=hs))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        return await self.read_response()

    async def read_response(self) -> Reply:
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        content = b""
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
                continue
            if isinstance(ev, h11.Response):
                status, headers = ev.status_code, list(ev.headers)
            elif isinstance(ev, h11.Data):
                content += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                return Reply(status, headers, content)
            elif isinstance(ev, h11.InformationalResponse):
                continue
            else:
                raise AssertionError(f"unexpected {ev!r}")

    async def aclose(self) -> None:
        await self.stream.aclose()


async def request(port: int, method: str = "GET", target: str = "/", **kw: Any) -> Reply:
    client = await Client.open(port)
    try:
        return await client.request(method, target, **kw)
    finally:
        await client.aclose()


async def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or ``timeout``)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = b""
    try:
        await stream.send_all(data)
        with trio.move_on_after(timeout):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        await stream.aclose()
    return out


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


# -- the proxy ------------------------------------------------------------------------------


def reset_connections(port: int, count: int) -> None:
    """Connect and reset at once (SO_LINGER 0), blocking: a server in the same Trio run
    accepts them later, when each is already gone (its getpeername fails with ENOTCONN)."""
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.connect(("127.0.0.1", port))
        s.close()


class FakeSettings:
    def __init__(self, **values: Any) -> None:
        self.proxy_listen = (ListenAddress(host="127.0.0.1", port=0),)
        self.__dict__.update(values)


async def start_proxy(
    nursery: trio.Nursery,
    cfg: dict[str, Any],
    *,
    backend: str = "httptools",
    settings: FakeSettings | None = None,
    **option_overrides: Any,
) -> tuple[int, ProxyState]:
    state = ProxyState(compile_config(cfg, version=1))
    option_overrides.setdefault("limits", Limits())
    opts = ProxyOptions(backend=backend, **option_overrides)  # type: ignore[arg-type]
    bound = await nursery.start(
        lambda task_status: serve_proxy(
            settings or FakeSettings(),
            state,
            options=opts,
            drain_timeout=1.0,
            task_status=task_status,
        )
    )
    return bound[0][1], state
