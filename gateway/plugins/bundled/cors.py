r"""cors: Cross-Origin Resource Sharing headers and preflight answers (Kong's options).

Preflight requests (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) are
answered here with 200 and the CORS headers, unless ``preflight_continue`` sends them
upstream, whose answer then goes back untouched (as Kong). Origins are matched exactly, or as
anchored regular expressions when they contain characters other than letters, digits, ``.``,
``:``, ``/`` and ``-`` (Kong's rule); a regular expression without ``:`` is matched against
the origin's host alone (Kong's ``by_host``), so ``(a|b)\.example\.com`` allows
``https://a.example.com``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

from gateway.plugins._api import Context
from gateway.plugins._plugin import Plugin
from gateway.plugins.bundled._common import VERSION
from gateway.schema import Array, Boolean, Number, Record, String

_METHODS = ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT")
_PLAIN = re.compile(r"^[A-Za-z0-9.:/-]+$")


def _regex_check(value: str) -> str | None:
    if value == "*" or _PLAIN.match(value):
        return None
    try:
        re.compile(value)
    except re.error as exc:
        return f"'{value}' is not a valid regex: {exc}"
    return None


def _normalise_origin(origin: str) -> str:
    origin = origin.lower().rstrip("/")
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin[: -len(port)]
    return origin


def _is_preflight(ctx: Context) -> bool:
    req = ctx.request
    return (
        req.method == "OPTIONS"
        and bool(req.headers.get("origin"))
        and bool(req.headers.get("access-control-request-method"))
    )


def _origin_host(origin: str) -> str | None:
    """The host of an origin (``https://a.example.com:8443`` -> ``a.example.com``)."""
    try:
        return urlsplit(origin).hostname or origin.lower()
    except ValueError:
        return None


class Cors(Plugin):
    name: ClassVar[str] = "cors"
    version: ClassVar[str] = VERSION
    priority: ClassVar[int] = 2000
    no_consumer: ClassVar[bool] = True
    config_schema: ClassVar[Record] = Record(
        [
            ("origins", Array(String(checks=[_regex_check]))),
            ("headers", Array(String())),
            ("exposed_headers", Array(String())),
            (
                "methods",
                Array(String(one_of=_METHODS), default=list(_METHODS)),
            ),
            ("max_age", Number()),
            ("credentials", Boolean(default=False, required=True)),
            ("private_network", Boolean(default=False, required=True)),
            ("preflight_continue", Boolean(default=False, required=True)),
        ],
        required=True,
    )

    def __init__(self, config: dict[str, Any], *, plugin_id: str = "") -> None:
        super().__init__(config, plugin_id=plugin_id)
        origins: list[str] = config.get("origins") or []
        self.any_origin = not origins or "*" in origins
        self.exact = {_normalise_origin(o) for o in origins if _PLAIN.match(o)}
        #: (pattern, matched against the host only)
        self.patterns = [
            (re.compile(o), ":" not in o) for o in origins if o != "*" and not _PLAIN.match(o)
        ]

    def _allowed_origin(self, ctx: Context) -> tuple[str | None, bool]:
        """``(Access-Control-Allow-Origin value, vary_on_origin)``."""
        origin = ctx.request.headers.get("origin")
        if self.any_origin:
            if self.config["credentials"] and origin:
                return origin, True
            return "*", False
        if not origin:
            return None, True
        if _normalise_origin(origin) in self.exact:
            return origin, True
        host: str | None = None
        for pattern, by_host in self.patterns:
            if by_host and host is None:
                host = _origin_host(origin)
            if pattern.fullmatch(host if by_host and host is not None else origin):
                return origin, True
        return None, True

    def _common(self, ctx: Context) -> dict[str, str]:
        headers: dict[str, str] = {}
        origin, vary = self._allowed_origin(ctx)
        if origin is not None:
            headers["Access-Control-Allow-Origin"] = origin
        if vary:
            headers["Vary"] = "Origin"
        if self.config["credentials"] and origin is not None:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers

    async def access(self, ctx: Context) -> None:
        req = ctx.request
        if not _is_preflight(ctx):
            return
        # the response gets no header from header_filter: answered here, or (preflight
        # continue) the service's answer is its own
        ctx.shared["cors.preflight"] = True
        if self.config["preflight_continue"]:
            return
        headers = self._common(ctx)
        conf_headers = self.config.get("headers")
        if conf_headers:
            headers["Access-Control-Allow-Headers"] = ",".join(conf_headers)
        else:
            requested = req.headers.get("access-control-request-headers")
            if requested:
                headers["Access-Control-Allow-Headers"] = requested
        methods = self.config.get("methods") or list(_METHODS)
        headers["Access-Control-Allow-Methods"] = ",".join(methods)
        if self.config.get("max_age") is not None:
            headers["Access-Control-Max-Age"] = str(int(self.config["max_age"]))
        if (
            self.config["private_network"]
            and req.headers.get("access-control-request-private-network") == "true"
        ):
            headers["Access-Control-Allow-Private-Network"] = "true"
        ctx.exit(200, b"", headers)

    def header_filter(self, ctx: Context) -> None:
        response = ctx.response
        if response is None:
            return
        if ctx.shared.get("cors.preflight"):
            return
        for name, value in self._common(ctx).items():
            if name == "Vary":
                existing = response.headers.get("vary")
                if existing and "origin" not in existing.lower():
                    value = existing + ", Origin"
                elif existing:
                    continue
            response.headers.set(name, value)
        exposed = self.config.get("exposed_headers")
        if exposed:
            response.headers.set("Access-Control-Expose-Headers", ",".join(exposed))
