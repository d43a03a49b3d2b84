"""The Status API (``status_listen``): ``GET /status``, ``GET /status/ready``,
``GET /status/upstreams[/{name}]`` and, on hybrid nodes, ``POST /status/certificates/reload``.

Available on every role; on a data plane it is the only HTTP surface besides the proxy.
``/status/ready`` answers 200 only once a non-empty configuration is loaded (load balancers
and orchestrators use it), 503 with the reason before.

``GET /status/upstreams`` shows upstream and target health as every proxy process sees it
(Kong offers no such view on data planes); with worker processes, each worker reports its
own view every 2 s.

``POST /status/certificates/reload`` re-reads the node's cluster certificate files (the
same as SIGHUP; it takes no input, only the configured files are read) and answers
``{"reloaded", "generation", "error", "expiry_timestamp", "reconnecting"}``. On a data
plane, ``?reconnect=true`` also re-establishes the link to the control plane when it was
made with older material than the one now in use, so that the new certificate is presented
at once (the proxy keeps serving meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway._state import NodeState
from gateway.admin._app import AdminRequest, AdminResponse


class StatusApp:
    """``reload_certificates``: ``ClusterMaterial.reload_report`` of a hybrid node;
    ``reconnect``: the data plane's ``SyncClient.reconnect_if_stale``."""

    def __init__(
        self,
        state: NodeState,
        *,
        reload_certificates: Callable[[], dict[str, Any]] | None = None,
        reconnect: Callable[[str], bool] | None = None,
    ) -> None:
        self.state = state
        self.reload_certificates = reload_certificates
        self.reconnect = reconnect

    async def __call__(self, request: AdminRequest) -> AdminResponse:
        path = request.path.rstrip("/") or "/"
        if path == "/status/certificates/reload":
            if request.method != "POST":
                return AdminResponse.message(405, "Method not allowed")
            return self._reload(request)
        if request.method not in ("GET", "HEAD"):
            return AdminResponse.message(405, "Method not allowed")
        if path == "/status":
            return AdminResponse.json(200, self.state.status_document())
        if path == "/status/upstreams" or path.startswith("/status/upstreams/"):
            return self._upstreams(path.removeprefix("/status/upstreams").strip("/"))
        if path == "/status/ready":
            ready, reason = self.state.ready
            if ready:
                return AdminResponse.message(200, "ready")
            return AdminResponse.message(503, reason)
        return AdminResponse.message(404, "Not found")

    def _upstreams(self, name: str) -> AdminResponse:
        """Upstream and target health as each proxy process sees it (health checks run in
        every worker process; one entry per worker)."""
        report = self.state.upstream_health
        if report is None:
            return AdminResponse.message(
                400, "this node does not proxy (no upstream health to report)"
            )
        workers = report()
        if name:
            workers = [
                {**w, "upstreams": [u for u in w["upstreams"] if u.get("name") == name]}
                for w in workers
            ]
            if not any(w["upstreams"] for w in workers):
                return AdminResponse.message(404, f"no upstream named '{name}' is configured")
        return AdminResponse.json(200, {"data": workers})

    def _reload(self, request: AdminRequest) -> AdminResponse:
        if self.reload_certificates is None:
            return AdminResponse.message(
                400, "this node has no cluster certificate (role = traditional)"
            )
        body = self.reload_certificates()
        wanted = request.query_value("reconnect") in ("1", "true")
        body["reconnecting"] = False
        if wanted and self.reconnect is not None:
            # Whether this call or an earlier reload (SIGHUP, file watch) changed the material.
            body["reconnecting"] = self.reconnect("reconnecting with the reloaded certificate")
        return AdminResponse.json(200, body)
