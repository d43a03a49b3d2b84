"""rate-limiting: limit how many requests a client makes per second/minute/hour/day/month/year.

Kong's plugin and options. Windows are fixed and aligned on the calendar (UTC), as Kong's.
A request is refused with ``error_code`` (429) and ``{"message": error_message}`` when any
configured window is used up; the response carries Kong's headers (``RateLimit-Limit``,
``RateLimit-Remaining``, ``RateLimit-Reset``, ``X-RateLimit-Limit-<Window>``,
``X-RateLimit-Remaining-<Window>``, ``Retry-After`` on refusal) unless
``hide_client_headers``.

NOTE: only ``policy = local`` is implemented: counters live in the worker process and
survive configuration changes (they are keyed by plugin id, not plugin instance). With
``worker_processes`` > 1 each worker counts on its own, as Kong's ``local`` policy counts per
node. ``cluster`` and ``redis`` are refused at validation with a clear message
(tests/gateway/plugins/test_rate_limiting.py::test_unsupported_policies_are_refused).
"""

from __future__ import annotations

import calendar
import math
import time
from typing import Any, ClassVar

from gateway.plugins._api import Context
from gateway.plugins._plugin import Plugin
from gateway.plugins.bundled._common import VERSION, header_name
from gateway.schema import Boolean, Integer, Number, Record, String

PERIODS: tuple[str, ...] = ("second", "minute", "hour", "day", "month", "year")
EXPIRATION = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "month": 2592000,
    "year": 31536000,
}


def period_start(period: str, now: float) -> int:
    """Start of the calendar window (UTC) that contains ``now``."""
    t = int(now)
    if period == "second":
        return t
    if period == "minute":
        return t - t % 60
    if period == "hour":
        return t - t % 3600
    if period == "day":
        return t - t % 86400
    tm = time.gmtime(t)
    if period == "month":
        return calendar.timegm((tm.tm_year, tm.tm_mon, 1, 0, 0, 0))
    return calendar.timegm((tm.tm_year, 1, 1, 0, 0, 0))


def period_end(period: str, start: int) -> int:
    if period == "month":
        tm = time.gmtime(start)
        year, month = (tm.tm_year + 1, 1) if tm.tm_mon == 12 else (tm.tm_year, tm.tm_mon + 1)
        return calendar.timegm((year, month, 1, 0, 0, 0))
    if period == "year":
        return calendar.timegm((time.gmtime(start).tm_year + 1, 1, 1, 0, 0, 0))
    return start + EXPIRATION[period]


class LocalCounters:
    """In-process counters: ``(plugin id, identifier, period) -> (window start, count)``."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], tuple[int, int]] = {}
        self._last_sweep = 0.0

    def usage(self, key: tuple[str, str, str], start: int) -> int:
        entry = self._counts.get(key)
        if entry is None or entry[0] != start:
            return 0
        return entry[1]

    def increment(self, key: tuple[str, str, str], start: int) -> None:
        entry = self._counts.get(key)
        if entry is None or entry[0] != start:
            self._counts[key] = (start, 1)
        else:
            self._counts[key] = (start, entry[1] + 1)

    def sweep(self, now: float) -> None:
        """Drop windows that ended (at most once a second)."""
        if now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        stale = [k for k, (start, _) in self._counts.items() if period_end(k[2], start) <= now]
        for k in stale:
            del self._counts[k]

    def clear(self) -> None:
        self._counts.clear()


COUNTERS = LocalCounters()


def _check_config(conf: dict[str, Any]) -> str | dict[str, str] | None:
    limits = [(p, conf.get(p)) for p in PERIODS]
    if all(v is None for _, v in limits):
        return "at least one of these fields must be non-empty: " + ", ".join(
            f"'config.{p}'" for p in PERIODS
        )
    previous: tuple[str, float] | None = None
    for period, value in limits:
        if value is None:
            continue
        if previous is not None and value < previous[1]:
            return (
                f"The limit for {period}({float(value):.1f}) cannot be lower than the limit "
                f"for {previous[0]}({float(previous[1]):.1f})"
            )
        previous = (period, value)
    if conf.get("policy") != "local":
        return {
            "policy": f"policy '{conf.get('policy')}' is not supported by this gateway yet; "
            "use 'local'"
        }
    if conf.get("limit_by") == "header" and not conf.get("header_name"):
        return {"header_name": "required field missing"}
    if conf.get("limit_by") == "path" and not conf.get("path"):
        return {"path": "required field missing"}
    return None


_REDIS = Record(
    [
        ("host", String()),
        ("port", Integer(between=(0, 65535), default=6379)),
        ("timeout", Integer(between=(0, 2147483646), default=2000)),
        ("username", String()),
        ("password", String(secret=True)),
        ("database", Integer(default=0)),
        ("ssl", Boolean(default=False, required=True)),
        ("ssl_verify", Boolean(default=False, required=True)),
        ("server_name", String()),
    ],
    required=True,
)


class RateLimiting(Plugin):
    name: ClassVar[str] = "rate-limiting"
    version: ClassVar[str] = VERSION
    priority: ClassVar[int] = 910
    config_schema: ClassVar[Record] = Record(
        [
            *[(p, Number(gt=0)) for p in PERIODS],
            (
                "limit_by",
                String(
                    one_of=(
                        "consumer",
                        "credential",
                        "ip",
                        "service",
                        "header",
                        "path",
                        "consumer-group",
                    ),
                    default="consumer",
                    required=True,
                ),
            ),
            ("header_name", header_name()),
            ("path", String(starts_with="/")),
            (
                "policy",
                String(one_of=("local", "cluster", "redis"), default="local", required=True),
            ),
            ("fault_tolerant", Boolean(default=True, required=True)),
            ("redis", _REDIS),
            ("hide_client_headers", Boolean(default=False, required=True)),
            ("error_code", Number(gt=0, default=429)),
            ("error_message", String(default="API rate limit exceeded")),
            ("sync_rate", Number(default=-1)),
        ],
        entity_checks=[_check_config],
        required=True,
    )

    def __init__(self, config: dict[str, Any], *, plugin_id: str = "") -> None:
        super().__init__(config, plugin_id=plugin_id or f"instance-{id(self)}")
        self.limits = [(p, float(config[p])) for p in PERIODS if config.get(p) is not None]

    def _identifier(self, ctx: Context) -> str:
        by = self.config["limit_by"]
        ip = ctx.request.forwarded_ip
        if by == "consumer" and ctx.consumer is not None:
            return str(ctx.consumer["id"])
        if by == "credential" and ctx.credential is not None:
            return str(ctx.credential["id"])
        if by == "service" and ctx.service is not None:
            return str(ctx.service["id"])
        if by == "header":
            return ctx.request.headers.get(self.config["header_name"] or "") or ip
        if by == "path":
            if ctx.request.path == self.config["path"]:
                return str(self.config["path"])
            return ip
        return ip

    async def access(self, ctx: Context) -> None:
        now = ctx.now
        COUNTERS.sweep(now)
        ident = self._identifier(ctx)
        route_id = (ctx.route or {}).get("id", "")
        service_id = (ctx.service or {}).get("id", "")
        scope = f"{self.plugin_id}:{route_id}:{service_id}:{ident}"
        stop: str | None = None
        usage: list[tuple[str, float, float, int]] = []  # period, limit, remaining, start
        for period, limit in self.limits:
            start = period_start(period, now)
            used = COUNTERS.usage((scope, ident, period), start)
            remaining = limit - used
            usage.append((period, limit, remaining, start))
            if remaining <= 0 and stop is None:
                stop = period
        headers: dict[str, str] = {}
        reset = 1
        if not self.config["hide_client_headers"] or stop is not None:
            best: tuple[float, int] | None = None
            for period, limit, remaining, start in usage:
                shown = remaining - 1 if stop is None or stop == period else remaining
                shown = max(0.0, shown)
                window = EXPIRATION[period]
                if best is None or shown < best[0] or (shown == best[0] and window > best[1]):
                    best = (shown, window)
                    reset = max(1, period_end(period, start) - int(now))
                    headers["RateLimit-Limit"] = _num(limit)
                    headers["RateLimit-Remaining"] = _num(shown)
                if not self.config["hide_client_headers"]:
                    title = period.capitalize()
                    headers[f"X-RateLimit-Limit-{title}"] = _num(limit)
                    headers[f"X-RateLimit-Remaining-{title}"] = _num(shown)
            headers["RateLimit-Reset"] = str(reset)
            if self.config["hide_client_headers"]:
                headers = {}
        if stop is not None:
            headers["Retry-After"] = str(reset)
            ctx.exit(
                int(self.config["error_code"]), {"message": self.config["error_message"]}, headers
            )
        for period, _, _, start in usage:
            COUNTERS.increment((scope, ident, period), start)
        if headers:
            ctx.shared["rate-limiting.headers"] = headers

    def header_filter(self, ctx: Context) -> None:
        extra = ctx.shared.get("rate-limiting.headers")
        if extra and ctx.response is not None:
            for k, v in extra.items():
                ctx.response.headers.set(k, v)


def _num(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else str(value)
