"""Many lightweight data planes in one process, for benchmarks and load tests.

Each simulated data plane runs the real sync client (mutual TLS, websocket, hello,
snapshot decoding, whole-config validation, compile, one swap, ack, heartbeats) against a
real control plane, with everything a data plane does except the proxy listeners and the
disk cache. It records when each config version was applied and how many bytes it received.

Usage (standalone)::

    python bench/dp_simulator.py --control-plane 127.0.0.1:8005 --count 50 \\
        --cert cluster.crt --key cluster.key [--mtls pki --ca root.crt --server-name cp]

``bench/propagation.py`` imports :func:`run_simulators` directly.
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from gateway._config_apply import ConfigApplier, PreparedConfig, count_entities
from gateway._state import NodeState
from gateway._version import __version__
from gateway.cluster._sync_client import SyncClient, SyncClientOptions
from gateway.cluster._tls import ClusterTLS
from gateway.plugins import plugin_versions
from gateway.proxy import ProxyState
from gateway.settings import Endpoint

__all__ = ["LightApplier", "SimulatedDataPlane", "run_simulators"]


class LightApplier(ConfigApplier):
    """Skips validation and compilation (``--light``): measures the sync path alone.

    Everything before it still runs: TLS, websocket, bounded gunzip, JSON decoding and the
    hash check of the snapshot, the ack.
    """

    async def prepare(
        self, config: Mapping[str, Any], *, version: int, validate: bool
    ) -> PreparedConfig:
        return PreparedConfig(
            runtime=dict(config),
            hash="0" * 32,
            version=version,
            compiled=self.proxy.current,
            entities=count_entities(config),
        )


@attrs.define
class SimulatedDataPlane:
    """One simulated DP: its sync client and what it observed."""

    index: int
    client: SyncClient
    state: NodeState
    #: config version -> time.monotonic() when it was swapped in.
    applied: dict[int, float] = attrs.field(factory=dict)
    #: config version -> time.monotonic() when its snapshot arrived (decoded, not applied).
    received: dict[int, float] = attrs.field(factory=dict)

    @property
    def version(self) -> int:
        return self.state.config_version or 0

    @property
    def bytes_received(self) -> int:
        return self.client.bytes_received

    async def on_applied(self, version: int, config_hash: str) -> None:
        self.applied[version] = time.monotonic()

    def on_received(self, version: int) -> None:
        self.received[version] = time.monotonic()


def make_simulator(
    index: int,
    endpoints: Sequence[Endpoint],
    tls: ClusterTLS,
    *,
    server_name: str | None,
    light: bool = False,
) -> SimulatedDataPlane:
    state = NodeState(role="data_plane", node_id=str(uuid.uuid4()))
    applier = (LightApplier if light else ConfigApplier)(ProxyState(), state)
    options = SyncClientOptions(
        node_id=state.node_id,
        hostname=f"sim-dp-{index}",
        version=__version__,
        plugins=plugin_versions(),
        labels={"simulated": "true"},
        endpoints=tuple(endpoints),
        max_payload=16 * 1024 * 1024,
        server_name=server_name,
        backoff_min=0.2,
        backoff_max=2.0,
    )
    client = SyncClient(options=options, tls=tls, state=state, applier=applier, cache=None)
    simulator = SimulatedDataPlane(index=index, client=client, state=state)
    client.on_applied = simulator.on_applied
    client.on_received = simulator.on_received
    return simulator


async def run_simulators(
    count: int,
    endpoints: Sequence[Endpoint],
    tls: ClusterTLS,
    *,
    server_name: str | None = None,
    light: bool = False,
    task_status: trio.TaskStatus[list[SimulatedDataPlane]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run *count* simulated data planes until cancelled; report them through task_status.

    ``light``: skip validation and compilation (see :class:`LightApplier`).
    """
    simulators = [
        make_simulator(i, endpoints, tls, server_name=server_name, light=light)
        for i in range(count)
    ]
    async with trio.open_nursery() as nursery:
        for simulator in simulators:
            nursery.start_soon(simulator.client.run)
        task_status.started(simulators)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--control-plane", required=True, help="host:port[,host:port...]")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--mtls", choices=("shared", "pki"), default="shared")
    parser.add_argument("--ca")
    parser.add_argument("--server-name")
    parser.add_argument("--report-every", type=float, default=5.0)
    parser.add_argument("--light", action="store_true", help="skip validation and compile")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    endpoints = []
    for item in args.control_plane.split(","):
        host, _, port = item.rpartition(":")
        endpoints.append(Endpoint(host=host, port=int(port)))
    tls = ClusterTLS.load(
        mode=args.mtls,
        cluster_cert=args.cert,
        cluster_cert_key=args.key,
        cluster_ca_cert=args.ca,
        server_name=args.server_name,
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            simulators: list[SimulatedDataPlane] = await nursery.start(
                lambda task_status: run_simulators(
                    args.count,
                    endpoints,
                    tls,
                    server_name=args.server_name,
                    light=args.light,
                    task_status=task_status,
                )
            )
            while True:
                await trio.sleep(args.report_every)
                versions: dict[Any, int] = {}
                for simulator in simulators:
                    versions[simulator.version] = versions.get(simulator.version, 0) + 1
                connected = sum(s.state.control_plane.connected for s in simulators)
                print(f"connected {connected}/{len(simulators)}; versions {versions}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
