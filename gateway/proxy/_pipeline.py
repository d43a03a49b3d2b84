"""Which plugin instances run for a request, in which order (Kong's scoping and precedence).

Theory of operation: ``PluginTable`` is built once per config version. For each plugin
name it keeps the configured instances by scope key ``(route_id, service_id, consumer_id)``
(``None`` = not scoped on that entity). For a request, plugin *names* are visited by
priority (higher first, ties by name) and each name resolves to at most one instance,
the most specific one, in Kong's order:

    route+service+consumer > route+consumer > service+consumer > route+service
    > consumer > route > service > global

As in Kong (``load_configuration_through_combos``), the access phase resolves each name at
the moment it is reached, with the consumer authenticated *so far*: authentication plugins
have high priorities, so by the time a lower-priority plugin is reached, a consumer-scoped
instance can apply. The instances that ran in access are the ones that run in
``header_filter``, ``body_filter`` and ``log``. The rewrite phase only runs global
instances (nothing is routed yet), and so does the certificate phase (the TLS handshake of
an ``ssl`` listener, before any request: Kong's ``execute_global_plugins_iterator``), for
the global instances whose ``protocols`` include a TLS one.

Plans that cannot depend on a consumer (no consumer-scoped instance of any name) are
cached per (route, service), so the common request does one dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway._errors import ConfigError
from gateway.plugins import Plugin, get_plugin, overrides

__all__ = ["PHASES", "PluginPlan", "PluginTable"]

PHASES = ("certificate", "rewrite", "access", "header_filter", "body_filter", "log")
ScopeKey = tuple[str | None, str | None, str | None]
# the protocols an ``ssl`` listener serves. NOTE: a global plugin runs its certificate phase
# only when its ``protocols`` include one of them; Kong runs it for any protocol of the
# subsystem, so an http-only instance would see https handshakes
# (tests/gateway/proxy/test_certificate_phase.py::test_protocols_without_tls_skip_the_phase)
_TLS_PROTOCOLS = frozenset(("https", "grpcs", "wss"))


def _ref(value: object) -> str | None:
    if isinstance(value, Mapping):
        ref = value.get("id")
        return ref if isinstance(ref, str) else None
    return value if isinstance(value, str) else None


class PluginPlan:
    """The instances resolved for one request (or one route/service pair)."""

    __slots__ = ("access", "body_filter", "header_filter", "instances", "log")

    def __init__(self, instances: Sequence[Plugin]) -> None:
        self.instances = tuple(instances)
        self.access = tuple(p for p in instances if overrides(type(p), "access"))
        self.header_filter = tuple(p for p in instances if overrides(type(p), "header_filter"))
        self.body_filter = tuple(p for p in instances if overrides(type(p), "body_filter"))
        self.log = tuple(p for p in instances if overrides(type(p), "log"))


EMPTY_PLAN = PluginPlan(())


class PluginTable:
    """Every configured plugin instance of one config version."""

    def __init__(self, plugins: Sequence[Mapping[str, Any]]) -> None:
        by_name: dict[str, dict[ScopeKey, Plugin]] = {}
        protocols: dict[int, frozenset[str]] = {}
        errors: list[str] = []
        for entity in plugins:
            if entity.get("enabled") is False:
                continue
            name = entity.get("name")
            cls = get_plugin(name) if isinstance(name, str) else None
            if cls is None:
                errors.append(f"plugin {name!r} is not available on this node")
                continue
            try:
                # the entity's id: state a plugin keeps across config versions (the
                # rate-limiting counters) is keyed by it, so a config swap does not reset it
                plugin_id = entity.get("id")
                instance = cls(
                    dict(entity.get("config") or {}),
                    plugin_id=plugin_id if isinstance(plugin_id, str) else "",
                )
            except Exception as exc:
                errors.append(f"plugin {name!r} ({entity.get('id')}): {exc}")
                continue
            key = (
                _ref(entity.get("route")),
                _ref(entity.get("service")),
                _ref(entity.get("consumer")),
            )
            by_name.setdefault(cls.name, {})[key] = instance
            protos = entity.get("protocols")
            if protos:
                protocols[id(instance)] = frozenset(protos)
        if errors:
            raise ConfigError("; ".join(errors), key="plugins")
        self._by_name = by_name
        self._protocols = protocols
        self._order = sorted(
            by_name, key=lambda n: (-type(next(iter(by_name[n].values()))).priority, n)
        )
        self._consumer_names = frozenset(
            n for n, scopes in by_name.items() if any(k[2] is not None for k in scopes)
        )
        self.rewrite: tuple[Plugin, ...] = tuple(
            inst
            for n in self._order
            if (inst := by_name[n].get((None, None, None))) is not None
            and overrides(type(inst), "rewrite")
        )
        self.certificate: tuple[Plugin, ...] = tuple(
            inst
            for n in self._order
            if (inst := by_name[n].get((None, None, None))) is not None
            and overrides(type(inst), "certificate")
            and not _TLS_PROTOCOLS.isdisjoint(protocols.get(id(inst), _TLS_PROTOCOLS))
        )
        self._cache: dict[tuple[str | None, str | None], PluginPlan] = {}
        self.empty = not by_name

    @property
    def consumer_dependent(self) -> bool:
        return bool(self._consumer_names)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())

    def instances(self) -> list[Plugin]:
        return [p for scopes in self._by_name.values() for p in scopes.values()]

    def applies(self, plugin: Plugin, scheme: str) -> bool:
        protos = self._protocols.get(id(plugin))
        if protos is None:
            return True
        if scheme == "ws":
            scheme = "http"
        elif scheme == "wss":
            scheme = "https"
        return scheme in protos

    def order(self) -> list[str]:
        return list(self._order)

    def resolve(
        self, name: str, route_id: str | None, service_id: str | None, consumer_id: str | None
    ) -> Plugin | None:
        scopes = self._by_name.get(name)
        if scopes is None:
            return None
        get = scopes.get
        if consumer_id is not None:
            if route_id is not None and service_id is not None:
                inst = get((route_id, service_id, consumer_id))
                if inst is not None:
                    return inst
            if route_id is not None:
                inst = get((route_id, None, consumer_id))
                if inst is not None:
                    return inst
            if service_id is not None:
                inst = get((None, service_id, consumer_id))
                if inst is not None:
                    return inst
        if route_id is not None and service_id is not None:
            inst = get((route_id, service_id, None))
            if inst is not None:
                return inst
        if consumer_id is not None:
            inst = get((None, None, consumer_id))
            if inst is not None:
                return inst
        if route_id is not None:
            inst = get((route_id, None, None))
            if inst is not None:
                return inst
        if service_id is not None:
            inst = get((None, service_id, None))
            if inst is not None:
                return inst
        return get((None, None, None))

    def static_plan(self, route_id: str | None, service_id: str | None) -> PluginPlan | None:
        """The plan when no consumer can change it, else ``None`` (resolve per request)."""
        if self._consumer_names:
            return None
        key = (route_id, service_id)
        plan = self._cache.get(key)
        if plan is None:
            found = [
                inst
                for n in self._order
                if (inst := self.resolve(n, route_id, service_id, None)) is not None
            ]
            plan = PluginPlan(found) if found else EMPTY_PLAN
            self._cache[key] = plan
        return plan
