"""Config propagation: Admin API write -> every data plane running it, for 1, 10, 100 DPs.

Usage::

    python bench/propagation.py [--sizes 1,10,100] [--writes 20] [--routes 200]

A real control plane runs as a subprocess (``python -m gateway``, SQLite, ports 0) with a
seeded configuration of ``--routes`` routes. Simulated data planes (``bench/dp_simulator.py``:
the real sync client, validation, compile and swap, no proxy listeners) run in this process.
For each size, the bench waits until every DP runs the current version, then makes
``--writes`` Admin API writes (one new route each), each after the previous one reached every
DP and the coalescing window passed (so every write is a "first change after idle", pushed at
once). A sample is the time from sending the write to one DP having swapped the new version
in. It prints p50/p99 over all (write, DP) samples, their ratio to the 1-DP run measured in
the same run (the reference), the compressed bytes each DP received per push, and the
control plane's RSS growth per connected DP.

Note: all simulated DPs share this process's CPU (GIL), so with 100 DPs the p99 mostly
measures 100 validations + compiles queued behind each other on one core, not the control
plane; real DPs each have their own CPU.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dp_simulator import SimulatedDataPlane, run_simulators

import certs
from gateway.cluster._tls import ClusterTLS
from gateway.settings import Endpoint

COALESCE = 0.1


def seed_config(routes: int) -> dict[str, Any]:
    services = []
    for i in range(max(1, routes // 2)):
        services.append(
            {
                "name": f"svc-{i}",
                "url": f"http://127.0.0.1:{10000 + i}/base",
                "routes": [
                    {"name": f"route-{i}-{j}", "paths": [f"/svc-{i}/r{j}"], "methods": ["GET"]}
                    for j in range(2)
                ],
            }
        )
    return {
        "_format_version": "3.0",
        "services": services,
        "plugins": [{"name": "cors"}, {"name": "correlation-id"}],
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def admin_request(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"content-type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:200]!r}")
        return json.loads(payload) if payload else None
    finally:
        conn.close()


class ControlPlaneProcess:
    def __init__(self, workdir: Path, cert: Path, key: Path, database: Path) -> None:
        self.prefix = workdir / "cp"
        self.args = [
            sys.executable, "-m", "gateway", "start", "--prefix", str(self.prefix),
            "--set", "role=control_plane",
            "--set", "admin_listen=127.0.0.1:0",
            "--set", "cluster_listen=127.0.0.1:0",
            "--set", "cluster_telemetry_listen=off",
            "--set", f"cluster_cert={cert}",
            "--set", f"cluster_cert_key={key}",
            "--set", f"sqlite_path={database}",
            "--set", f"cluster_sync_coalesce={COALESCE}",
            "--set", "log_level=warn",
        ]  # fmt: skip
        self.log = (workdir / "cp.log").open("wb")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                doc = json.loads((self.prefix / "listeners.json").read_text())
                if doc.get("pid") == self.proc.pid:
                    break
            except (FileNotFoundError, ValueError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the control plane did not start; see cp.log")
            time.sleep(0.05)
        self.admin_port = int(doc["admin"][0][1])
        self.cluster_port = int(doc["cluster"][0][1])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polling simulators with a deadline
            await trio.sleep(0.002)
        return
    raise RuntimeError(f"timed out waiting for {what}")


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


async def measure(
    cp: ControlPlaneProcess, tls: ClusterTLS, size: int, writes: int, light: bool
) -> dict[str, Any]:
    endpoints = [Endpoint(host="127.0.0.1", port=cp.cluster_port)]
    rss_before = rss_kib(cp.proc.pid)
    status = await trio.to_thread.run_sync(admin_request, cp.admin_port, "GET", "/status")
    target = int(status["configuration_version"])
    async with trio.open_nursery() as nursery:
        sims: list[SimulatedDataPlane] = await nursery.start(
            lambda task_status: run_simulators(
                size, endpoints, tls, light=light, task_status=task_status
            )
        )
        await wait_for(lambda: all(s.version >= target for s in sims), 120, "initial sync")
        await trio.sleep(1)  # let the CP settle its row writes before reading its RSS
        rss_connected = rss_kib(cp.proc.pid)
        bytes_before = [s.bytes_received for s in sims]
        samples: list[float] = []
        arrivals: list[float] = []
        for n in range(writes):
            await trio.sleep(COALESCE * 2)  # idle: the next change is pushed at once
            previous = max(s.version for s in sims)
            body = {"name": f"bench-{size}-{n}", "paths": [f"/bench/{size}/{n}"]}
            started = time.monotonic()
            await trio.to_thread.run_sync(
                admin_request, cp.admin_port, "POST", "/services/svc-0/routes", body
            )
            await wait_for(lambda v=previous: all(s.version > v for s in sims), 60, "propagation")
            for s in sims:
                applied = min(v for v in s.applied if v > previous)
                samples.append(s.applied[applied] - started)
                arrivals.append(s.received[applied] - started)
        received = [s.bytes_received - b for s, b in zip(sims, bytes_before, strict=True)]
        nursery.cancel_scope.cancel()
    return {
        "size": size,
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "mean": statistics.fmean(samples),
        "recv_p50": percentile(arrivals, 50),
        "recv_p99": percentile(arrivals, 99),
        "bytes_per_push": statistics.fmean(received) / writes,
        "rss_per_dp_kib": (rss_connected - rss_before) / size,
        "samples": len(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--routes", type=int, default=200)
    parser.add_argument(
        "--light",
        action="store_true",
        help="simulated DPs skip validation and compile (isolates the CP and the sync path)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-propagation-") as tmp:
        workdir = Path(tmp)
        cert_pem, key_pem = certs.generate_cluster_certificate(datetime.now(UTC), days=2)
        cert, key = workdir / "cluster.crt", workdir / "cluster.key"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        key.chmod(0o600)
        (workdir / "seed.json").write_text(json.dumps(seed_config(args.routes)))
        database = workdir / "bench.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        subprocess.run(
            [sys.executable, "-m", "gateway", "config", "db_import", str(workdir / "seed.json"),
             "--prefix", str(workdir / "import"), "--set", f"sqlite_path={database}"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        cp = ControlPlaneProcess(workdir, cert, key, database)
        tls = ClusterTLS.load(mode="shared", cluster_cert=str(cert), cluster_cert_key=str(key))
        try:
            results = [trio.run(measure, cp, tls, size, args.writes, args.light) for size in sizes]
        finally:
            cp.stop()
    reference = results[0]
    print(
        f"propagation: Admin API write -> DP swapped in; {args.routes} seeded routes, "
        f"{args.writes} writes per size, coalesce window {COALESCE} s"
        + (", light DPs (no validation/compile)" if args.light else "")
    )
    print(
        f"{'DPs':>5} {'recv p50':>9} {'recv p99':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p50/ref':>8} {'p99/ref':>8} {'bytes/DP/push':>14} {'CP RSS/DP KiB':>14}"
    )
    for r in results:
        print(
            f"{r['size']:>5} {r['recv_p50'] * 1000:>9.1f} {r['recv_p99'] * 1000:>9.1f} "
            f"{r['p50'] * 1000:>8.1f} {r['p99'] * 1000:>8.1f} "
            f"{r['p50'] / reference['p50']:>8.2f} {r['p99'] / reference['p99']:>8.2f} "
            f"{r['bytes_per_push']:>14.0f} {r['rss_per_dp_kib']:>14.1f}"
        )
    print("recv = snapshot arrived and decoded at the DP; p50/p99 = swapped in (served).")
    print(f"(reference = the {reference['size']}-DP run of this invocation)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
