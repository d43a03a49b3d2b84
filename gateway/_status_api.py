"""The Status API (``status_listen``): ``GET /status`` and ``GET /status/ready``.

Available on every role; on a data plane it is the only HTTP surface besides the proxy.
``/status/ready`` answers 200 only once a non-empty configuration is loaded (load balancers
and orchestrators use it), 503 with the reason before.
"""

from __future__ import annotations

from gateway._state import NodeState
from gateway.admin._app import AdminRequest, AdminResponse


class StatusApp:
    def __init__(self, state: NodeState) -> None:
        self.state = state

    async def __call__(self, request: AdminRequest) -> AdminResponse:
        if request.method not in ("GET", "HEAD"):
            return AdminResponse.message(405, "Method not allowed")
        path = request.path.rstrip("/") or "/"
        if path == "/status":
            return AdminResponse.json(200, self.state.status_document())
        if path == "/status/ready":
            ready, reason = self.state.ready
            if ready:
                return AdminResponse.message(200, "ready")
            return AdminResponse.message(503, reason)
        return AdminResponse.message(404, "Not found")
