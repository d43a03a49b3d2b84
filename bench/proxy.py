"""Proxy throughput: nginx as the upstream and as the reference proxy, wrk as the client.

Measures, in one run and on the same machine:

* the nginx upstream directly (the ceiling);
* nginx as a reverse proxy (1 worker, keep-alive upstream pool) -- the reference;
* the least a Trio proxy can do (bench/trio_floor.py: no parsing, no routing), 1 process:
  what Trio's scheduler and the socket calls cost, which no gateway on Trio goes below;
* this gateway with 1 and N worker processes, for
  (a) one route and no plugins, and
  (b) 100 routes with key-auth and rate-limiting on the matched route;
* the RSS of a worker with 10,000 routes loaded.

It prints req/s, p50 and p99 latency and the ratios gateway / nginx-proxy. See
bench/README.md (needs the Debian packages ``nginx`` and ``wrk``).

    python bench/proxy.py [--duration 10] [--connections 50] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NGINX_UPSTREAM = """
worker_processes 1;
daemon off;
pid {dir}/upstream.pid;
error_log {dir}/upstream-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  # client connections are kept (the Trio floor below does not reconnect)
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "hello world\\n"; }}
  }}
}}
"""

NGINX_PROXY = """
worker_processes {workers};
daemon off;
pid {dir}/proxy{workers}.pid;
error_log {dir}/proxy{workers}-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""

API_KEY = "bench-key"


PIN: dict[str, list[str]] = {"proxy": [], "load": []}


def setup_pinning(enabled: bool) -> None:
    """On >= 2 CPUs: the proxy under test (nginx or 1 gateway worker) on CPU 0, the
    upstream and wrk on the others, so each proxy gets the same core whatever else runs."""
    cpus = os.cpu_count() or 1
    if enabled and cpus >= 2 and shutil.which("taskset"):
        PIN["proxy"] = ["taskset", "-c", "0"]
        PIN["load"] = ["taskset", "-c", f"1-{cpus - 1}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# -- the gateway side (run in a child process) --------------------------------------------


def build_config(upstream_port: int, case: str, routes: int) -> dict[str, Any]:
    from gateway.plugins import get_plugin

    def uid() -> str:
        return str(uuid.uuid4())

    svc = {
        "id": uid(),
        "name": "bench",
        "protocol": "http",
        "host": "127.0.0.1",
        "port": upstream_port,
        "path": None,
        "retries": 5,
        "connect_timeout": 60000,
        "write_timeout": 60000,
        "read_timeout": 60000,
        "enabled": True,
    }

    def route(path: str) -> dict[str, Any]:
        return {
            "id": uid(),
            "name": None,
            "protocols": ["http", "https"],
            "methods": None,
            "hosts": None,
            "paths": [path],
            "headers": None,
            "snis": None,
            "https_redirect_status_code": 426,
            "regex_priority": 0,
            "strip_path": False,
            "path_handling": "v0",
            "preserve_host": False,
            "request_buffering": True,
            "response_buffering": True,
            "service": {"id": svc["id"]},
        }

    all_routes = [route(f"/r{i}") for i in range(routes - 1)] + [route("/")]
    config: dict[str, Any] = {"_format_version": "3.0", "services": [svc], "routes": all_routes}
    if case == "b":
        matched = all_routes[-1]
        consumer = {"id": uid(), "username": "bench", "custom_id": None}
        plugins = []
        for name, conf in (
            ("key-auth", {}),
            ("rate-limiting", {"second": 10**9, "policy": "local"}),
        ):
            cls = get_plugin(name)
            if cls is None:
                print(f"note: plugin {name} is not available; running without it", file=sys.stderr)
                continue
            validated, error = cls.config_schema.validate(conf)
            assert error is None, error
            plugins.append(
                {
                    "id": uid(),
                    "name": name,
                    "instance_name": None,
                    "config": validated,
                    "enabled": True,
                    "protocols": ["grpc", "grpcs", "http", "https"],
                    "route": {"id": matched["id"]},
                    "service": None,
                    "consumer": None,
                }
            )
        config["plugins"] = plugins
        config["consumers"] = [consumer]
        config["keyauth_credentials"] = [
            {"id": uid(), "consumer": {"id": consumer["id"]}, "key": API_KEY, "ttl": None}
        ]
    return config


def serve_gateway(args: argparse.Namespace) -> None:
    import trio

    from gateway.proxy import (
        ProxyOptions,
        ProxyState,
        compile_config,
        fair_scheduling,
        serve_proxy,
    )
    from gateway.proxy._workers import serve_workers
    from gateway.settings import ListenAddress

    class BenchSettings:
        proxy_listen = (ListenAddress(host="127.0.0.1", port=args.port, backlog=4096),)
        worker_processes = args.workers

    config = build_config(args.upstream, args.case, args.routes)
    options = ProxyOptions(backend=args.backend, access_log=args.access_log)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                if args.workers == 1:
                    state = ProxyState(compile_config(config, version=1))
                    await nursery.start(
                        lambda task_status: serve_proxy(
                            BenchSettings(), state, options=options, task_status=task_status
                        )
                    )
                else:
                    pool = await nursery.start(
                        lambda task_status: serve_workers(
                            BenchSettings(),
                            config,
                            workers=args.workers,
                            options=options,
                            task_status=task_status,
                        )
                    )
                    await pool.wait_applied(1)
                    print("pids", *pool.pids, flush=True)
                print("ready", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    fair_scheduling()  # as python -m gateway and the worker processes do
    trio.run(main)


# -- the driver ----------------------------------------------------------------------------


def parse_latency(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    if text.endswith("us"):
        return value / 1000
    if text.endswith("ms"):
        return value
    if text.endswith("s"):
        return value * 1000
    return value


def run_wrk(
    url: str, args: argparse.Namespace, headers: Sequence[str] = (), *, paced: bool = False
) -> dict[str, float]:
    """wrk at full speed (closed loop: each connection sends its next request as soon as the
    answer is in), or ``paced``: each connection waits between requests so that all of them
    together offer about ``args.rate`` requests/second, well below what every proxy here
    sustains. At full speed the latency is mostly queueing (50 connections / throughput);
    paced, it is the time one request takes through a proxy that is not saturated."""
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if paced:
        script = Path(tempfile.mkdtemp(prefix="bench-wrk-")) / "paced.lua"
        interval_ms = max(1, round(args.connections * 1000 / args.rate))
        script.write_text(f"function delay()\n  return {interval_ms}\nend\n")
        cmd += ["-s", str(script)]
    out = subprocess.run(
        [*PIN["load"], *cmd, url], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = parse_latency(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = parse_latency(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Gateway:
    def __init__(
        self, args: argparse.Namespace, upstream: int, case: str, workers: int, routes: int
    ):
        self.port = free_port()
        pin = PIN["proxy"] if workers == 1 else []
        self.proc = subprocess.Popen(
            [
                *pin,
                sys.executable,
                __file__,
                "--serve-gateway",
                "--port",
                str(self.port),
                "--upstream",
                str(upstream),
                "--case",
                case,
                "--workers",
                str(workers),
                "--routes",
                str(routes),
                "--backend",
                args.backend,
                "--access-log",
                str(args.access_log),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pids = [self.proc.pid]
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("pids"):
                self.pids = [int(p) for p in line.split()[1:]]
            if line.startswith("ready"):
                break
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


REFERENCE = "nginx reverse proxy, 1 worker"


def nginx_n(workers: int) -> str:
    """The name of the like-for-like reference of the N-worker gateways."""
    return f"nginx reverse proxy, {workers} workers (not pinned)"


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each measure over the rounds (errors: their sum)."""
    out = {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50", "p99")}
    out["errors"] = sum(r["errors"] for r in runs)
    return out


def print_table(
    rows: list[tuple[str, dict[str, float]]],
    ref: dict[str, float],
    ratios: tuple[str, str],
    *,
    digits: int,
) -> None:
    """A markdown table of wrk results; ``ratios``: the two columns shown as x ``ref``."""
    titles = {"rps": "x nginx req/s", "p50": "x nginx p50", "p99": "x nginx p99"}
    t1, t2 = (titles[k] for k in ratios)
    w1, w2 = max(len(t1), 11), max(len(t2), 11)
    print(
        f"| {'setup':<62} | {'req/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} "
        f"| {t1:>{w1}} | {t2:>{w2}} |"
    )
    print(f"|{'-' * 64}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * (w1 + 2)}|{'-' * (w2 + 2)}|")
    for name, r in rows:
        x1, x2 = (r[k] / ref[k] for k in ratios)
        print(
            f"| {name:<62} | {r['rps']:>9.0f} | {r['p50']:>7.{digits}f} | {r['p99']:>7.{digits}f} "
            f"| {x1:>{w1}.2f} | {x2:>{w2}.2f} |"
        )
        if r["errors"]:
            print(f"  ({r['errors']:.0f} non-2xx responses)")


def print_like_for_like(
    results: list[tuple[str, dict[str, float]]],
    paced: list[tuple[str, dict[str, float]]],
    workers: int,
) -> None:
    """The N-worker gateways against nginx with N workers, placed the same way."""
    full, slow = dict(results), dict(paced)
    ref, ref_paced = full[nginx_n(workers)], slow.get(nginx_n(workers))
    print(f"\nLike for like: {workers} gateway workers against nginx with {workers} workers\n")
    print(f"| {'setup':<62} | {'x req/s':>8} | {'x p99':>8} | {'x p99 at equal load':>19} |")
    print(f"|{'-' * 64}|{'-' * 10}|{'-' * 10}|{'-' * 21}|")
    for name, r in results:
        if not (name.startswith("gateway") and name.endswith(f", {workers} worker(s)")):
            continue
        at_equal = (
            f"{slow[name]['p99'] / ref_paced['p99']:.2f}"
            if ref_paced is not None and name in slow
            else "-"
        )
        print(
            f"| {name:<62} | {r['rps'] / ref['rps']:>8.2f} | {r['p99'] / ref['p99']:>8.2f} "
            f"| {at_equal:>19} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--rate",
        type=int,
        default=5000,
        help="requests/second offered in the paced latency runs (0: skip them)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds over all setups; the tables show the median of each column",
    )
    parser.add_argument("--backend", default="httptools", choices=("h11", "httptools", "fast"))
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument(
        "--access-log",
        default="off",
        metavar="TARGET",
        help="the gateways' proxy_access_log (default off, as the nginx reference's "
        "access_log off; a path measures what the log costs)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--serve-gateway", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--case", default="a", help=argparse.SUPPRESS)
    parser.add_argument("--routes", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        serve_gateway(args)
        return
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install -y nginx wrk")

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    from gateway._build import hot_path_build

    hot_path = hot_path_build().describe()
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    up_port, px_port = free_port(), free_port()
    (tmp / "upstream.conf").write_text(NGINX_UPSTREAM.format(dir=tmp, port=up_port))
    (tmp / "proxy.conf").write_text(
        NGINX_PROXY.format(dir=tmp, port=px_port, upstream=up_port, workers=1)
    )
    setup_pinning(not args.no_pin)
    nginx_confs = [("upstream.conf", "load"), ("proxy.conf", "proxy")]
    # with N > 1, nginx with N workers too, placed like the N-worker gateways (not pinned):
    # on a small machine N workers share the CPUs with wrk and the upstream, and their
    # latency tail is the scheduler's as much as the proxy's
    pxn_port = free_port()
    if args.workers > 1:
        (tmp / "proxy-n.conf").write_text(
            NGINX_PROXY.format(dir=tmp, port=pxn_port, upstream=up_port, workers=args.workers)
        )
        nginx_confs.append(("proxy-n.conf", "none"))
    nginx = [
        subprocess.Popen([*PIN.get(role, []), "nginx", "-p", str(tmp), "-c", str(tmp / name)])
        for name, role in nginx_confs
    ]
    # every setup runs for the whole bench; each round measures all of them once, in turn,
    # and the tables show the median of the rounds: one wrk run on a shared VM sometimes
    # catches a hiccup (a p99 several times the usual), which a median of interleaved
    # rounds does not report as the proxy's
    setups: list[tuple[str, str, list[str]]] = []  # name, url, extra wrk headers
    floor: subprocess.Popen[bytes] | None = None
    gateways: list[Gateway] = []
    rounds: dict[str, list[dict[str, float]]] = {}
    paced_rounds: dict[str, list[dict[str, float]]] = {}
    try:
        wait_port(up_port)
        wait_port(px_port)
        setups.append(("nginx upstream (direct)", f"http://127.0.0.1:{up_port}/", []))
        setups.append((REFERENCE, f"http://127.0.0.1:{px_port}/", []))
        if args.workers > 1:
            wait_port(pxn_port)
            setups.append((nginx_n(args.workers), f"http://127.0.0.1:{pxn_port}/", []))
        floor_port = free_port()
        floor = subprocess.Popen(
            [
                *PIN["proxy"],
                sys.executable,
                str(Path(__file__).parent / "trio_floor.py"),
                str(floor_port),
                str(up_port),
            ]
        )
        wait_port(floor_port)
        setups.append(("Trio floor (no parsing), 1 process", f"http://127.0.0.1:{floor_port}/", []))
        for case, routes, label in (
            ("a", 1, "(a) 1 route, no plugins"),
            ("b", 100, "(b) 100 routes, key-auth + rate-limiting"),
        ):
            for workers in sorted({1, args.workers}):
                gw = Gateway(args, up_port, case, workers, routes)
                gateways.append(gw)
                headers = [f"apikey: {API_KEY}"] if case == "b" else []
                check = subprocess.run(
                    [
                        "curl",
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        *(x for h in headers for x in ("-H", h)),
                        f"http://127.0.0.1:{gw.port}/",
                    ],
                    capture_output=True,
                    text=True,
                ).stdout
                assert check == "200", f"gateway answered {check}"
                name = f"gateway {label}, {workers} worker(s)"
                setups.append((name, f"http://127.0.0.1:{gw.port}/", headers))
        for _ in range(args.repeat):
            for name, url, headers in setups:
                rounds.setdefault(name, []).append(run_wrk(url, args, headers))
            if args.rate:
                for name, url, headers in setups:
                    if name.startswith(("gateway", "nginx reverse proxy")):
                        paced_rounds.setdefault(name, []).append(
                            run_wrk(url, args, headers, paced=True)
                        )
        for gw in gateways:
            gw.stop()
        gateways.clear()
        gw = Gateway(args, up_port, "a", 1, 10_000)
        try:
            rss_10k = rss_kib(gw.pids[0])
        finally:
            gw.stop()
    finally:
        for gw in gateways:
            gw.stop()
        if floor is not None:
            floor.terminate()
            floor.wait(timeout=10)
        for proc in nginx:
            proc.send_signal(signal.SIGQUIT)
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    results = [(name, median_of(runs)) for name, runs in rounds.items()]
    paced = [(name, median_of(runs)) for name, runs in paced_rounds.items()]
    reference = dict(results)[REFERENCE]

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    pinning = "proxy on CPU 0, upstream + wrk on the others" if PIN["proxy"] else "none"
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, median of "
        f"{args.repeat} interleaved round(s); "
        f"parser backend {args.backend}; pinning: {pinning}; load average before: "
        f"{load_before}\nproxy hot path: {hot_path}\n"
    )
    print_table(results, reference, ("rps", "p99"), digits=2)
    if paced:
        print(
            f"\nLatency at equal load: each of the {args.connections} connections paced so that "
            f"together they offer ~{args.rate} req/s (wrk delay() script)\n"
        )
        print_table(paced, dict(paced)[REFERENCE], ("p50", "p99"), digits=3)
    if args.workers > 1:
        print_like_for_like(results, paced, args.workers)
    print(f"\nRSS of one gateway worker with 10,000 routes loaded: {rss_10k / 1024:.1f} MiB")
    if args.json:
        print(json.dumps({"results": results, "paced": paced, "rss_10k_kib": rss_10k}, indent=1))


if __name__ == "__main__":
    main()
