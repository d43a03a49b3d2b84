"""ip-restriction: allow or deny clients by IP address or CIDR range (Kong's options).

The client address is the one the proxy computed from ``trusted_ips`` and
``real_ip_header`` (Kong's ``forwarded_ip``). A deny match refuses; with an allow list, an
address outside it is refused. Refusals answer ``status`` (403) with ``{"message": message}``.
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

from gateway.plugins._api import Context
from gateway.plugins._plugin import Plugin
from gateway.plugins.bundled._common import VERSION, ip_or_cidr_check
from gateway.schema import Array, Integer, Record, String

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _one_of_lists(conf: dict[str, Any]) -> str | None:
    if not conf.get("allow") and not conf.get("deny"):
        return "at least one of these fields must be non-empty: 'config.allow', 'config.deny'"
    return None


class IpRestriction(Plugin):
    name: ClassVar[str] = "ip-restriction"
    version: ClassVar[str] = VERSION
    priority: ClassVar[int] = 990
    protocols: ClassVar[tuple[str, ...]] = (
        "grpc",
        "grpcs",
        "http",
        "https",
        "tcp",
        "tls",
        "ws",
        "wss",
    )
    config_schema: ClassVar[Record] = Record(
        [
            ("allow", Array(String(checks=[ip_or_cidr_check]))),
            ("deny", Array(String(checks=[ip_or_cidr_check]))),
            ("status", Integer(between=(100, 599))),
            ("message", String()),
        ],
        entity_checks=[_one_of_lists],
        required=True,
    )

    def __init__(self, config: dict[str, Any], *, plugin_id: str = "") -> None:
        super().__init__(config, plugin_id=plugin_id)
        self.allow: list[Network] = [
            ipaddress.ip_network(v, strict=False) for v in config.get("allow") or []
        ]
        self.deny: list[Network] = [
            ipaddress.ip_network(v, strict=False) for v in config.get("deny") or []
        ]

    async def access(self, ctx: Context) -> None:
        try:
            ip = ipaddress.ip_address(ctx.request.forwarded_ip)
        except ValueError:
            self._refuse(ctx)
            return
        if any(ip in net for net in self.deny):
            self._refuse(ctx)
        if self.allow and not any(ip in net for net in self.allow):
            self._refuse(ctx)

    def _refuse(self, ctx: Context) -> None:
        status = self.config.get("status") or 403
        message = self.config.get("message") or "Your IP address is not allowed"
        ctx.exit(status, {"message": message})
