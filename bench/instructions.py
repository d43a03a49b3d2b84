"""CPU instructions per proxied request, counted by valgrind (callgrind): nginx vs the gateway.

The wrk figures of bench/proxy.py move by 10-20 % from run to run on a shared VM, which
hides the effect of most single changes. Instruction counts hardly move: the same binary,
inputs and environment give the same count, whatever else the machine does, once the
process's timers are taken off (``measure``). This bench
runs nginx as a reverse proxy (1 worker), the least a Trio proxy can do
(bench/trio_floor.py: two socket waits per request, no parsing) and the gateway (1 worker,
cases (a) and (b) of bench/proxy.py) under callgrind, sends ``--warmup`` requests on one
keep-alive connection, zeroes the counters (``callgrind_control --zero``), sends
``--requests`` more, dumps the counters and prints instructions per request and the ratio
to nginx, all in one run.

Counts are user-space only (the kernel's TCP work, the same for every proxy, is not in
them) and a single connection has no concurrency, so this is a cost model, not a
throughput. Use it to compare two versions of the code; use bench/proxy.py for throughput.

    python bench/instructions.py [--requests 2000] [--warmup 200] [--keep DIR]

``--keep DIR`` keeps the counts of each setup (``DIR/<setup>.callgrind``):
``callgrind_annotate --inclusive=yes DIR/gateway-a-1-route-no-plugins.callgrind`` then lists
the functions by the instructions spent in them and below (compiled functions appear by
their C names, ``CPyDef_gateway___proxy____handler...``; interpreted code, which is mostly
Trio, as ``_PyEval_EvalFrameDefault``).

Needs the Debian packages ``valgrind`` and ``nginx`` (callgrind_control comes with
valgrind).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from proxy import API_KEY, NGINX_PROXY, NGINX_UPSTREAM, free_port, wait_port  # noqa: E402

# the upstream of bench/proxy.py (it keeps its client connections for good: the floor proxy
# does not reconnect)
UPSTREAM = NGINX_UPSTREAM

# nginx as the reverse proxy of bench/proxy.py, in one process (valgrind follows no fork) and
# keeping its client connection for good
NGINX_PROXY_SINGLE = NGINX_PROXY.replace("daemon off;", "daemon off;\nmaster_process off;").replace(
    "access_log off;", "access_log off;\n  keepalive_requests 1000000;"
)


def send_requests(sock: socket.socket, count: int, extra: str) -> None:
    request = (
        f"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\nAccept: */*\r\n{extra}\r\n"
    ).encode()
    for _ in range(count):
        sock.sendall(request)
        data = b""
        while not data.endswith(b"hello world\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the proxy closed the connection")
            data += chunk
        if not data.startswith(b"HTTP/1.1 200 "):
            raise SystemExit(f"unexpected answer: {data[:80]!r}")


def connect(port: int, timeout: float = 120.0) -> socket.socket:
    deadline = time.monotonic() + timeout  # valgrind makes start-up slow
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _totals(path: Path, name: str) -> int:
    match = re.search(r"^(?:summary|totals):\s+(\d+)", path.read_text(errors="replace"), re.M)
    if match is None:
        raise SystemExit(f"{name}: no totals in {path}")
    return int(match.group(1))


def measure(
    name: str, cmd: list[str], port: int, args: argparse.Namespace, extra: str
) -> tuple[float, float]:
    """Instructions per request, and how many of them were the process's timers.

    The counted window lasts as long as valgrind takes (tens of seconds), and the gateway's
    periodic tasks (the timeout watchdog's tick, the pool sweep) run during it in proportion
    to that wall time, not to the requests: on a slower host they would inflate the count.
    So the process is also counted idle for ``--idle`` seconds, and that rate times the
    window's duration is taken off.
    """
    out = Path(tempfile.mkdtemp(prefix="bench-cg-")) / "callgrind.out"
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def control(action: str) -> None:
        subprocess.run(
            ["callgrind_control", action, str(proc.pid)], check=True, capture_output=True
        )

    try:
        sock = connect(port)
        send_requests(sock, args.warmup, extra)
        control("--zero")
        started = time.monotonic()
        send_requests(sock, args.requests, extra)
        busy_seconds = time.monotonic() - started
        control("--dump")
        control("--zero")
        started = time.monotonic()
        time.sleep(args.idle)
        idle_seconds = time.monotonic() - started
        control("--dump")
        sock.close()
    finally:
        proc.send_signal(signal.SIGTERM if "nginx" not in cmd[0] else signal.SIGQUIT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    dumps = sorted(out.parent.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
    if len(dumps) < 2:
        raise SystemExit(f"{name}: callgrind wrote {len(dumps)} dump(s), expected 2")
    busy, idle = _totals(dumps[0], name), _totals(dumps[1], name)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        shutil.copy(dumps[0], args.keep / f"{slug}.callgrind")
    shutil.rmtree(out.parent, ignore_errors=True)
    requests: int = args.requests
    timers = idle / idle_seconds * busy_seconds
    return (busy - timers) / requests, timers / requests


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--backend", default="httptools", choices=("h11", "httptools", "fast"))
    parser.add_argument(
        "--idle",
        type=float,
        default=3.0,
        help="seconds each process is also counted idle, to take its timers off",
    )
    parser.add_argument(
        "--access-log",
        default="off",
        metavar="TARGET",
        help="the gateway's proxy_access_log (default off, as nginx's access_log off here)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep each setup's callgrind file there (for callgrind_annotate --inclusive=yes)",
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install -y valgrind nginx")

    from gateway._build import hot_path_build

    tmp = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    up_port = free_port()
    (tmp / "upstream.conf").write_text(UPSTREAM.format(dir=tmp, port=up_port))
    upstream = subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(tmp / "upstream.conf")])
    results: list[tuple[str, tuple[float, float]]] = []
    try:
        wait_port(up_port)
        px_port = free_port()
        (tmp / "proxy.conf").write_text(
            NGINX_PROXY_SINGLE.format(dir=tmp, port=px_port, upstream=up_port, workers=1)
        )
        nginx_cmd = [
            shutil.which("nginx") or "nginx",
            "-p",
            str(tmp),
            "-c",
            str(tmp / "proxy.conf"),
        ]
        results.append(("nginx reverse proxy", measure("nginx", nginx_cmd, px_port, args, "")))
        floor_port = free_port()
        floor_cmd = [sys.executable, str(BENCH / "trio_floor.py"), str(floor_port), str(up_port)]
        results.append(
            ("Trio floor (bench/trio_floor.py)", measure("floor", floor_cmd, floor_port, args, ""))
        )
        for case, routes, label in (
            ("a", 1, "gateway (a) 1 route, no plugins"),
            ("b", 100, "gateway (b) 100 routes, key-auth + rate-limiting"),
        ):
            port = free_port()
            cmd = [
                sys.executable,
                str(BENCH / "proxy.py"),
                "--serve-gateway",
                "--port",
                str(port),
                "--upstream",
                str(up_port),
                "--case",
                case,
                "--workers",
                "1",
                "--routes",
                str(routes),
                "--backend",
                args.backend,
                "--access-log",
                str(args.access_log),
            ]
            extra = f"apikey: {API_KEY}\r\n" if case == "b" else ""
            results.append((label, measure(label, cmd, port, args, extra)))
    finally:
        upstream.send_signal(signal.SIGQUIT)
        upstream.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; proxy hot path: {hot_path_build().describe()}; "
        f"parser backend {args.backend}"
    )
    print(
        f"callgrind, one keep-alive connection, {args.warmup} requests of warm-up, then "
        f"{args.requests} counted\n"
    )
    reference = results[0][1][0]
    print(
        f"| {'setup':<50} | {'instructions/request':>20} | {'x nginx':>8} "
        f"| {'timers taken off':>16} |"
    )
    print(f"|{'-' * 52}|{'-' * 22}|{'-' * 10}|{'-' * 18}|")
    for name, (value, timers) in results:
        print(f"| {name:<50} | {value:>20,.0f} | {value / reference:>8.1f} | {timers:>16,.0f} |")


if __name__ == "__main__":
    main()
