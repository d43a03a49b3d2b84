"""Drive a plugin's phases without a proxy: a request in, what the plugin did out."""

from __future__ import annotations

from typing import Any

from gateway.plugins import (
    ClientRequest,
    Context,
    ExitResponse,
    Headers,
    Plugin,
    Response,
    ServiceRequest,
    get_plugin,
)


class Entities:
    def __init__(self, **entities: list[dict[str, Any]]) -> None:
        self.entities = entities

    def by_id(self, entity: str, entity_id: str) -> dict[str, Any] | None:
        return next((e for e in self.entities.get(entity, []) if e["id"] == entity_id), None)

    def by_field(self, entity: str, field: str, value: Any) -> dict[str, Any] | None:
        return next((e for e in self.entities.get(entity, []) if e.get(field) == value), None)


def make_plugin(name: str, config: dict[str, Any] | None = None, plugin_id: str = "p1") -> Plugin:
    cls = get_plugin(name)
    assert cls is not None, name
    conf, errors = cls.config_schema.validate(config or {})
    assert errors is None, errors
    return cls(conf, plugin_id=plugin_id)


def make_ctx(
    *,
    method: str = "GET",
    path: str = "/",
    query: list[tuple[str, str | None]] | None = None,
    headers: dict[str, str] | None = None,
    client_ip: str = "127.0.0.1",
    body: bytes | None = None,
    entities: Entities | None = None,
    now: float = 1_700_000_000.0,
    route: dict[str, Any] | None = None,
    service: dict[str, Any] | None = None,
) -> Context:
    # as the parser gives them: checked, and no Host "set" by a plugin
    h = Headers.from_raw(Headers([(k.lower(), v) for k, v in (headers or {}).items()]).raw())
    request = ClientRequest(
        method=method,
        scheme="http",
        host="example.test",
        port=8000,
        path=path,
        raw_query="",
        headers=h,
        client_ip=client_ip,
    )
    service_request = ServiceRequest(
        method=method,
        path=path,
        query=list(query or []),
        headers=h.copy(),
    )
    ctx = Context(
        request=request,
        service_request=service_request,
        entities=entities or Entities(),
        route=route or {"id": "r1"},
        service=service or {"id": "s1"},
        now=now,
    )
    if body is not None:

        async def reader(limit: int) -> bytes:
            return body[: limit + 1]

        ctx._body_reader = reader
    return ctx


async def run_access(plugin: Plugin, ctx: Context) -> ExitResponse | None:
    try:
        await plugin.access(ctx)
    except ExitResponse as exit_:
        return exit_
    return None


def respond(
    plugin: Plugin, ctx: Context, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    ctx.response = Response(
        status=status,
        headers=Headers([(k.lower(), v) for k, v in (headers or {}).items()]),
        source="service",
    )
    plugin.header_filter(ctx)
    return ctx.response
