"""How a data plane reaches its control plane: directly, or through a forward proxy.

With ``cluster_use_proxy = on`` the data plane opens its cluster connections (sync and
telemetry) through ``proxy_server`` with an HTTP ``CONNECT`` tunnel, as Kong does; the
mutual TLS handshake with the control plane then runs inside the tunnel, so the proxy sees
only ciphertext. An ``https://`` proxy is itself reached over TLS (verified unless
``proxy_server_ssl_verify = off``). Credentials in the proxy URL are sent as
``Proxy-Authorization: Basic`` and never logged.
"""

from __future__ import annotations

import base64
import ssl
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import trio

from gateway.cluster._tls import (
    ClusterPeer,
    ClusterPeerRejected,
    ClusterTLS,
    connect_cluster_peer,
)
from gateway.settings import Endpoint

__all__ = ["DialFailed", "ProxyTunnelError", "dial_control_plane", "open_cluster_transport"]

_MAX_RESPONSE_HEAD = 16 * 1024


class ProxyTunnelError(OSError):
    """The forward proxy refused or broke the tunnel (the message says how)."""


async def open_cluster_transport(
    host: str,
    port: int,
    *,
    proxy_server: str | None = None,
    proxy_ssl_verify: bool = True,
) -> trio.abc.Stream:
    """A byte stream to ``host:port``, tunnelled through ``proxy_server`` when given.

    Timeouts belong to the caller. Raises ``OSError`` (``ProxyTunnelError`` for refusals).
    """
    if not proxy_server:
        return await trio.open_tcp_stream(host, port)
    url = urlsplit(proxy_server)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ProxyTunnelError(f"unsupported proxy_server URL scheme {url.scheme!r}")
    proxy_port = url.port or (443 if url.scheme == "https" else 80)
    stream: trio.abc.Stream = await trio.open_tcp_stream(url.hostname, proxy_port)
    try:
        if url.scheme == "https":
            context = ssl.create_default_context()
            if not proxy_ssl_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            tls = trio.SSLStream(stream, context, server_hostname=url.hostname)
            await tls.do_handshake()
            stream = tls
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if url.username is not None:
            credentials = f"{unquote(url.username)}:{unquote(url.password or '')}"
            token = base64.b64encode(credentials.encode()).decode()
            lines.append(f"Proxy-Authorization: Basic {token}")
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise ProxyTunnelError(f"proxy {url.hostname}:{proxy_port} closed the tunnel")
            head += chunk
            if len(head) > _MAX_RESPONSE_HEAD:
                raise ProxyTunnelError("proxy sent an oversized response head")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or parts[1] != "200":
            raise ProxyTunnelError(
                f"proxy {url.hostname}:{proxy_port} refused CONNECT {authority}: {status_line}"
            )
        extra = head.split(b"\r\n\r\n", 1)[1]
        if extra:
            # The control plane speaks only after our ClientHello: nothing may follow yet.
            raise ProxyTunnelError("proxy sent data before the tunnel was used")
        return stream
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


class DialFailed(Exception):
    """No authenticated link to the control plane; ``reason`` is for the log and /status."""

    def __init__(self, reason: str, *, logged: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        #: True when ``connect_cluster_peer`` already logged the refusal
        self.logged = logged


async def dial_control_plane(
    endpoint: Endpoint,
    tls: ClusterTLS,
    *,
    server_name: str | None,
    timeout: float,
    proxy_server: str | None = None,
    proxy_ssl_verify: bool = True,
) -> tuple[ClusterPeer, str | None]:
    """TCP (or a proxy tunnel), then mutual TLS with the policy checks, each within
    ``timeout``. Returns the peer and the server name used (PKI mode defaults it to the
    endpoint's host). Raises :class:`DialFailed`; the data plane's sync and telemetry
    clients both dial through here."""
    address = str(endpoint)
    try:
        with trio.fail_after(timeout):
            tcp = await open_cluster_transport(
                endpoint.host,
                endpoint.port,
                proxy_server=proxy_server,
                proxy_ssl_verify=proxy_ssl_verify,
            )
    except (OSError, trio.TooSlowError) as exc:
        raise DialFailed(f"cannot connect to {address}: {exc or 'timed out'}") from exc
    if server_name is None and tls.mode == "pki":
        server_name = endpoint.host
    try:
        with trio.fail_after(timeout):
            peer = await connect_cluster_peer(
                tcp, tls, now=datetime.now(UTC), server_name=server_name, peer=address
            )
    except ClusterPeerRejected as exc:
        raise DialFailed(f"TLS with {address} failed: {exc.reason}", logged=True) from exc
    except trio.TooSlowError as exc:
        await trio.aclose_forcefully(tcp)
        raise DialFailed(f"TLS handshake with {address} timed out") from exc
    return peer, server_name
