"""The telemetry listener of a control plane (``cluster_telemetry_listen``).

Same gate as the sync listener: mutual TLS (:func:`accept_cluster_peer`) before any
websocket byte, then a websocket upgrade on :data:`TELEMETRY_PATH` with
:data:`TELEMETRY_SUBPROTOCOL`. What data planes report over it is a later issue; for now the
control plane holds the connection open, answers pings (trio-websocket does) and drops
received messages, and closes links silent for longer than ``cluster_heartbeat_timeout``.
"""

from __future__ import annotations

import logging

import trio

from gateway.cluster._websocket import (
    ClusterWebSocket,
    LinkClosed,
    absorb_reader_errors,
    accept_websocket,
)

__all__ = ["TELEMETRY_PATH", "TELEMETRY_SUBPROTOCOL", "serve_telemetry_link"]

log = logging.getLogger("gateway.cluster.telemetry")

TELEMETRY_PATH = "/cluster/v1/telemetry"
TELEMETRY_SUBPROTOCOL = "gateway.telemetry.v1"
#: Largest telemetry message accepted (what flows here is defined later).
MAX_TELEMETRY_MESSAGE = 1024 * 1024


async def serve_telemetry_link(
    stream: trio.abc.Stream, *, peer: str, timeout: float, silence_timeout: float
) -> None:
    """Hold one authenticated telemetry link open until the peer leaves or goes silent."""
    with absorb_reader_errors():
        async with trio.open_nursery() as nursery:
            ws = await accept_websocket(
                nursery,
                stream,
                path=TELEMETRY_PATH,
                subprotocol=TELEMETRY_SUBPROTOCOL,
                max_message_size=MAX_TELEMETRY_MESSAGE,
                timeout=timeout,
                peer=peer,
            )
            if ws is not None:
                log.info("telemetry link from %s open", peer)
                await _hold(ws, silence_timeout)
                log.info("telemetry link from %s closed", peer)
            nursery.cancel_scope.cancel()


async def _hold(ws: ClusterWebSocket, silence_timeout: float) -> None:
    try:
        while True:
            with trio.move_on_after(silence_timeout) as scope:
                await ws.receive()
            if scope.cancelled_caught:
                await ws.close(4408, "peer_timeout: telemetry link silent")
                return
    except LinkClosed:
        pass
    finally:
        await ws.close(1001, "control plane stopping")
