"""Closing a cluster websocket: the closing handshake, and a close while cancelled."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from gateway.cluster._websocket import (
    CANCELLED_CLOSE_WAIT,
    ClusterWebSocket,
    LinkClosed,
    accept_websocket,
    connect_websocket,
)

PATH = "/cluster/test"
SUBPROTOCOL = "gateway.test.v1"


class Peer:
    """The server end of the link; ``stop()`` ends its tasks (its reader among them)."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.ws: ClusterWebSocket | None = None
        self.ready = trio.Event()

    async def serve(self, stream: trio.abc.Stream) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                self.ws = await accept_websocket(
                    nursery,
                    stream,
                    path=PATH,
                    subprotocol=SUBPROTOCOL,
                    max_message_size=1 << 16,
                    timeout=10,
                    peer="test",
                )
                self.ready.set()
                await trio.sleep_forever()

    async def stop(self) -> None:
        self.scope.cancel()
        await trio.testing.wait_all_tasks_blocked()


@contextlib.asynccontextmanager
async def link() -> AsyncIterator[tuple[ClusterWebSocket, Peer]]:
    left, right = trio.testing.memory_stream_pair()
    peer = Peer()
    async with trio.open_nursery() as outer:
        outer.start_soon(peer.serve, right)
        async with trio.open_nursery() as client_nursery:
            client = await connect_websocket(
                client_nursery,
                left,
                host="test",
                path=PATH,
                subprotocol=SUBPROTOCOL,
                max_message_size=1 << 16,
                timeout=10,
            )
            await peer.ready.wait()
            yield client, peer
            client_nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()


async def test_close_completes_the_handshake_with_a_live_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with link() as (client, peer):
        started = trio.current_time()
        await client.close(1000, "bye", wait=5)
        # the peer's reader answered the close frame: no waiting for the deadline
        assert trio.current_time() - started < 1
        assert peer.ws is not None
        with pytest.raises(LinkClosed) as closed:
            await peer.ws.receive()  # nothing was sent: the close is the first thing read
        assert closed.value.code == 1000


async def test_close_without_cancellation_waits_for_a_silent_peer_up_to_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with link() as (client, peer):
        await peer.stop()  # its reader is gone: the close frame is never answered
        started = trio.current_time()
        await client.close(1000, "bye", wait=2)
        assert 2 <= trio.current_time() - started < 2.5


async def test_close_while_cancelled_does_not_wait_for_an_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A node that stops cancels its links and their reader tasks together, and its peer may
    # be stopping too: the answer can no longer be read, and waiting the whole closing
    # deadline (2 s a link) only held every shutdown (the quickstart's Ctrl-C took 3.3 s).
    async with link() as (client, peer):
        await peer.stop()
        started = trio.current_time()
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.close(1001, "stopping", wait=2)
        assert trio.current_time() - started <= CANCELLED_CLOSE_WAIT + 0.01
