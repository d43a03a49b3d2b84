"""What a running node knows about itself, for the status endpoints and the Admin API.

One ``NodeState`` per node process; the tasks that change the facts (config apply, the
cluster link) update it, the status endpoints read it. Plain attributes: Trio runs one task
at a time, so no locking is needed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs


@attrs.define(kw_only=True)
class ControlPlaneLink:
    """The data plane's view of its link to a control plane."""

    connected: bool = False
    address: str | None = None
    connected_since: float | None = None
    disconnected_at: float | None = None
    last_sync_at: float | None = None
    last_error: str | None = None
    sync_status: str | None = None


@attrs.define(kw_only=True)
class NodeState:
    role: str
    node_id: str
    started_at: float = attrs.field(factory=time.time)
    config_version: int | None = None
    config_hash: str | None = None
    config_source: str = "empty"  # empty | cache | declarative | control_plane | database
    config_loaded_at: float | None = None
    config_entities: int = 0
    last_apply_error: str | None = None
    cluster_cert_expiry: float | None = None
    cluster_cert_expiring_soon: bool = False
    control_plane: ControlPlaneLink = attrs.field(factory=ControlPlaneLink)
    #: where the proxy's counters come from (None: this node does not proxy in-process)
    proxy_stats: Callable[[], dict[str, Any]] | None = None
    #: per-worker upstream health (set by the proxy runner; None: this node does not proxy)
    upstream_health: Callable[[], list[dict[str, Any]]] | None = None
    #: ``await mark_target(upstream, target, healthy)``: the Admin API's manual mark, applied
    #: wherever the proxy runs (every worker process); False when the upstream has no such
    #: target or no health checks (set by the proxy runner; None: this node does not proxy)
    mark_target: Callable[[str, str, bool], Awaitable[bool]] | None = None
    #: a data plane's telemetry link (``TelemetryLink``, an attrs class), when it has one
    telemetry: Any = None

    @property
    def ready(self) -> tuple[bool, str]:
        """``(ready, reason)``: ready once a non-empty configuration is loaded."""
        if self.config_version is None and self.config_entities == 0:
            return False, "no configuration loaded yet"
        if self.config_entities == 0:
            return False, "the configuration in force is empty"
        return True, "ready"

    def config_applied(
        self, *, version: int | None, config_hash: str, source: str, entities: int
    ) -> None:
        self.config_version = version
        self.config_hash = config_hash
        self.config_source = source
        self.config_entities = entities
        self.config_loaded_at = time.time()
        self.last_apply_error = None

    def status_document(self) -> dict[str, Any]:
        ready, reason = self.ready
        doc: dict[str, Any] = {
            "role": self.role,
            "node_id": self.node_id,
            "uptime": round(time.time() - self.started_at, 3),
            "ready": ready,
            "ready_reason": reason,
            "configuration": {
                "version": self.config_version,
                "hash": self.config_hash,
                "source": self.config_source,
                "loaded_at": self.config_loaded_at,
                "entities": self.config_entities,
                "last_error": self.last_apply_error,
            },
        }
        if self.proxy_stats is not None:
            doc["server"] = self.proxy_stats()
        if self.role == "data_plane":
            doc["control_plane"] = attrs.asdict(self.control_plane)
        if self.telemetry is not None:
            doc["telemetry"] = attrs.asdict(self.telemetry)
        certificate = self.cluster_certificate()
        if certificate is not None:
            doc["cluster_certificate"] = certificate
        return doc

    def cluster_certificate(self) -> dict[str, Any] | None:
        """The node's own cluster certificate expiry (hybrid roles), for the status views."""
        if self.cluster_cert_expiry is None:
            return None
        return {
            "expiry_timestamp": int(self.cluster_cert_expiry),
            "expiring_soon": self.cluster_cert_expiring_soon,
        }
