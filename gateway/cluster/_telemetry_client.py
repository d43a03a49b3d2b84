"""The data plane's telemetry link (``cluster_telemetry_endpoint``).

Theory of operation: beside the sync client, a data plane keeps one mutually authenticated
websocket open to its control plane's telemetry listener, with the same checks as the sync
link (``connect_cluster_peer``: the CP certificate is verified against
``cluster_telemetry_server_name``, which defaults to ``cluster_server_name``). What flows
over it (metrics, apply reports) is a later issue; today the data plane sends a small
heartbeat every ``interval`` seconds so the control plane, which drops silent links, keeps
it, and reconnects with the same backoff as the sync client when the link drops. A failing
telemetry link never affects the proxy or the configuration sync.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import attrs
import trio
import trio_websocket

from gateway.cluster._sync_client import Backoff
from gateway.cluster._telemetry import (
    MAX_TELEMETRY_MESSAGE,
    TELEMETRY_PATH,
    TELEMETRY_SUBPROTOCOL,
)
from gateway.cluster._tls import ClusterTLS
from gateway.cluster._transport import DialFailed, dial_control_plane
from gateway.cluster._websocket import (
    LinkClosed,
    LinkRefused,
    absorb_reader_errors,
    connect_websocket,
)
from gateway.settings import Endpoint

log = logging.getLogger("gateway.cluster.telemetry")


@attrs.define(kw_only=True)
class TelemetryLink:
    """What ``/status`` shows of the telemetry link."""

    connected: bool = False
    address: str | None = None
    connected_since: float | None = None
    last_error: str | None = None


class TelemetryClient:
    def __init__(
        self,
        *,
        endpoint: Endpoint,
        tls: Callable[[], ClusterTLS],
        node_id: str,
        server_name: str | None,
        interval: float,
        backoff: Backoff,
        timeout: float = 10.0,
        proxy_server: str | None = None,
        proxy_ssl_verify: bool = True,
    ) -> None:
        self.proxy_server = proxy_server
        self.proxy_ssl_verify = proxy_ssl_verify
        self.endpoint = endpoint
        self.tls = tls
        self.node_id = node_id
        self.server_name = server_name
        self.interval = interval
        self.backoff = backoff
        self.timeout = timeout
        self.link = TelemetryLink(address=str(endpoint))
        self.sent = 0

    async def run(self) -> None:
        while True:
            try:
                if await self._connect_once():
                    self.backoff.reset()
            except Exception as exc:  # the telemetry link must never take the node down
                self.link.last_error = f"unexpected error: {exc!r}"
                log.exception("telemetry link to %s failed unexpectedly", self.endpoint)
            self.link.connected = False
            await trio.sleep(self.backoff.next_delay())

    async def _connect_once(self) -> bool:
        address = str(self.endpoint)
        try:
            peer, server_name = await dial_control_plane(
                self.endpoint,
                self.tls(),
                server_name=self.server_name,
                timeout=self.timeout,
                proxy_server=self.proxy_server,
                proxy_ssl_verify=self.proxy_ssl_verify,
            )
        except DialFailed as exc:
            self.link.last_error = exc.reason
            log.info("telemetry endpoint %s: %s", address, exc.reason)
            return False
        established = False
        try:
            with absorb_reader_errors():
                async with trio.open_nursery() as nursery:
                    try:
                        ws = await connect_websocket(
                            nursery,
                            peer.stream,
                            host=server_name or self.endpoint.host,
                            path=TELEMETRY_PATH,
                            subprotocol=TELEMETRY_SUBPROTOCOL,
                            max_message_size=MAX_TELEMETRY_MESSAGE,
                            timeout=self.timeout,
                        )
                    except LinkRefused as exc:
                        self.link.last_error = f"websocket upgrade with {address} failed: {exc}"
                        nursery.cancel_scope.cancel()
                        return False
                    established = True
                    self.link.connected = True
                    self.link.connected_since = time.time()
                    self.link.last_error = None
                    log.info("telemetry link to %s open", address)
                    try:
                        while True:
                            await ws.send(
                                json.dumps(
                                    {
                                        "type": "heartbeat",
                                        "node_id": self.node_id,
                                        "at": time.time(),
                                    }
                                )
                            )
                            self.sent += 1
                            await trio.sleep(self.interval)
                    except LinkClosed as exc:
                        self.link.last_error = f"telemetry link closed: {exc}"
                        log.info("telemetry link to %s closed: %s", address, exc)
                    nursery.cancel_scope.cancel()
        except* trio_websocket.ConnectionRejected:
            self.link.last_error = f"the control plane {address} refused the telemetry upgrade"
        finally:
            self.link.connected = False
            await trio.aclose_forcefully(peer.stream)
        return established
