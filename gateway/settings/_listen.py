"""Kong's listen syntax (``0.0.0.0:8443 http2 ssl reuseport backlog=16384, [::1]:8001``).

A listen value is ``off`` or a comma-separated list of entries; each entry is an address
(``host:port``, ``[ipv6]:port``) followed by space-separated flags. Port 0 is accepted in
listen values (tests bind ephemeral ports), not in endpoints.

NOTE: Kong ignores an unknown flag; we refuse it, so that ``tls`` for ``ssl`` is caught
(pinned by ``test_listen_refused``).
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from gateway.settings._values import InvalidValue, type_name

__all__ = ["Endpoint", "ListenAddress", "parse_endpoint", "parse_endpoints", "parse_listen"]

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_KEEPALIVE = re.compile(r"^(?:on|off|\d*[smhd]?:\d*[smhd]?:\d*)$")

LISTEN_FORM = (
    "[off] | <ip>:<port> [ssl] [http2] [proxy_protocol] [deferred] [bind] [reuseport] "
    "[backlog=N] [ipv6only=on|off] [so_keepalive=on|off|idle:intvl:cnt], [... next entry ...]"
)


@attrs.frozen(kw_only=True)
class ListenAddress:
    """One listen entry. ``host`` is an IP address or a name, without IPv6 brackets."""

    host: str
    port: int
    ssl: bool = False
    http2: bool = False
    reuseport: bool = False
    backlog: int | None = None
    proxy_protocol: bool = False
    deferred: bool = False
    bind: bool = False
    ipv6only: bool | None = None
    so_keepalive: str | None = None

    def __str__(self) -> str:
        parts = [_join_host_port(self.host, self.port)]
        for flag in ("ssl", "http2", "proxy_protocol", "deferred", "bind", "reuseport"):
            if getattr(self, flag):
                parts.append(flag)
        if self.backlog is not None:
            parts.append(f"backlog={self.backlog}")
        if self.ipv6only is not None:
            parts.append(f"ipv6only={'on' if self.ipv6only else 'off'}")
        if self.so_keepalive is not None:
            parts.append(f"so_keepalive={self.so_keepalive}")
        return " ".join(parts)


@attrs.frozen(kw_only=True)
class Endpoint:
    """A ``host:port`` the node connects to (``cluster_control_plane``, telemetry)."""

    host: str
    port: int

    def __str__(self) -> str:
        return _join_host_port(self.host, self.port)


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(text: str, *, allow_port_zero: bool) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); raises InvalidValue."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise InvalidValue(f"invalid address {text!r}")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError(host)
        except ValueError:
            raise InvalidValue(f"invalid IPv6 address {host!r} in {text!r}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise InvalidValue(f"missing port in {text!r}")
        if ":" in host:
            raise InvalidValue(f"IPv6 addresses must be written in brackets: {text!r}")
        if not _is_ipv4(host) and not _HOSTNAME.match(host):
            raise InvalidValue(f"invalid host {host!r} in {text!r}")
    if not port_text.isdigit():
        raise InvalidValue(f"invalid port {port_text!r} in {text!r}")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise InvalidValue(f"port {port} out of range {low}-65535 in {text!r}")
    return host, port


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _entries(value: object) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [str(v).strip() for v in value]
    raise InvalidValue(f"expected a string or a list of strings, got {type_name(value)}")


def parse_listen(value: object) -> tuple[ListenAddress, ...]:
    """Parse a listen value; ``off`` (or an empty list) gives ``()``."""
    entries = _entries(value)
    if entries == ["off"] or entries == []:
        return ()
    result: list[ListenAddress] = []
    for entry in entries:
        if not entry:
            raise InvalidValue(f"empty entry; must be of form: {LISTEN_FORM}")
        if entry == "off":
            raise InvalidValue("'off' cannot be combined with addresses")
        address, *flags = entry.split()
        try:
            host, port = _split_host_port(address, allow_port_zero=True)
        except InvalidValue as exc:
            raise InvalidValue(f"{exc}; must be of form: {LISTEN_FORM}") from None
        options: dict[str, object] = {}
        for flag in flags:
            name, eq, arg = flag.partition("=")
            if not eq and name in (
                "ssl",
                "http2",
                "proxy_protocol",
                "deferred",
                "bind",
                "reuseport",
            ):
                options[name] = True
            elif name == "backlog" and arg.isdigit() and int(arg) > 0:
                options["backlog"] = int(arg)
            elif name == "ipv6only" and arg in ("on", "off"):
                options["ipv6only"] = arg == "on"
            elif name == "so_keepalive" and _KEEPALIVE.match(arg):
                options["so_keepalive"] = arg
            else:
                raise InvalidValue(f"unknown listen flag {flag!r}; must be of form: {LISTEN_FORM}")
        result.append(ListenAddress(host=host, port=port, **options))  # type: ignore[arg-type]
    return tuple(result)


def parse_endpoint(value: object) -> Endpoint:
    """Parse one ``host:port`` (port 1-65535)."""
    if not isinstance(value, str):
        raise InvalidValue(f"expected a string host:port, got {type_name(value)}")
    host, port = _split_host_port(value.strip(), allow_port_zero=False)
    return Endpoint(host=host, port=port)


def parse_endpoints(value: object) -> tuple[Endpoint, ...]:
    """Parse one or several comma-separated ``host:port`` (at least one)."""
    entries = [e for e in _entries(value) if e]
    if not entries:
        raise InvalidValue("at least one host:port is required")
    return tuple(parse_endpoint(e) for e in entries)
