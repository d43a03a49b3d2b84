"""cors: Cross-Origin Resource Sharing headers and preflight answers (Kong's options).

Preflight requests (``OPTIONS`` with ``Access-Control-Request-Method``) are answered here
with 200 and the CORS headers, unless ``preflight_continue`` sends them upstream. Origins
are matched exactly, or as anchored regular expressions when they contain characters other
than letters, digits, ``.``, ``:``, ``/`` and ``-`` (Kong's rule).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

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
        self.patterns = [re.compile(o) for o in origins if o != "*" and not _PLAIN.match(o)]

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
        for pattern in self.patterns:
            if pattern.fullmatch(origin):
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
        if req.method != "OPTIONS" or not req.headers.get("access-control-request-method"):
            return
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
        req = ctx.request
        preflight = req.method == "OPTIONS" and req.headers.get("access-control-request-method")
        if preflight and not self.config["preflight_continue"]:
            return  # answered in access
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
