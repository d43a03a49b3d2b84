"""Target health: Kong's health-check counters (pure) and the active checker (Trio).

Theory of operation
-------------------

Every target of an upstream has one `TargetHealth` record: a healthy flag and four
consecutive-event counters (successes, TCP failures, timeouts, HTTP failures), as Kong's
lua-resty-healthcheck keeps them. Both kinds of checks feed the same record:

* passive checks (the circuit breaker) are the proxy's own outcomes, `Balancer.report()`,
  judged by `healthchecks.passive`;
* active checks are probes sent by `run_health_checks()`, judged by `healthchecks.active`.

A result is classified as a success, a TCP failure, a timeout, an HTTP failure, or ignored (an
HTTP status in neither list). A success clears the failure counters; a failure clears the
success counter. A failure counter reaching its threshold flips a healthy target to unhealthy;
the success counter reaching its threshold flips an unhealthy target back. A threshold of 0
disables its counter, so with Kong's defaults (all zero) nothing ever changes. A flip resets
every counter.

NOTE: passive successes never bring an unhealthy target back, even with
`passive.healthy.successes > 0`: Kong documents that passive checks only ever disable targets
and that a target comes back through active checks or the Admin API (`PUT .../healthy`).
Pinned by `test_passive_success_does_not_reopen_circuit`.

Records are shared between the balancers of successive config versions (`HealthBoard` is per
upstream and survives rebuilds), so a config swap never resets a circuit breaker, and an
outcome reported to the balancer of an older version still lands on the live record. A flip
bumps `HealthBoard.version`; balancers compare it on every `select()` and recompute their
derived state (available weight, round-robin schedule) only when it moved.

The active checker is one Trio task. Each round it takes the current `Balancers` (so it follows
config swaps), asks every balancer which targets are due (`plan_probes(now)`: healthy targets
every `active.healthy.interval` seconds, unhealthy ones every `active.unhealthy.interval`; an
interval of 0 disables that half), probes them concurrently (at most `active.concurrency` at
once per upstream), reports the outcomes, then sleeps until the next probe is due. A probe
never raises: refused connections, resets, TLS errors and unparsable responses are outcomes.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import attrs
import h11
import trio

from gateway.proxy._router_paths import bracketed

if TYPE_CHECKING:
    from gateway.proxy._balancer import Balancer, Balancers, TargetAddress

__all__ = [
    "ActiveCheck",
    "CounterRules",
    "HealthBoard",
    "HealthPolicy",
    "Outcome",
    "TargetHealth",
    "probe_target",
    "run_health_checks",
]

log = logging.getLogger(__name__)

Outcome: TypeAlias = Literal["success", "tcp_failure", "timeout"] | tuple[Literal["http"], int]

# Kong 3.x defaults (kong/db/schema/entities/upstreams.lua).
_ACTIVE_HEALTHY_STATUSES = (200, 302)
_ACTIVE_UNHEALTHY_STATUSES = (429, 404, 500, 501, 502, 503, 504, 505)
_PASSIVE_HEALTHY_STATUSES = (
    *range(200, 209),
    226,
    *range(300, 309),
)
_PASSIVE_UNHEALTHY_STATUSES = (429, 500, 503)

# How long the checker sleeps at most before looking at the config again when no probe is due.
_IDLE_POLL = 1.0
_MAX_RESPONSE_HEAD = 64 * 1024

_Kind = Literal["success", "tcp", "timeout", "http"]


@attrs.frozen(kw_only=True)
class CounterRules:
    """One side's thresholds: `healthchecks.active` or `healthchecks.passive`."""

    healthy_statuses: frozenset[int]
    successes: int
    unhealthy_statuses: frozenset[int]
    tcp_failures: int
    timeouts: int
    http_failures: int

    @property
    def can_disable(self) -> bool:
        return self.tcp_failures > 0 or self.timeouts > 0 or self.http_failures > 0

    def classify(self, outcome: Outcome) -> _Kind | None:
        if outcome == "success":
            return "success"
        if outcome == "tcp_failure":
            return "tcp"
        if outcome == "timeout":
            return "timeout"
        status = outcome[1]
        if status in self.healthy_statuses:
            return "success"
        # Status 0 stands for an unparsable status line, which Kong counts as an HTTP failure.
        if status in self.unhealthy_statuses or status == 0:
            return "http"
        return None


@attrs.frozen(kw_only=True)
class ActiveCheck:
    """`healthchecks.active`, parsed once per config version."""

    type: Literal["http", "https", "tcp"]
    http_path: str
    timeout: float
    concurrency: int
    https_verify_certificate: bool
    https_sni: str | None
    headers: tuple[tuple[str, str], ...]
    healthy_interval: float
    unhealthy_interval: float
    rules: CounterRules

    @property
    def enabled(self) -> bool:
        return self.healthy_interval > 0 or self.unhealthy_interval > 0


@attrs.frozen(kw_only=True)
class HealthPolicy:
    """An upstream's `healthchecks` record with Kong's defaults for anything missing."""

    active: ActiveCheck
    passive: CounterRules
    threshold: float

    @property
    def enabled(self) -> bool:
        """Kong's `is_upstream_using_healthcheck`: otherwise health is HEALTHCHECKS_OFF."""
        return self.active.enabled or self.passive.can_disable

    @classmethod
    def from_upstream(cls, upstream: Mapping[str, Any]) -> HealthPolicy:
        checks = _record(upstream.get("healthchecks"))
        active = _record(checks.get("active"))
        a_healthy = _record(active.get("healthy"))
        a_unhealthy = _record(active.get("unhealthy"))
        passive = _record(checks.get("passive"))
        p_healthy = _record(passive.get("healthy"))
        p_unhealthy = _record(passive.get("unhealthy"))
        raw_type = active.get("type")
        check_type: Literal["http", "https", "tcp"] = "http"
        if raw_type == "https":
            check_type = "https"
        elif raw_type == "tcp":
            check_type = "tcp"
        return cls(
            active=ActiveCheck(
                type=check_type,
                http_path=active.get("http_path") or "/",
                timeout=float(_number(active.get("timeout"), 1)),
                concurrency=max(1, int(_number(active.get("concurrency"), 10))),
                https_verify_certificate=active.get("https_verify_certificate") is not False,
                https_sni=active.get("https_sni") or None,
                headers=_headers(active.get("headers")),
                healthy_interval=float(_number(a_healthy.get("interval"), 0)),
                unhealthy_interval=float(_number(a_unhealthy.get("interval"), 0)),
                rules=_counter_rules(
                    a_healthy, a_unhealthy, _ACTIVE_HEALTHY_STATUSES, _ACTIVE_UNHEALTHY_STATUSES
                ),
            ),
            passive=_counter_rules(
                p_healthy, p_unhealthy, _PASSIVE_HEALTHY_STATUSES, _PASSIVE_UNHEALTHY_STATUSES
            ),
            threshold=float(_number(checks.get("threshold"), 0)),
        )


def _counter_rules(
    healthy: Mapping[str, Any],
    unhealthy: Mapping[str, Any],
    healthy_default: Sequence[int],
    unhealthy_default: Sequence[int],
) -> CounterRules:
    """The counters of an active or passive check (its ``healthy`` / ``unhealthy`` records)."""
    return CounterRules(
        healthy_statuses=_statuses(healthy.get("http_statuses"), healthy_default),
        successes=int(_number(healthy.get("successes"), 0)),
        unhealthy_statuses=_statuses(unhealthy.get("http_statuses"), unhealthy_default),
        tcp_failures=int(_number(unhealthy.get("tcp_failures"), 0)),
        timeouts=int(_number(unhealthy.get("timeouts"), 0)),
        http_failures=int(_number(unhealthy.get("http_failures"), 0)),
    )


def _record(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: object, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return value


def _statuses(value: object, default: Sequence[int]) -> frozenset[int]:
    if not isinstance(value, list | tuple):
        return frozenset(default)
    return frozenset(v for v in value if isinstance(v, int))


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    # Kong 3: a map of header name to an array of values.
    if not isinstance(value, Mapping):
        return ()
    out: list[tuple[str, str]] = []
    for name, values in value.items():
        if isinstance(values, str):
            out.append((str(name), values))
        elif isinstance(values, list | tuple):
            out.extend((str(name), str(v)) for v in values)
    return tuple(out)


class HealthBoard:
    """The health records of one upstream; survives config rebuilds."""

    __slots__ = ("records", "version")

    def __init__(self) -> None:
        self.version = 0
        self.records: dict[str, TargetHealth] = {}

    def record(self, name: str) -> TargetHealth:
        rec = self.records.get(name)
        if rec is None:
            rec = self.records[name] = TargetHealth(self)
        return rec


class TargetHealth:
    """Health flag and consecutive-event counters of one target (see the module docstring)."""

    __slots__ = (
        "board",
        "checked_at",
        "dns_error",
        "healthy",
        "http_failures",
        "probing",
        "successes",
        "tcp_failures",
        "timeouts",
    )

    def __init__(self, board: HealthBoard) -> None:
        self.board = board
        self.healthy = True
        self.successes = 0
        self.tcp_failures = 0
        self.timeouts = 0
        self.http_failures = 0
        self.dns_error = False
        self.checked_at: float | None = None
        self.probing = False

    def apply(self, outcome: Outcome, rules: CounterRules, *, passive: bool) -> bool:
        """Count one result; return True if it flipped the health flag."""
        kind = rules.classify(outcome)
        if kind is None:
            return False
        if kind == "success":
            self.tcp_failures = self.timeouts = self.http_failures = 0
            if self.healthy or passive or rules.successes <= 0:
                return False
            self.successes += 1
            if self.successes >= rules.successes:
                return self.set(True)
            return False
        self.successes = 0
        if not self.healthy:
            return False
        if kind == "tcp":
            limit = rules.tcp_failures
            if limit <= 0:
                return False
            self.tcp_failures += 1
            reached = self.tcp_failures >= limit
        elif kind == "timeout":
            limit = rules.timeouts
            if limit <= 0:
                return False
            self.timeouts += 1
            reached = self.timeouts >= limit
        else:
            limit = rules.http_failures
            if limit <= 0:
                return False
            self.http_failures += 1
            reached = self.http_failures >= limit
        return self.set(False) if reached else False

    def set(self, healthy: bool) -> bool:
        """Set the flag and reset the counters (Kong's manual healthy/unhealthy endpoints)."""
        self.successes = self.tcp_failures = self.timeouts = self.http_failures = 0
        if self.healthy == healthy:
            return False
        self.healthy = healthy
        self.board.version += 1
        return True


# --- active checks (Trio shell) -------------------------------------------------------------


async def probe_target(
    target: TargetAddress,
    check: ActiveCheck,
    *,
    host_header: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Outcome:
    """Send one active probe; every failure is an outcome, never an exception.

    `check.timeout` bounds the whole probe (connect, TLS handshake, request, status line).
    """
    outcome, _ = await _probe_detail(target, check, host_header, ssl_context)
    return outcome


async def _probe_detail(
    target: TargetAddress,
    check: ActiveCheck,
    host_header: str | None,
    ssl_context: ssl.SSLContext | None,
) -> tuple[Outcome, bool]:
    """The probe's outcome and whether the target's name failed to resolve."""
    try:
        with trio.fail_after(check.timeout):
            return await _probe(target, check, host_header, ssl_context), False
    except trio.TooSlowError:
        return "timeout", False
    except socket.gaierror:
        return "tcp_failure", True
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        # Refused or reset connections and ssl.SSLError (handshake, certificate verification).
        return "tcp_failure", False
    except h11.ProtocolError:
        return ("http", 0), False


async def _probe(
    target: TargetAddress,
    check: ActiveCheck,
    host_header: str | None,
    ssl_context: ssl.SSLContext | None,
) -> Outcome:
    tcp = await trio.open_tcp_stream(target.host, target.port)
    stream: trio.abc.Stream = tcp
    try:
        if check.type == "tcp":
            return "success"
        if check.type == "https":
            context = _client_context(check, ssl_context)
            server_hostname = check.https_sni or host_header or target.server_name
            tls = trio.SSLStream(tcp, context, server_hostname=server_hostname)
            stream = tls
            await tls.do_handshake()
        return await _http_status(stream, target, check, host_header)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


def _client_context(check: ActiveCheck, base: ssl.SSLContext | None) -> ssl.SSLContext:
    if not check.https_verify_certificate:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return base if base is not None else ssl.create_default_context()


async def _http_status(
    stream: trio.abc.Stream,
    target: TargetAddress,
    check: ActiveCheck,
    host_header: str | None,
) -> Outcome:
    # as lua-resty-healthcheck: the upstream's host_header, else the target's host, and no
    # port (the proxied requests' Host has one unless it is the scheme's default)
    host = host_header or bracketed(target.hostname)
    headers = [("Host", host), ("User-Agent", "trio-gateway health check")]
    headers.extend(check.headers)
    headers.append(("Connection", "close"))
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_RESPONSE_HEAD)
    data = conn.send(h11.Request(method="GET", target=check.http_path, headers=headers))
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data or b"")
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            chunk = await stream.receive_some(16384)
            if not chunk:
                # Closed before a status line: Kong reports a TCP failure ("receive").
                return "tcp_failure"
            conn.receive_data(bytes(chunk))
        elif isinstance(event, h11.Response):
            return ("http", event.status_code)
        elif isinstance(event, h11.InformationalResponse):
            continue
        else:  # pragma: no cover - a client sees only responses before the body
            return ("http", 0)


async def run_health_checks(
    balancers_ref: Callable[[], Balancers],
    *,
    ssl_context: ssl.SSLContext | None = None,
    probe: Callable[[Balancer, TargetAddress], Any] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the active health checks of every upstream forever.

    `balancers_ref()` is called once per round, so a new config version is picked up without
    restarting the task. `ssl_context` is the trust store for `https` probes with
    `https_verify_certificate` (default: the system store). `probe` replaces the network probe
    (an async function of balancer and target returning an `Outcome`) in tests.
    """
    task_status.started()
    while True:
        balancers = balancers_ref()
        now = trio.current_time()
        # One nursery per round: the probes of every upstream run concurrently, each upstream
        # bounded by its own `active.concurrency`. A round lasts at most the longest timeout.
        async with trio.open_nursery() as nursery:
            for balancer in balancers:
                plan = balancer.plan_probes(now)
                if plan:
                    nursery.start_soon(_probe_upstream, balancer, plan, ssl_context, probe)
        now = trio.current_time()
        wake = now + _IDLE_POLL
        for balancer in balancers:
            due = balancer.next_probe_at()
            if due is not None and due < wake:
                wake = due
            # A target may turn unhealthy through passive checks at any moment; look again
            # within one interval so that its probes start without waiting for the idle poll.
            active = balancer.health_policy.active
            for interval in (active.healthy_interval, active.unhealthy_interval):
                if interval > 0 and now + interval < wake:
                    wake = now + interval
        await trio.sleep_until(max(wake, now))


async def _probe_upstream(
    balancer: Balancer,
    plan: Iterable[TargetAddress],
    ssl_context: ssl.SSLContext | None,
    probe: Callable[[Balancer, TargetAddress], Any] | None,
) -> None:
    limiter = trio.CapacityLimiter(balancer.health_policy.active.concurrency)
    async with trio.open_nursery() as nursery:
        for target in plan:
            nursery.start_soon(_probe_one, balancer, target, limiter, ssl_context, probe)


async def _probe_one(
    balancer: Balancer,
    target: TargetAddress,
    limiter: trio.CapacityLimiter,
    ssl_context: ssl.SSLContext | None,
    probe: Callable[[Balancer, TargetAddress], Any] | None,
) -> None:
    async with limiter:
        dns_error = False
        try:
            if probe is not None:
                outcome: Outcome = await probe(balancer, target)
            else:
                outcome, dns_error = await _probe_detail(
                    target, balancer.health_policy.active, balancer.host_header, ssl_context
                )
        except Exception:
            # A bug must not stop the checker (nor the gateway nursery it runs in).
            log.exception("health check of %s failed unexpectedly", target.name)
            outcome = "tcp_failure"
        balancer.report_probe(target, outcome, dns_error=dns_error)
