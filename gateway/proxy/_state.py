"""The running configuration of the proxy and its atomic swap.

Theory of operation: ``compile_config`` turns a config dict (contracts.md 1) into a
``CompiledConfig``: router, balancers, plugin instances, entity index, certificates. It is
pure CPU work and runs off the hot path (in a thread if the caller wants). ``ProxyState``
holds the current one; ``swap`` is a single attribute assignment. A request reads
``state.current`` once when it starts and uses that object to its end, so in-flight
requests finish on the config they started with and a swap never fails a request.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from gateway.proxy._balancer import Balancers, TargetAddress
from gateway.proxy._pipeline import PluginTable
from gateway.proxy._router import Router
from gateway.proxy._tls import CertificateStore, UpstreamTLS

__all__ = [
    "CompiledConfig",
    "ConfigEntities",
    "ProxyState",
    "ServicePlan",
    "compile_config",
    "merged_balancer_health",
    "merged_target_health",
    "upstream_health",
]

_ENTITY_KEYS = (
    "services",
    "routes",
    "consumers",
    "plugins",
    "upstreams",
    "targets",
    "certificates",
    "snis",
    "ca_certificates",
)


def _entity_key(entity: str) -> str:
    # accept "service" and "services", "keyauth_credential" and "keyauth_credentials"
    return entity if entity.endswith("s") else entity + "s"


class ConfigEntities:
    """``gateway.plugins.EntityIndex`` over one config: by id, and by any field on demand.

    Field indexes are built on first use (one pass) and kept for the config's life, so a
    key-auth lookup costs one dict access after the first request.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = config
        self._by_id: dict[str, dict[str, dict[str, Any]]] = {}
        self._by_field: dict[tuple[str, str], dict[Any, dict[str, Any]]] = {}

    def _rows(self, entity: str) -> list[dict[str, Any]]:
        rows = self._config.get(_entity_key(entity))
        return rows if isinstance(rows, list) else []

    def by_id(self, entity: str, entity_id: str) -> dict[str, Any] | None:
        key = _entity_key(entity)
        index = self._by_id.get(key)
        if index is None:
            index = self._by_id[key] = {
                r["id"]: r for r in self._rows(key) if isinstance(r.get("id"), str)
            }
        return index.get(entity_id)

    def by_field(self, entity: str, field: str, value: Any) -> dict[str, Any] | None:
        key = (_entity_key(entity), field)
        index = self._by_field.get(key)
        if index is None:
            index = {}
            for row in self._rows(key[0]):
                v = row.get(field)
                if isinstance(v, Mapping):  # foreign keys: {"id": ...}
                    v = v.get("id")
                if isinstance(v, (str, int, float, bool)):
                    index.setdefault(v, row)
            self._by_field[key] = index
        try:
            return index.get(value)
        except TypeError:
            return None


class ServicePlan:
    """What the proxy reads of a service on every request, computed once per config."""

    __slots__ = (
        "address",
        "balancer",
        "connect_timeout",
        "host",
        "https",
        "port",
        "read_timeout",
        "retries",
        "ssl_context",
        "tls_key",
        "verify_depth",
        "write_timeout",
    )

    def __init__(self, service: Mapping[str, Any], cfg: CompiledConfig) -> None:
        self.host: str = service["host"]
        self.port = int(service.get("port") or 80)
        self.https = service.get("protocol") in ("https", "wss", "tls", "grpcs")
        self.balancer = cfg.balancers.get(self.host)
        # an unbalanced service is one target: its Host values and TLS server name are
        # precomputed the way a balancer's targets' are (a balanced service does not use it)
        self.address = TargetAddress(self.host, self.port)
        self.connect_timeout = (service.get("connect_timeout") or 60000) / 1000
        self.write_timeout = (service.get("write_timeout") or 60000) / 1000
        self.read_timeout = (service.get("read_timeout") or 60000) / 1000
        retries = service.get("retries")
        self.retries = int(retries) if isinstance(retries, int) else 5
        self.tls_key: Any = None
        self.ssl_context: ssl.SSLContext | None = None
        depth = service.get("tls_verify_depth")
        self.verify_depth: int | None = depth if isinstance(depth, int) else None
        if self.https:
            self.tls_key, self.ssl_context = cfg.upstream_tls.context(service)


class CompiledConfig:
    """Everything the proxy needs of one config version, built once."""

    __slots__ = (
        "_service_plans",
        "balancers",
        "certificates",
        "config",
        "entities",
        "hash",
        "plugins",
        "router",
        "upstream_tls",
        "version",
    )

    def __init__(
        self,
        *,
        version: int,
        config: Mapping[str, Any],
        router: Router,
        balancers: Balancers,
        plugins: PluginTable,
        entities: ConfigEntities,
        certificates: CertificateStore,
        upstream_tls: UpstreamTLS,
        hash: str | None = None,
    ) -> None:
        self.version = version
        self.config = config
        self.router = router
        self.balancers = balancers
        self.plugins = plugins
        self.entities = entities
        self.certificates = certificates
        self.upstream_tls = upstream_tls
        self.hash = hash
        self._service_plans: dict[int, tuple[Mapping[str, Any], ServicePlan]] = {}

    def service_plan(self, service: Mapping[str, Any]) -> ServicePlan:
        """The per-request view of ``service`` (an entity of this config), cached."""
        found = self._service_plans.get(id(service))
        if found is not None and found[0] is service:
            return found[1]
        plan = ServicePlan(service, self)
        self._service_plans[id(service)] = (service, plan)
        return plan


def compile_config(
    config: Mapping[str, Any],
    *,
    version: int = 0,
    previous: CompiledConfig | None = None,
    hash: str | None = None,
) -> CompiledConfig:
    """Build a ``CompiledConfig``; raises ``gateway.ConfigError`` when it cannot run.

    ``previous`` carries balancer health and load over to the new version.
    """
    return CompiledConfig(
        version=version,
        config=config,
        router=Router.compile(config),
        balancers=Balancers.build(
            config, previous=previous.balancers if previous is not None else None
        ),
        plugins=PluginTable(config.get("plugins") or ()),
        entities=ConfigEntities(config),
        certificates=CertificateStore(config),
        upstream_tls=UpstreamTLS(config),
        hash=hash,
    )


EMPTY_CONFIG: Mapping[str, Any] = {"_format_version": "3.0"}


def upstream_health(balancers: Balancers) -> list[dict[str, Any]]:
    """Every upstream's health as the status API shows it: its own state and its targets."""
    return [
        {
            "name": balancer.name,
            "health": balancer.balancer_health(),
            "targets": balancer.health_snapshot(),
        }
        for balancer in sorted(balancers, key=lambda b: b.name)
    ]


# How bad a health label is, for merging the views of several worker processes.
_TARGET_SEVERITY = {"HEALTHCHECKS_OFF": 0, "HEALTHY": 1, "DNS_ERROR": 2, "UNHEALTHY": 3}
_BALANCER_SEVERITY = {"HEALTHCHECKS_OFF": 0, "HEALTHY": 1, "UNHEALTHY": 2}


def _views(reports: Iterable[Mapping[str, Any]], name: str) -> Iterator[Mapping[str, Any]]:
    for report in reports:
        for upstream in report.get("upstreams") or ():
            if upstream.get("name") == name:
                yield upstream


def _rank(doc: Mapping[str, Any], severity: Mapping[str, int], key: str) -> tuple[int, float]:
    """How badly ``doc`` (a target item, or an upstream's ``health``) sees its subject: the
    label's severity first, then the least weight available (``doc[key]["weight"]``)."""
    label = doc.get("health")
    weight = (doc.get(key) or {}).get("weight") or {}
    available = weight.get("available")
    return (
        severity.get(label, 0) if isinstance(label, str) else 0,
        -float(available) if isinstance(available, int | float) else 0.0,
    )


def merged_target_health(reports: Iterable[Mapping[str, Any]], name: str) -> list[dict[str, Any]]:
    """One view of upstream ``name``'s targets from the per-process ``reports`` (the status
    API's ``data``): each target as the process that sees it worst (``UNHEALTHY`` over
    ``DNS_ERROR`` over ``HEALTHY``, then the least available weight). A target is reported
    ``HEALTHY`` only when every process would send it traffic. In config order.

    NOTE: Kong's workers share one health state, so it has nothing to merge; ours can
    disagree for a moment (each probes on its own) or for longer (passive checks count each
    worker's own traffic). Pinned by ``test_a_target_is_healthy_only_if_every_process_uses_it``.
    """
    chosen: dict[str, dict[str, Any]] = {}
    for view in _views(reports, name):
        for item in view.get("targets") or ():
            key = str(item.get("target"))
            seen = chosen.get(key)
            if seen is None or _rank(item, _TARGET_SEVERITY, "data") > _rank(
                seen, _TARGET_SEVERITY, "data"
            ):
                chosen[key] = item
    return list(chosen.values())


def merged_balancer_health(
    reports: Iterable[Mapping[str, Any]], name: str
) -> dict[str, Any] | None:
    """Upstream ``name``'s own health (``?balancer_health=1``) as the process that sees it
    worst; None when no process has that upstream."""
    worst: Mapping[str, Any] | None = None
    for view in _views(reports, name):
        doc = view.get("health")
        if isinstance(doc, Mapping) and (
            worst is None
            or _rank(doc, _BALANCER_SEVERITY, "details")
            > _rank(worst, _BALANCER_SEVERITY, "details")
        ):
            worst = doc
    return dict(worst) if worst is not None else None


class ProxyState:
    """The config the proxy runs. ``current`` is read once per request; ``swap`` replaces it."""

    def __init__(self, compiled: CompiledConfig | None = None) -> None:
        self.current: CompiledConfig = (
            compiled if compiled is not None else compile_config(EMPTY_CONFIG)
        )
        #: counters for the status endpoints (this process's proxy)
        self.requests_total = 0
        self.connections: Callable[[], int] = lambda: 0

    def swap(self, compiled: CompiledConfig) -> CompiledConfig:
        """Install ``compiled``; returns the previous config."""
        previous, self.current = self.current, compiled
        return previous
