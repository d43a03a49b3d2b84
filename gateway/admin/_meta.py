"""Admin API endpoints that are not entity CRUD: node info, status, schemas, plugins,
declarative export and load (``/config``), upstream health, and the clustering views.
(``/tags`` only needs the store, so it lives with the entity endpoints in ``_app``.)"""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from gateway._version import __version__
from gateway.admin._app import AdminApp, AdminRequest, AdminResponse, PathMatch
from gateway.admin._dbless import DeclarativeLoader, config_from_request
from gateway.declarative import dump_yaml, export_declarative
from gateway.plugins import available_plugins
from gateway.schema import EntitySchema

CP_ONLY = (
    "this endpoint is only available when the node is configured to run as a control plane "
    "for the cluster (role = control_plane)"
)


class NodeView(Protocol):
    """What the meta endpoints read from the running node."""

    node_id: str
    role: str

    def configuration(self) -> dict[str, Any]:
        """Settings with secrets redacted."""
        ...

    async def database_reachable(self) -> bool: ...

    def config_state(self) -> dict[str, Any]:
        """``{"version": int | None, "hash": str | None}`` of the configuration in force."""
        ...

    def server_stats(self) -> dict[str, Any]: ...

    async def export_config(self) -> dict[str, Any]: ...

    def upstream_health(self, upstream: Mapping[str, Any]) -> list[dict[str, Any]] | None: ...

    async def set_target_health(
        self, upstream: Mapping[str, Any], target: Mapping[str, Any], healthy: bool
    ) -> bool:
        """Mark ``target`` in every process that proxies; returns once they all apply it."""
        ...

    async def data_planes(
        self, *, size: int, offset: str | None
    ) -> tuple[list[dict[str, Any]], str | None]: ...


Handler = Callable[[AdminRequest, PathMatch], Awaitable[AdminResponse]]


DB_LESS_ONLY = (
    "this endpoint is only available when the node is configured to not use a database "
    "(database = off)"
)


def install_meta_routes(
    app: AdminApp, node: NodeView, *, loader: DeclarativeLoader | None = None
) -> None:
    """Add the meta endpoints; ``loader`` enables ``POST /config`` (``database = off``)."""
    schemas = app.schemas

    async def root(request: AdminRequest, m: PathMatch) -> AdminResponse:
        plugins = available_plugins()
        in_use: set[str] = set()
        if app.store is not None:
            offset: str | None = None
            while True:
                rows, offset = await app.store.page("plugins", size=1000, offset=offset)
                in_use.update(str(r.get("name")) for r in rows)
                if offset is None:
                    break
        return AdminResponse.json(
            200,
            {
                "tagline": "Welcome to trio-gateway",
                "version": __version__,
                "hostname": socket.gethostname(),
                "node_id": node.node_id,
                "role": node.role,
                "configuration": node.configuration(),
                "plugins": {
                    "available_on_server": {
                        name: {"version": cls.version, "priority": cls.priority}
                        for name, cls in sorted(plugins.items())
                    },
                    "enabled_in_cluster": sorted(in_use),
                },
            },
        )

    async def status(request: AdminRequest, m: PathMatch) -> AdminResponse:
        reachable = await node.database_reachable()
        state = node.config_state()
        payload: dict[str, Any] = {
            "database": {"reachable": reachable},
            "server": node.server_stats(),
            "configuration_hash": state.get("hash"),
            "configuration_version": state.get("version"),
        }
        # Optional in NodeView: hybrid nodes show their own cluster certificate's expiry.
        reader = getattr(node, "cluster_certificate", None)
        certificate = reader() if reader is not None else None
        if certificate is not None:
            payload["cluster_certificate"] = certificate
        return AdminResponse.json(200, payload)

    async def endpoints(request: AdminRequest, m: PathMatch) -> AdminResponse:
        paths = sorted({route_path(r.pattern.pattern) for r in app._routes})
        return AdminResponse.json(200, {"data": paths})

    async def schema_entity(request: AdminRequest, m: PathMatch) -> AdminResponse:
        schema = _schema_by_name(schemas, m.group("name"))
        if schema is None:
            return AdminResponse.message(404, f"No entity named '{m.group('name')}'")
        return AdminResponse.json(200, schema.describe())

    async def schema_validate(request: AdminRequest, m: PathMatch) -> AdminResponse:
        schema = _schema_by_name(schemas, m.group("name"))
        if schema is None:
            return AdminResponse.message(404, f"No entity named '{m.group('name')}'")
        data = await app._body(schema, request)
        schema.validate_insert(data, now=0)
        return AdminResponse.message(200, "schema validation successful")

    async def plugin_schema(request: AdminRequest, m: PathMatch) -> AdminResponse:
        cls = available_plugins().get(m.group("name"))
        if cls is None:
            return AdminResponse.message(404, f"No plugin named '{m.group('name')}'")
        described = cls.config_schema.describe()
        return AdminResponse.json(
            200,
            {
                "fields": [
                    {"protocols": {"type": "set", "default": list(cls.protocols)}},
                    {"config": described},
                ],
                "version": cls.version,
                "priority": cls.priority,
            },
        )

    async def plugins_enabled(request: AdminRequest, m: PathMatch) -> AdminResponse:
        return AdminResponse.json(200, {"enabled_plugins": sorted(available_plugins())})

    async def config_export(request: AdminRequest, m: PathMatch) -> AdminResponse:
        # From the store the Admin API reads (the database, or the in-memory configuration
        # that POST /config replaces), so the export always matches GET /services & co.
        # NOTE: Kong answers 400 here on a node with a database; exporting is more useful
        # (pinned by test_meta.py::test_config_export_round_trips).
        _, entities = await app._reader().export()
        doc = export_declarative(entities)
        if request.query_value("format") == "json":
            return AdminResponse.json(200, doc)
        return AdminResponse.json(200, {"config": dump_yaml(doc)})

    async def config_load(request: AdminRequest, m: PathMatch) -> AdminResponse:
        if loader is None:
            if node.configuration().get("database") == "off":
                # A node that embeds the Admin API without a loader (see _node.py).
                return AdminResponse.message(
                    405, "this node does not load configuration through the Admin API"
                )
            return AdminResponse.message(400, DB_LESS_ONLY)
        doc = config_from_request(request.headers.get("content-type"), request.body)
        check_hash = request.query_value("check_hash") in ("1", "true")
        loaded = await loader.load(doc, check_hash=check_hash)
        if loaded is None:
            return AdminResponse(status=304)
        return AdminResponse.json(201, {k: v for k, v in loaded.items() if k[0] != "_"})

    async def upstream_health(request: AdminRequest, m: PathMatch) -> AdminResponse:
        upstream = await app.find(schemas["upstreams"], m.group("key"))
        if upstream is None:
            return AdminResponse.message(404, "Not found")
        if request.query_value("balancer_health") in ("1", "true"):
            # Optional in NodeView: nodes that proxy may offer the upstream-level view.
            reader = getattr(node, "balancer_health", None)
            summary = reader(upstream) if reader is not None else None
            if summary is None:
                return AdminResponse.message(
                    400, "balancer health is only known on nodes that proxy"
                )
            return AdminResponse.json(200, {"data": summary, "next": None, "node_id": node.node_id})
        data = node.upstream_health(upstream)
        if data is None:
            return AdminResponse.message(
                400, "upstream health is only known on nodes that proxy (not on a control plane)"
            )
        return AdminResponse.json(200, {"data": data, "next": None, "node_id": node.node_id})

    def target_health(healthy: bool) -> Handler:
        async def handler(request: AdminRequest, m: PathMatch) -> AdminResponse:
            upstream = await app.find(schemas["upstreams"], m.group("key"))
            if upstream is None:
                return AdminResponse.message(404, "Not found")
            target = await app._find_target(upstream["id"], m.group("target"))
            if target is None:
                target = await app.find(schemas["targets"], m.group("target"))
            if target is None:
                return AdminResponse.message(404, "Not found")
            if not await node.set_target_health(upstream, target, healthy):
                return AdminResponse.message(
                    400,
                    "target health can only be set on a node that proxies this upstream "
                    "with health checks",
                )
            return AdminResponse(status=204)

        return handler

    async def data_planes(request: AdminRequest, m: PathMatch) -> AdminResponse:
        if node.role != "control_plane":
            return AdminResponse.message(400, CP_ONLY)
        size, offset, _, _ = app._page_args(request)
        rows, nxt = await node.data_planes(size=size, offset=offset)
        payload: dict[str, Any] = {"data": rows, "next": None}
        if nxt is not None:
            payload["next"] = f"/clustering/data-planes?offset={nxt}"
            payload["offset"] = nxt
        return AdminResponse.json(200, payload)

    async def cluster_status(request: AdminRequest, m: PathMatch) -> AdminResponse:
        if node.role != "control_plane":
            return AdminResponse.message(400, CP_ONLY)
        rows, _ = await node.data_planes(size=1000, offset=None)
        payload = {
            r["id"]: {k: r.get(k) for k in ("config_hash", "hostname", "ip", "last_seen")}
            for r in rows
        }
        return AdminResponse.json(200, payload, headers=(("deprecation", "true"),))

    async def cluster_refusals(request: AdminRequest, m: PathMatch) -> AdminResponse:
        # Optional in NodeView (control planes): the last refused data plane connections.
        reader = getattr(node, "cluster_refusals", None)
        if node.role != "control_plane" or reader is None:
            return AdminResponse.message(400, CP_ONLY)
        return AdminResponse.json(200, {"data": reader(), "next": None})

    async def cluster_certificates_reload(request: AdminRequest, m: PathMatch) -> AdminResponse:
        # Optional in NodeView (control planes): SIGHUP's certificate reload, over HTTP.
        reload = getattr(node, "reload_cluster_certificates", None)
        if node.role != "control_plane" or reload is None:
            return AdminResponse.message(400, CP_ONLY)
        return AdminResponse.json(200, reload())

    async def not_found(request: AdminRequest, m: PathMatch) -> AdminResponse:
        return AdminResponse.message(404, "Not found")

    app.add_route("", {"GET": root})
    app.add_route("status", {"GET": status})
    app.add_route("endpoints", {"GET": endpoints})
    app.add_route("schemas/plugins/(?P<name>[^/]+)", {"GET": plugin_schema})
    app.add_route("plugins/schema/(?P<name>[^/]+)", {"GET": plugin_schema})
    app.add_route("schemas/(?P<name>[^/]+)", {"GET": schema_entity})
    app.add_route("schemas/(?P<name>[^/]+)/validate", {"POST": schema_validate})
    app.add_route("plugins/enabled", {"GET": plugins_enabled})
    app.add_route("config", {"GET": config_export, "POST": config_load})
    app.add_route("upstreams/(?P<key>[^/]+)/health", {"GET": upstream_health})
    app.add_route(
        "upstreams/(?P<key>[^/]+)/targets/(?P<target>[^/]+)/healthy",
        {"PUT": target_health(True), "POST": target_health(True)},
    )
    app.add_route(
        "upstreams/(?P<key>[^/]+)/targets/(?P<target>[^/]+)/unhealthy",
        {"PUT": target_health(False), "POST": target_health(False)},
    )
    app.add_route("clustering/data-planes", {"GET": data_planes})
    app.add_route(
        "clustering/data-planes/(?P<key>[^/]+)",
        {"GET": not_found, "DELETE": not_found, "PATCH": not_found},
    )
    app.add_route("clustering/status", {"GET": cluster_status})
    app.add_route("clustering/refusals", {"GET": cluster_refusals})
    app.add_route("clustering/certificates/reload", {"POST": cluster_certificates_reload})


_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


def route_path(pattern: str) -> str:
    """``^services/(?P<key>[^/]+)/?$`` -> ``/services/{key}``."""
    raw = pattern.removeprefix("^").removesuffix("/?$").replace("\\", "")
    return "/" + _GROUP.sub(lambda m: "{" + m.group(1) + "}", raw)


def _schema_by_name(schemas: Mapping[str, EntitySchema], name: str) -> EntitySchema | None:
    if name in schemas:
        return schemas[name]
    return next((s for s in schemas.values() if s.admin_path == name), None)
