"""Unit tests of the cluster shell with memory links, a fake store and virtual time:
the CP session (rows, throttling, timeouts), the publisher (coalescing), the DP backoff and
the nack built from a validation error."""

from __future__ import annotations

import random
from typing import Any, cast

import pytest
import trio
import trio.lowlevel
import trio.testing

from gateway._state import NodeState
from gateway.cluster._publisher import ConfigPublisher
from gateway.cluster._session import DataPlaneSession, PeerInfo, SessionOptions
from gateway.cluster._sync_client import Backoff, nack_for
from gateway.cluster._websocket import LinkClosed
from gateway.declarative import DeclarativeError, parse_declarative
from protocol.sync import (
    Ack,
    DataPlaneConnection,
    Heartbeat,
    Hello,
    NeedData,
    SnapshotReceived,
    Welcome,
)

DP_ID = "33333333-3333-4333-8333-333333333333"
CP_ID = "44444444-4444-4444-8444-444444444444"


class FakeStore:
    """The part of ``Store`` the publisher and sessions use."""

    def __init__(self) -> None:
        self.version = 0
        self.entities: dict[str, list[dict[str, Any]]] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self.row_writes = 0
        self.exports = 0
        self.fail_exports = False
        self._changed = trio.Event()

    def bump(self, name: str) -> None:
        self.version += 1
        self.entities.setdefault("services", []).append(
            {"id": f"00000000-0000-4000-8000-{self.version:012d}", "name": name, "host": "h"}
        )
        self._changed.set()
        self._changed = trio.Event()

    async def export(self) -> tuple[int, dict[str, list[dict[str, Any]]]]:
        await trio.lowlevel.checkpoint()
        self.exports += 1
        if self.fail_exports:
            raise OSError("database is down")
        return self.version, {k: list(v) for k, v in self.entities.items()}

    async def _watch(self, after: int) -> Any:
        while True:
            while self.version <= after:
                await self._changed.wait()
            after = self.version
            yield after

    def watch(self, after: int) -> Any:
        return self._watch(after)

    async def upsert_data_plane(self, row: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.row_writes += 1
        self.rows[row["id"]] = dict(row)

    async def get_data_plane(self, id: str) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        return self.rows.get(id)


class MemoryLink:
    """The CP session's link; the test plays the data plane on the other end."""

    def __init__(self) -> None:
        self.to_cp_send, self.to_cp = trio.open_memory_channel[bytes | str](100)
        self.to_dp, self.to_dp_receive = trio.open_memory_channel[bytes | str](100)
        self.closed: tuple[int, str] | None = None

    async def receive(self) -> bytes | str:
        try:
            return await self.to_cp.receive()
        except trio.EndOfChannel:
            raise LinkClosed(1000, "peer closed") from None

    async def send(self, payload: bytes | str) -> None:
        await self.to_dp.send(payload)

    async def close(self, code: int = 1000, reason: str = "", *, wait: float = 2.0) -> None:
        if self.closed is None:
            self.closed = (code, reason)


class ScriptedDP:
    """A DataPlaneConnection core on the test's side of a MemoryLink."""

    def __init__(self, link: MemoryLink) -> None:
        self.link = link
        self.core = DataPlaneConnection(
            hello=Hello(node_id=DP_ID, hostname="dp", version="0.1.0"), now=trio.current_time()
        )

    async def flush(self) -> None:
        while (message := self.core.next_outbound(trio.current_time())) is not None:
            await self.link.to_cp_send.send(self.core.send(message))

    async def events(self) -> list[Any]:
        data = await self.link.to_dp_receive.receive()
        self.core.receive_message(data, now=trio.current_time())
        found = []
        while not isinstance(event := self.core.next_event(), NeedData):
            found.append(event)
        return found

    async def until(self, kind: type) -> Any:
        with trio.fail_after(60):  # virtual time: never hang the suite
            while True:
                for event in await self.events():
                    if isinstance(event, kind):
                        return event


def options(**overrides: Any) -> SessionOptions:
    values: dict[str, Any] = {
        "node_id": CP_ID,
        "version": "0.1.0",
        "plugins": {},
        "max_payload": 1 << 20,
        "heartbeat_interval": 1.0,
        "heartbeat_timeout": 3.0,
        "hello_timeout": 2.0,
        "row_write_interval": 5.0,
    }
    values.update(overrides)
    return SessionOptions(**values)


async def start_publisher(
    nursery: trio.Nursery, store: FakeStore, coalesce: float = 0.5
) -> ConfigPublisher:
    publisher = ConfigPublisher(
        cast(Any, store),
        NodeState(role="control_plane", node_id=CP_ID),
        coalesce=coalesce,
        encode_in_thread=False,  # no worker threads under the virtual clock
    )
    await nursery.start(publisher.run)
    return publisher


def session_for(
    link: MemoryLink, publisher: ConfigPublisher, store: FakeStore, **opts: Any
) -> DataPlaneSession:
    return DataPlaneSession(
        link,
        peer=PeerInfo(ip="127.0.0.1", address="127.0.0.1:5000", cert_expiry=2e9),
        publisher=publisher,
        store=cast(Any, store),
        options=options(**opts),
    )


async def test_session_snapshot_ack_row_and_new_versions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FakeStore()
    link = MemoryLink()
    async with trio.open_nursery() as nursery:
        publisher = await start_publisher(nursery, store)
        session = session_for(link, publisher, store)
        nursery.start_soon(session.run)
        dp = ScriptedDP(link)
        await dp.flush()  # hello
        welcome = await dp.until(Welcome)
        assert welcome.sync_status.value == "normal"
        snapshot = await dp.until(SnapshotReceived)
        assert snapshot.config_version == 1
        await dp.link.to_cp_send.send(
            dp.core.send(Ack(config_version=1, config_hash=snapshot.config_hash))
        )
        await trio.testing.wait_all_tasks_blocked()
        row = store.rows[DP_ID]
        assert (row["config_version"], row["connected"], row["cp_node_id"]) == (1, True, CP_ID)
        assert row["cert_details"] == {"expiry_timestamp": 2000000000}

        store.bump("new")  # a new version reaches the session without any DP message
        snapshot = await dp.until(SnapshotReceived)
        assert snapshot.config_version == 2
        await dp.link.to_cp_send.send(
            dp.core.send(Ack(config_version=2, config_hash=snapshot.config_hash))
        )
        await dp.link.to_cp_send.aclose()  # the DP goes away
        await trio.testing.wait_all_tasks_blocked()
        row = store.rows[DP_ID]
        assert row["connected"] is False
        assert row["status"] == "disconnected"
        assert row["config_version"] == 2
        nursery.cancel_scope.cancel()


async def test_heartbeat_row_writes_are_throttled(autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    link = MemoryLink()
    async with trio.open_nursery() as nursery:
        publisher = await start_publisher(nursery, store)
        nursery.start_soon(session_for(link, publisher, store, heartbeat_timeout=30.0).run)
        dp = ScriptedDP(link)
        await dp.flush()
        snapshot = await dp.until(SnapshotReceived)
        await link.to_cp_send.send(
            dp.core.send(Ack(config_version=1, config_hash=snapshot.config_hash))
        )
        await trio.testing.wait_all_tasks_blocked()
        before = store.row_writes
        for _ in range(100):  # 10 s of heartbeats every 0.1 s
            await trio.sleep(0.1)
            heartbeat = Heartbeat(config_version=1, config_hash=snapshot.config_hash)
            await link.to_cp_send.send(dp.core.send(heartbeat))
        await trio.testing.wait_all_tasks_blocked()
        assert 1 <= store.row_writes - before <= 3  # row_write_interval = 5 s
        nursery.cancel_scope.cancel()


async def test_silent_peer_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    link = MemoryLink()
    async with trio.open_nursery() as nursery:
        publisher = await start_publisher(nursery, store)
        session = session_for(link, publisher, store)
        with trio.fail_after(10):
            nursery.start_soon(session.run)
            dp = ScriptedDP(link)
            await dp.flush()
            while link.closed is None:
                await trio.sleep(0.5)
        assert link.closed[0] == 4408
        await trio.testing.wait_all_tasks_blocked()
        assert "peer_timeout" in store.rows[DP_ID]["last_error"]
        assert store.rows[DP_ID]["connected"] is False
        nursery.cancel_scope.cancel()


async def test_no_hello_is_closed_without_a_row(autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    link = MemoryLink()
    async with trio.open_nursery() as nursery:
        publisher = await start_publisher(nursery, store)
        with trio.fail_after(60):
            await session_for(link, publisher, store).run()
        assert link.closed is not None
        assert link.closed[0] == 4408
        assert store.rows == {}
        nursery.cancel_scope.cancel()


async def test_publisher_pushes_first_change_at_once_then_coalesces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FakeStore()
    async with trio.open_nursery() as nursery:
        publisher = await start_publisher(nursery, store, coalesce=1.0)
        assert publisher.current is not None
        assert publisher.current.config_version == 1
        start = trio.current_time()
        store.bump("a")
        with trio.fail_after(10):
            first = await publisher.wait_changed(publisher.current)
        assert first is not None
        assert first.config_version == 2
        assert trio.current_time() - start < 0.5  # the watcher's tick, no window
        for name in "bcd":  # a burst inside the window
            store.bump(name)
            await trio.sleep(0.1)
        with trio.fail_after(10):
            second = await publisher.wait_changed(first)
        assert second is not None
        assert second.config_version == 5
        assert trio.current_time() - start >= 1.0
        assert publisher.published == 3
        nursery.cancel_scope.cancel()


async def test_publisher_keeps_last_version_when_export_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FakeStore()
    async with trio.open_nursery() as nursery:
        publisher = await start_publisher(nursery, store, coalesce=0)
        current = publisher.current
        store.fail_exports = True
        store.bump("x")
        await trio.sleep(3)
        assert publisher.current is current
        assert store.exports >= 3  # retried about every second
        store.fail_exports = False
        with trio.fail_after(10):
            recovered = await publisher.wait_changed(current)
        assert recovered is not None
        assert recovered.config_version == 2
        nursery.cancel_scope.cancel()


def test_backoff_is_exponential_with_full_jitter_within_bounds() -> None:
    backoff = Backoff(0.5, 8.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert delays[0] == 0.5  # the first ceiling is the minimum
    assert max(delays[6:]) > 2.0  # the ceiling grew
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_nack_lists_entity_and_field_errors() -> None:
    config = parse_declarative(
        {
            "_format_version": "3.0",
            "services": [{"name": "s", "url": "http://x", "routes": [{"paths": ["/a"]}]}],
        }
    )
    config["routes"][0]["paths"] = ["no-slash"]
    with pytest.raises(DeclarativeError) as caught:
        parse_declarative(config)
    snapshot = SnapshotReceived(config_version=3, config_hash="a" * 32, config=config, size=1)
    nack = nack_for(snapshot, caught.value)
    assert nack.code.value == "invalid_config"
    assert nack.config_version == 3
    [error] = nack.errors
    assert error.entity_type == "route"
    assert error.entity_id == config["routes"][0]["id"]
    assert error.field is not None
    assert error.field.startswith("paths")
    failed = nack_for(snapshot, RuntimeError("disk full"))
    assert failed.code.value == "apply_failed"
    assert "disk full" in failed.message
