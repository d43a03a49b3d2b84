"""Router benchmark: 10,000 routes, per-match latency (p50/p99) and compile time.

Run: ``python bench/router.py [--routes 10000] [--lookups 20000]``

The table mixes exact hosts, wildcard hosts, host-less prefix paths, regex paths (with and
without regex_priority), methods and headers. Cases:

* best: an exact host whose bucket holds one route;
* typical: requests spread over every route kind, all of which match;
* miss: an unknown host and a long path that matches nothing (every probe is made);
* worst: a regex-heavy slot (1,000 regexes behind one literal prefix) hit at its last route.

Each case is also timed, for a few lookups, with a linear scan over the same matchers in
priority order (what the indexes avoid): the ratio is printed, measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.proxy._router import DEFAULT_PORTS, Router
from gateway.proxy._router_paths import normalize_path, split_host_port
from gateway.schema.entities import ENTITIES

Request = tuple[str, str, str, dict[str, str], str | None, str]


def make_route(index: int, **fields: Any) -> dict[str, Any]:
    return {
        **ENTITIES["routes"].defaults(),
        "id": f"00000000-0000-4000-8000-{index:012d}",
        "name": f"r{index}",
        "service": {"id": f"s{index % 100}"},
        "created_at": 1_700_000_000 + index,
        **fields,
    }


def build_config(count: int) -> tuple[dict[str, Any], list[Request]]:
    rng = random.Random(7)
    routes: list[dict[str, Any]] = []
    typical: list[Request] = []
    for i in range(count):
        kind = i % 10
        if kind < 4:  # exact host + prefix path, some with methods
            methods = ["GET", "POST"] if i % 3 == 0 else None
            routes.append(
                make_route(
                    i,
                    hosts=[f"svc{i}.example.com"],
                    paths=[f"/api/v{i % 3}/res{i}"],
                    methods=methods,
                )
            )
            typical.append(
                ("GET", f"svc{i}.example.com", f"/api/v{i % 3}/res{i}/x", {}, None, "http")
            )
        elif kind == 4:  # wildcard host
            routes.append(make_route(i, hosts=[f"*.tenant{i}.example.com"], paths=["/"]))
            typical.append(("GET", f"a.tenant{i}.example.com", "/anything", {}, None, "https"))
        elif kind < 8:  # host-less prefix paths of varied lengths, some with a header
            depth = "/".join(f"p{j}" for j in range(i % 5))
            headers = {"x-tenant": [f"t{i}"]} if i % 7 == 0 else None
            routes.append(make_route(i, paths=[f"/svc{i}/{depth}"], headers=headers))
            sent = {"X-Tenant": f"T{i}"} if headers else {}
            typical.append(("GET", "gw.local", f"/svc{i}/{depth}/item", sent, None, "http"))
        else:  # regex paths with captures
            routes.append(
                make_route(
                    i,
                    paths=[f"~/regex{i}/items/(?<id>\\d+)$"],
                    regex_priority=rng.randint(0, 3),
                )
            )
            typical.append(("GET", "gw.local", f"/regex{i}/items/{i}", {}, None, "http"))
    # the regex-heavy slot: 1,000 regexes behind the literal prefix "/r/"
    for j in range(1000):
        routes.append(make_route(count + j, paths=[f"~/r/(?<n>[a-z]+)/{j}$"], methods=["GET"]))
    services = [{"id": f"s{k}", "path": "/base"} for k in range(100)]
    rng.shuffle(typical)
    return {"_format_version": "3.0", "services": services, "routes": routes}, typical


def linear_match(router: Router, request: Request) -> object:
    """The reference: every matcher in priority order, first full match wins."""
    method, host, path, headers, sni, scheme = request
    path = normalize_path(path)
    name, port = split_host_port(host)
    if port is None:
        port = DEFAULT_PORTS.get(scheme)
    lowered = {key.lower(): value for key, value in headers.items()}
    for matcher in router._matchers:
        if matcher.hosts and not any(
            (p is None or p == port)
            and (
                name == h
                if kind == "="
                else name.endswith(h)
                if kind == "*."
                else name.startswith(h)
            )
            for kind, h, p in matcher.hosts
        ):
            continue
        found = matcher.check(method, scheme, sni, lowered, path)
        if found is not None:
            return matcher
    return None


def time_lookups(
    fn: Callable[[Request], object], requests: list[Request], rounds: int
) -> list[float]:
    samples: list[float] = []
    clock = time.perf_counter_ns
    for i in range(rounds):
        request = requests[i % len(requests)]
        start = clock()
        fn(request)
        samples.append((clock() - start) / 1000.0)
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    args = parser.parse_args()

    config, typical = build_config(args.routes)
    start = time.perf_counter()
    router = Router.compile(config)
    compile_ms = (time.perf_counter() - start) * 1000
    print(f"routes: {len(config['routes'])}  matchers: {len(router)}  issues: {len(router.issues)}")
    print(f"compile: {compile_ms:.1f} ms")
    # The long-lived router objects are moved out of the collector's generations, as a proxy
    # should do after swapping in a new router: otherwise full collections show in the p99.
    gc.collect()
    gc.freeze()

    cases: dict[str, list[Request]] = {
        "best": [("GET", "svc1.example.com", "/api/v1/res1", {}, None, "http")],
        "typical": typical,
        "miss": [
            ("GET", "unknown.example.org", "/svc/" + "/".join(["seg"] * 12), {}, None, "http")
        ],
        "worst": [("GET", "gw.local", "/r/abc/999", {}, None, "http")],
    }
    for request in cases["best"] + cases["worst"] + typical[:200]:
        match = router.match(*request)
        assert match is not None, request
        assert linear_match(router, request) is not None
        assert match.route is getattr(linear_match(router, request), "route", None), request
    assert router.match(*cases["miss"][0]) is None

    header = ("case", "p50 us", "p99 us", "mean us", "linear p50 us", "ratio")
    print("{:<8} {:>8} {:>8} {:>8}   {:>13} {:>7}".format(*header))
    for name, requests in cases.items():
        router.match(*requests[0])  # warm
        samples = time_lookups(lambda r: router.match(*r), requests, args.lookups)
        linear = time_lookups(lambda r: linear_match(router, r), requests, 30)
        p50 = percentile(samples, 0.5)
        print(
            f"{name:<8} {p50:>8.2f} {percentile(samples, 0.99):>8.2f} "
            f"{statistics.fmean(samples):>8.2f}   {percentile(linear, 0.5):>13.1f} "
            f"{percentile(linear, 0.5) / p50:>6.0f}x"
        )


if __name__ == "__main__":
    main()
