"""An in-memory link between a control plane core and a data plane core, and a fake clock.

Nothing here touches a socket: messages go from one core's ``send`` straight into the other
core's ``receive_message``, whole or (``chunk=1``) one character / byte at a time as
websocket fragments.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from protocol.sync import (
    Ack,
    ControlPlaneConnection,
    DataPlaneConnection,
    EncodedSnapshot,
    Event,
    Hello,
    Message,
    NeedData,
    SnapshotReceived,
)

CP_ID = "11111111-1111-4111-8111-111111111111"
DP_ID = "22222222-2222-4222-8222-222222222222"
VERSION = "3.10.0"
PLUGINS = {"key-auth": "3.10.0", "rate-limiting": "3.10.0", "cors": "3.10.0"}


def make_config(routes: int = 1, plugins: tuple[str, ...] = ("key-auth",)) -> dict[str, Any]:
    service_id = str(uuid.UUID(int=1))
    return {
        "_format_version": "3.0",
        "services": [{"id": service_id, "name": "svc", "host": "example.com", "port": 80}],
        "routes": [
            {"id": str(uuid.UUID(int=100 + i)), "paths": [f"/r{i}"], "service": {"id": service_id}}
            for i in range(routes)
        ],
        "plugins": [
            {"id": str(uuid.UUID(int=200 + i)), "name": name, "config": {}, "enabled": True}
            for i, name in enumerate(plugins)
        ],
    }


def make_hello(**overrides: Any) -> Hello:
    fields: dict[str, Any] = {
        "node_id": DP_ID,
        "hostname": "dp-1.example",
        "version": VERSION,
        "plugins": PLUGINS,
        "labels": {"region": "eu-west-1"},
    }
    fields.update(overrides)
    return Hello(**fields)


class Link:
    """A CP core and a DP core joined back to back, with a shared fake clock."""

    def __init__(
        self,
        *,
        config: EncodedSnapshot | None = None,
        hello: Hello | None = None,
        chunk: int | None = None,
        auto_ack: bool = True,
        validate: Callable[[SnapshotReceived], Message | None] | None = None,
        **cp_options: Any,
    ) -> None:
        self.now = 1000.0
        self.chunk = chunk
        self.auto_ack = auto_ack
        self.validate = validate
        cp_options.setdefault("plugins", PLUGINS)
        self.cp = ControlPlaneConnection(
            node_id=CP_ID, version=VERSION, now=self.now, config=config, **cp_options
        )
        self.dp = DataPlaneConnection(hello=hello or make_hello(), now=self.now)
        self.cp_events: list[Event] = []
        self.dp_events: list[Event] = []
        self.to_cp: list[Message] = []
        self.to_dp: list[Message] = []
        self.frames_to_dp: list[bytes | str] = []

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def _deliver(
        self, receiver: ControlPlaneConnection | DataPlaneConnection, data: bytes | str
    ) -> None:
        if self.chunk is None or len(data) <= 1:
            receiver.receive_message(data, now=self.now)
            return
        pieces = [data[i : i + self.chunk] for i in range(0, len(data), self.chunk)]
        for index, piece in enumerate(pieces):
            receiver.receive_message(piece, now=self.now, final=index == len(pieces) - 1)

    def _flush(self, sender: ControlPlaneConnection | DataPlaneConnection) -> bool:
        receiver = self.dp if sender is self.cp else self.cp
        log = self.to_dp if sender is self.cp else self.to_cp
        moved = False
        while (message := sender.next_outbound(self.now)) is not None:
            data = sender.send(message)
            log.append(message)
            if sender is self.cp:
                self.frames_to_dp.append(data)
            self._deliver(receiver, data)
            moved = True
        return moved

    def _drain(self) -> bool:
        got = False
        while not isinstance(event := self.cp.next_event(), NeedData):
            self.cp_events.append(event)
            got = True
        while not isinstance(event := self.dp.next_event(), NeedData):
            self.dp_events.append(event)
            got = True
            if isinstance(event, SnapshotReceived):
                answer: Message | None
                if self.validate is not None:
                    answer = self.validate(event)
                elif self.auto_ack:
                    answer = Ack(config_version=event.config_version, config_hash=event.config_hash)
                else:
                    answer = None
                if answer is not None:
                    data = self.dp.send(answer)
                    self.to_cp.append(answer)
                    self._deliver(self.cp, data)
        return got

    def pump(self, rounds: int = 50) -> None:
        """Exchange messages until both sides are quiet."""
        for _ in range(rounds):
            moved = self._flush(self.dp)
            moved |= self._drain()
            moved |= self._flush(self.cp)
            moved |= self._drain()
            if not moved:
                return
        raise AssertionError("the link did not settle")

    def sent_types(self, log: list[Message]) -> list[str]:
        return [m.TYPE for m in log]
