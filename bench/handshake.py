"""Cluster-link mutual-TLS handshakes per server CPU-second.

Usage::

    python bench/handshake.py [--handshakes N] [--concurrency C]

For each case a server runs in its own process and accepts cluster links on 127.0.0.1
(port 0); this process is the client. The server measures its own CPU time
(``time.process_time``) over N handshakes after a warm-up, so the client's cost and the
machine's other load do not count. Cases:

* ``stdlib ssl`` -- the reference: ``trio.SSLStream`` (stdlib ``ssl``) with the shared-mode
  certificate, mutual TLS, no policy re-check;
* ``shared`` -- ``accept_cluster_peer`` in shared mode (gen_cert P-384 certificate);
* ``pki`` -- ``accept_cluster_peer`` in PKI mode (P-256, one intermediate), including the
  second, pure-Python policy check (chain building with cryptography's verifier).

The table gives handshakes per server CPU-second and the ratio to the reference.
"""

from __future__ import annotations

import argparse
import json
import logging
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import trio

import certs
from gateway.cluster import ClusterTLS, accept_cluster_peer, connect_cluster_peer


def _write_material(directory: Path) -> None:
    now = datetime.now(UTC)
    cert_pem, key_pem = certs.generate_cluster_certificate(now)
    (directory / "shared.crt").write_bytes(cert_pem)
    (directory / "shared.key").write_bytes(key_pem)
    pki = certs.build_dev_pki(now, intermediates=1, cp_names=["cp.bench"], dp_count=1)
    (directory / "ca.crt").write_bytes(certs.cert_pem(pki.root.certificate))
    for name, issued in (("cp", pki.control_plane), ("dp", pki.data_planes[0])):
        (directory / f"{name}.crt").write_bytes(issued.cert_pem)
        (directory / f"{name}.key").write_bytes(issued.key_pem)


def _cluster_tls(directory: Path, case: str, side: str) -> ClusterTLS:
    if case == "pki":
        return ClusterTLS.load(
            mode="pki",
            cluster_cert=str(directory / f"{side}.crt"),
            cluster_cert_key=str(directory / f"{side}.key"),
            cluster_ca_cert=str(directory / "ca.crt"),
            server_name="cp.bench",
        )
    return ClusterTLS.load(
        mode="shared",
        cluster_cert=str(directory / "shared.crt"),
        cluster_cert_key=str(directory / "shared.key"),
    )


# -- server process ---------------------------------------------------------------------


async def _serve(directory: Path, case: str, warmup: int, count: int) -> None:
    tls = _cluster_tls(directory, case, "cp")
    std_ctx: ssl.SSLContext | None = None
    if case == "stdlib":
        std_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        std_ctx.load_cert_chain(directory / "shared.crt", directory / "shared.key")
        std_ctx.load_verify_locations(directory / "shared.crt")
        std_ctx.verify_mode = ssl.CERT_REQUIRED
        std_ctx.check_hostname = False
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    print(listener.socket.getsockname()[1], flush=True)
    done = 0
    started = 0.0
    finished = trio.Event()

    async def handle(transport: trio.SocketStream) -> None:
        nonlocal done, started
        try:
            if std_ctx is not None:
                stream = trio.SSLStream(transport, std_ctx, server_side=True)
                await stream.do_handshake()
            else:
                peer = await accept_cluster_peer(
                    transport, tls, peer="bench", now=datetime.now(UTC)
                )
                stream = peer.stream  # type: ignore[assignment]
            await stream.aclose()
        except Exception:
            await trio.aclose_forcefully(transport)
            return
        done += 1
        if done == warmup:
            started = time.process_time()
        elif done == warmup + count:
            elapsed = time.process_time() - started
            print(json.dumps({"handshakes": count, "cpu_seconds": elapsed}), flush=True)
            finished.set()

    async with trio.open_nursery() as nursery:
        # One task per connection; the nursery ends once the measurement is complete.
        async def accept_loop() -> None:
            while True:
                transport = await listener.accept()
                nursery.start_soon(handle, transport)

        nursery.start_soon(accept_loop)
        await finished.wait()
        nursery.cancel_scope.cancel()


# -- client (this process) --------------------------------------------------------------


async def _drive(directory: Path, case: str, port: int, concurrency: int) -> None:
    tls = _cluster_tls(directory, "shared" if case == "stdlib" else case, "dp")
    stop = trio.Event()

    async def one_client() -> None:
        while not stop.is_set():
            try:
                transport = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                stop.set()
                return
            try:
                peer = await connect_cluster_peer(transport, tls, now=datetime.now(UTC))
                await peer.stream.receive_some()
                await peer.stream.aclose()
            except Exception:
                await trio.aclose_forcefully(transport)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(one_client)
        nursery.start_soon(_wait_stop, stop, nursery)


async def _wait_stop(stop: trio.Event, nursery: trio.Nursery) -> None:
    await stop.wait()
    nursery.cancel_scope.cancel()


def _run_case(directory: Path, case: str, count: int, concurrency: int) -> float:
    warmup = max(20, count // 10)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", case, str(directory), str(warmup), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    port = int(server.stdout.readline())

    async def client() -> None:
        async with trio.open_nursery() as nursery:
            stop = trio.Event()

            async def watch() -> None:
                await trio.to_thread.run_sync(server.wait)
                stop.set()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            nursery.start_soon(_drive, directory, case, port, concurrency)

    trio.run(client)
    result = json.loads(server.stdout.read().strip().splitlines()[-1])
    return float(result["handshakes"]) / float(result["cpu_seconds"])


def main() -> None:
    # Rejections at the end of each run (the server stops mid-handshake) are expected noise.
    logging.getLogger("gateway.cluster").setLevel(logging.CRITICAL)
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        case, where, warmup, count = sys.argv[2:6]
        trio.run(_serve, Path(where), case, int(warmup), int(count))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        _write_material(directory)
        rates = {
            case: _run_case(directory, case, args.handshakes, args.concurrency)
            for case in ("stdlib", "shared", "pki")
        }
    reference = rates["stdlib"]
    print(
        f"mutual-TLS handshakes per server CPU-second ({args.handshakes} measured, "
        f"{args.concurrency} concurrent clients, 127.0.0.1)"
    )
    print(f"{'case':<34} {'hs/cpu-s':>10} {'vs ref':>8}")
    labels = {
        "stdlib": "reference: trio.SSLStream (shared)",
        "shared": "cluster link, shared mode",
        "pki": "cluster link, PKI (1 intermediate)",
    }
    for case, rate in rates.items():
        print(f"{labels[case]:<34} {rate:>10.0f} {rate / reference:>7.2f}x")


if __name__ == "__main__":
    main()
