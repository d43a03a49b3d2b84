"""The ``Settings`` class and the metadata of every key (``KEYS``).

Each attribute of ``Settings`` is declared with ``_setting(...)``, which keeps the key's
default (written as it would be in a file), parser, type, documentation, roles and secrecy in
the attrs field metadata. ``KEYS`` is built from those fields, so the class, the loader and
the reference documentation cannot drift apart.

Constructing ``Settings`` directly fills defaults but runs no cross-key rules; use
``load_settings`` for a checked object.
"""

# _setting() returns an attrs field specifier (like attrs.field), not a shared default.
# ruff: noqa: RUF009

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

import attrs

from gateway.settings._listen import (
    Endpoint,
    ListenAddress,
    parse_endpoint,
    parse_endpoints,
    parse_listen,
)
from gateway.settings._values import (
    LogTarget,
    Network,
    parse_bool,
    parse_choice,
    parse_float,
    parse_header_buffers,
    parse_headers,
    parse_int,
    parse_labels,
    parse_log_target,
    parse_node_id,
    parse_optional_path,
    parse_optional_str,
    parse_path,
    parse_size,
    parse_str,
    parse_str_list,
    parse_trusted_ips,
    parse_worker_processes,
)

__all__ = ["KEYS", "ROLES", "Key", "Role", "Settings"]

T = TypeVar("T")
Role = Literal["traditional", "control_plane", "data_plane"]
ROLES: tuple[Role, ...] = ("traditional", "control_plane", "data_plane")
Database = Literal["sqlite", "postgres", "off"]
JSON: TypeAlias = str | int | float | bool | list["JSON"] | dict[str, "JSON"] | None

_META = "gateway.settings.key"
_ALL: tuple[Role, ...] = ROLES
_CP: tuple[Role, ...] = ("control_plane",)
_DP: tuple[Role, ...] = ("data_plane",)
_HYBRID: tuple[Role, ...] = ("control_plane", "data_plane")
_PROXYING: tuple[Role, ...] = ("traditional", "data_plane")
_WITH_DB: tuple[Role, ...] = ("traditional", "control_plane")
_MASK = "******"


@attrs.frozen(kw_only=True)
class Key:
    """Metadata of one setting key."""

    name: str
    default: str  # as written in a file; "" means unset, "<prefix>/..." a derived default
    type: str  # for people: "integer (bytes)", "listen addresses", ...
    doc: str
    roles: tuple[Role, ...]  # where the key has an effect
    secret: bool  # redacted by ``Settings.redacted()``
    parse: Callable[[object], object] = attrs.field(eq=False, repr=False)
    redact: Callable[[object], object] | None = attrs.field(default=None, eq=False, repr=False)


def _setting(
    default: str,
    parse: Callable[[object], T],
    *,
    type: str,
    doc: str,
    roles: tuple[Role, ...] = _ALL,
    redact: Callable[[object], object] | None = None,
    derived: Callable[[Any], T] | None = None,
    doc_default: str | None = None,
) -> Any:
    key = Key(
        name="",  # filled in when KEYS is built
        default=default if doc_default is None else doc_default,
        type=type,
        doc=doc,
        roles=roles,
        secret=redact is not None,
        parse=parse,
        redact=redact,
    )
    metadata = {_META: key}
    if derived is not None:
        return attrs.field(default=attrs.Factory(derived, takes_self=True), metadata=metadata)
    value = parse(default)
    return attrs.field(default=value, metadata=metadata, hash=not isinstance(value, Mapping))


def _is_inline_pem(text: str) -> bool:
    """PEM text or (probably) base64 of it, rather than a path; errs on the side of masking."""
    if "\n" in text or "-----BEGIN" in text or text.lstrip().startswith("LS0t"):
        return True  # "LS0t" is base64 of "---"
    return len(text) > 200 and not any(c.isspace() for c in text)


def _redact_always(value: object) -> object:
    return None if value is None else _MASK


def _redact_inline(value: object) -> object:
    """Key material: paths are shown, inline PEM or base64 is masked."""
    if isinstance(value, str):
        return _MASK if _is_inline_pem(value) else value
    if isinstance(value, tuple):
        return tuple(_redact_inline(v) for v in value)
    return value


def _redact_url(value: object) -> object:
    """Mask the password of ``scheme://user:password@host``."""
    if not isinstance(value, str):
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return _MASK
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return value
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{_MASK}@{hostport}"))


def _prefix_default(_: object) -> Path:
    return Path.cwd() / "gateway-prefix"


def _absolute_path(value: object) -> Path:
    return parse_path(value).absolute()


_LISTEN_TYPE = "listen addresses (or off)"
_CERT_TYPE = "list of certificates (path, inline PEM or base64 PEM)"
_KEY_TYPE = "list of private keys (path, inline PEM or base64 PEM)"
_LOG_TYPE = "log target: off, stdout, stderr or a path (relative to prefix)"


@attrs.frozen(kw_only=True)
class Settings:
    """Every setting of a node; attribute names are the kong.conf-style keys."""

    # -- general ----------------------------------------------------------------------------
    prefix: Path = _setting(
        "",
        _absolute_path,
        type="path",
        doc="Working directory of the node: logs, node id, DP config cache, SQLite database. "
        "A relative path is resolved against the current directory at start.",
        derived=_prefix_default,
        doc_default="./gateway-prefix",
    )
    role: Role = _setting(
        "traditional",
        parse_choice(*ROLES),
        type="traditional | control_plane | data_plane",
        doc="traditional: one node does everything; control_plane: owns the configuration "
        "and pushes it to data planes, never proxies; data_plane: receives its "
        "configuration from a control plane and proxies.",
    )
    node_id: uuid.UUID | None = _setting(
        "",
        parse_node_id,
        type="UUID (optional)",
        doc="Fixed node id. Unset: a data plane generates one and keeps it in a file under "
        "the prefix, so that it survives restarts.",
    )
    worker_processes: int = _setting(
        "auto",
        parse_worker_processes,
        type="auto | integer >= 1",
        doc="Number of worker processes; auto means one per CPU this process may run on "
        "(its CPU affinity, e.g. a cpuset; not a CPU quota).",
    )
    worker_shutdown_timeout: float = _setting(
        "10",
        parse_float(allow_zero=True),
        type="number (seconds)",
        doc="On SIGTERM, SIGQUIT or SIGINT the proxy stops accepting and lets requests in "
        "flight finish for at most this long, then closes what is left and exits "
        "(nginx's worker_shutdown_timeout). 0: close at once.",
        roles=_PROXYING,
    )
    log_level: Literal["debug", "info", "notice", "warn", "error", "crit", "alert", "emerg"] = (
        _setting(
            "notice",
            parse_choice("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg"),
            type="debug | info | notice | warn | error | crit | alert | emerg",
            doc="Minimum severity written to the error logs.",
        )
    )
    proxy_access_log: LogTarget = _setting(
        "logs/access.log",
        parse_log_target,
        type=_LOG_TYPE,
        doc="Access log of the proxy listeners: one line per request in Kong's "
        "kong_log_format (nginx's combined, then kong_request_id), written by every worker "
        "process (docs/reference/proxy.md#access-log).",
        roles=_PROXYING,
    )
    proxy_error_log: LogTarget = _setting(
        "logs/error.log", parse_log_target, type=_LOG_TYPE, doc="Error log of the proxy."
    )
    admin_access_log: LogTarget = _setting(
        "logs/admin_access.log",
        parse_log_target,
        type=_LOG_TYPE,
        doc="Access log of the Admin API: one line per request in nginx's combined format.",
        roles=_WITH_DB,
    )
    admin_error_log: LogTarget = _setting(
        "logs/error.log",
        parse_log_target,
        type=_LOG_TYPE,
        doc="Error log of the Admin API.",
        roles=_WITH_DB,
    )
    status_access_log: LogTarget = _setting(
        "off",
        parse_log_target,
        type=_LOG_TYPE,
        doc="Access log of the Status API: one line per request in nginx's combined format.",
    )
    status_error_log: LogTarget = _setting(
        "logs/status_error.log",
        parse_log_target,
        type=_LOG_TYPE,
        doc="Error log of the Status API.",
    )

    # -- storage ----------------------------------------------------------------------------
    database: Database = _setting(
        "sqlite",
        parse_choice("sqlite", "postgres", "off"),
        type="sqlite | postgres | off",
        doc="Where entities are stored. off: in memory only (DB-less; required on data "
        "planes, refused on control planes).",
    )
    sqlite_path: Path = _setting(
        "",
        parse_path,
        type="path",
        doc="SQLite database file (database = sqlite).",
        roles=_WITH_DB,
        derived=lambda self: self.prefix / "gateway.db",
        doc_default="<prefix>/gateway.db",
    )
    declarative_config: Path | None = _setting(
        "",
        parse_optional_path,
        type="path (optional)",
        doc="Declarative configuration (kong.yml format) loaded at start when database = off.",
        roles=_PROXYING,
    )
    pg_host: str = _setting(
        "127.0.0.1", parse_str, type="string", doc="PostgreSQL host.", roles=_WITH_DB
    )
    pg_port: int = _setting(
        "5432", parse_int(1, 65535), type="integer", doc="PostgreSQL port.", roles=_WITH_DB
    )
    pg_user: str = _setting(
        "kong", parse_str, type="string", doc="PostgreSQL user.", roles=_WITH_DB
    )
    pg_password: str | None = _setting(
        "",
        parse_optional_str,
        type="string (secret)",
        doc="PostgreSQL password.",
        roles=_WITH_DB,
        redact=_redact_always,
    )
    pg_database: str = _setting(
        "kong", parse_str, type="string", doc="PostgreSQL database name.", roles=_WITH_DB
    )
    pg_schema: str | None = _setting(
        "",
        parse_optional_str,
        type="string (optional)",
        doc="PostgreSQL schema; unset means the server's search_path.",
        roles=_WITH_DB,
    )
    pg_ssl: bool = _setting(
        "off", parse_bool, type="boolean", doc="Use TLS to reach PostgreSQL.", roles=_WITH_DB
    )
    pg_ssl_verify: bool = _setting(
        "off",
        parse_bool,
        type="boolean",
        doc="Verify the PostgreSQL server certificate against ssl_trusted_certificate "
        "(needs pg_ssl = on).",
        roles=_WITH_DB,
    )
    pg_timeout: int = _setting(
        "5000",
        parse_int(1),
        type="integer (milliseconds, as in kong.conf)",
        doc="Connect, read and write timeout for PostgreSQL.",
        roles=_WITH_DB,
    )
    pg_max_concurrent_queries: int = _setting(
        "0",
        parse_int(0),
        type="integer",
        doc="Maximum concurrent PostgreSQL queries per worker; 0 means unlimited.",
        roles=_WITH_DB,
    )
    db_update_frequency: float = _setting(
        "5",
        parse_float(),
        type="number (seconds)",
        doc="How often a node polls the database for changes made by other nodes sharing it "
        "(several control planes on one PostgreSQL).",
        roles=_WITH_DB,
    )
    db_update_propagation: float = _setting(
        "0",
        parse_float(allow_zero=True),
        type="number (seconds)",
        doc="Extra delay before acting on a change, for eventually consistent replicated "
        "databases.",
        roles=_WITH_DB,
    )

    # -- listeners --------------------------------------------------------------------------
    proxy_listen: tuple[ListenAddress, ...] = _setting(
        "0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2 ssl reuseport backlog=16384",
        parse_listen,
        type=_LISTEN_TYPE,
        doc="Addresses the proxy listens on. Required on data planes; ignored on control planes.",
        roles=_PROXYING,
    )
    admin_listen: tuple[ListenAddress, ...] = _setting(
        "127.0.0.1:8001 reuseport backlog=16384, 127.0.0.1:8444 http2 ssl reuseport backlog=16384",
        parse_listen,
        type=_LISTEN_TYPE,
        doc="Addresses of the Admin API. Required on control planes.",
        roles=_WITH_DB,
    )
    status_listen: tuple[ListenAddress, ...] = _setting(
        "off",
        parse_listen,
        type=_LISTEN_TYPE,
        doc="Addresses of the read-only Status API (/status, /status/ready, /metrics).",
    )
    ssl_cert: tuple[str, ...] = _setting(
        "",
        parse_str_list,
        type=_CERT_TYPE,
        doc="Default certificate(s) of the proxy's ssl listeners; unset: a self-signed "
        "certificate is generated under the prefix.",
        roles=_PROXYING,
    )
    ssl_cert_key: tuple[str, ...] = _setting(
        "",
        parse_str_list,
        type=_KEY_TYPE + " (secret when inline)",
        doc="Keys of ssl_cert, in the same order.",
        roles=_PROXYING,
        redact=_redact_inline,
    )
    admin_ssl_cert: tuple[str, ...] = _setting(
        "",
        parse_str_list,
        type=_CERT_TYPE,
        doc="Certificate(s) of the Admin API's ssl listeners.",
        roles=_WITH_DB,
    )
    admin_ssl_cert_key: tuple[str, ...] = _setting(
        "",
        parse_str_list,
        type=_KEY_TYPE + " (secret when inline)",
        doc="Keys of admin_ssl_cert.",
        roles=_WITH_DB,
        redact=_redact_inline,
    )
    status_ssl_cert: tuple[str, ...] = _setting(
        "",
        parse_str_list,
        type=_CERT_TYPE,
        doc="Certificate(s) of the Status API's ssl listeners.",
    )
    status_ssl_cert_key: tuple[str, ...] = _setting(
        "",
        parse_str_list,
        type=_KEY_TYPE + " (secret when inline)",
        doc="Keys of status_ssl_cert.",
        redact=_redact_inline,
    )
    headers: tuple[str, ...] = _setting(
        "server_tokens, latency_tokens, X-Kong-Request-Id",
        parse_headers,
        type="comma-separated list of header names, or off",
        doc="Headers the gateway adds to responses (Kong's names: server_tokens, "
        "latency_tokens, Server, Via, X-Kong-Proxy-Latency, X-Kong-Response-Latency, "
        "X-Kong-Upstream-Latency, X-Kong-Admin-Latency, X-Kong-Upstream-Status, "
        "X-Kong-Request-Id, X-Kong-Admin-Request-ID).",
        roles=_PROXYING,
    )
    trusted_ips: tuple[Network, ...] = _setting(
        "",
        parse_trusted_ips,
        type="comma-separated IPs / CIDR ranges",
        doc="Clients whose X-Forwarded-* and real_ip_header headers are trusted. "
        "0.0.0.0/0,::/0 trusts everyone.",
        roles=_PROXYING,
    )
    real_ip_header: str = _setting(
        "X-Real-IP",
        parse_str,
        type="string (header name or proxy_protocol)",
        doc="Header carrying the client address when the peer is in trusted_ips.",
        roles=_PROXYING,
    )
    real_ip_recursive: bool = _setting(
        "off",
        parse_bool,
        type="boolean",
        doc="Take the last untrusted address of real_ip_header instead of the last one.",
        roles=_PROXYING,
    )
    client_max_body_size: int = _setting(
        "0",
        parse_size,
        type="size (bytes, k, m, g)",
        doc="Largest request body accepted (413 above); 0 means unlimited.",
        roles=_PROXYING,
    )
    client_body_buffer_size: int = _setting(
        "8k",
        parse_size,
        type="size (bytes, k, m, g)",
        doc="Request bodies up to this size are buffered in memory.",
        roles=_PROXYING,
    )
    client_header_buffer_size: int = _setting(
        "1k",
        parse_size,
        type="size (bytes, k, m, g)",
        doc="Initial buffer for request headers.",
    )
    large_client_header_buffers: tuple[int, int] = _setting(
        "4 8k",
        parse_header_buffers,
        type="<number> <size>",
        doc="Limits of request headers: at most <number> buffers; a request line or a header "
        "longer than <size> is refused (414 / 494).",
    )
    upstream_keepalive_pool_size: int = _setting(
        "512",
        parse_int(0),
        type="integer",
        doc="Idle upstream connections kept per pool; 0 disables keepalive.",
        roles=_PROXYING,
    )
    upstream_keepalive_max_requests: int = _setting(
        "10000",
        parse_int(0),
        type="integer",
        doc="Requests sent over one upstream connection before it is closed; 0 means no limit.",
        roles=_PROXYING,
    )
    upstream_keepalive_idle_timeout: float = _setting(
        "60",
        parse_float(allow_zero=True),
        type="number (seconds)",
        doc="Idle upstream connections are closed after this; 0 means no timeout.",
        roles=_PROXYING,
    )
    proxy_http_parser: Literal["httptools", "h11", "fast"] = _setting(
        "httptools",
        parse_choice("httptools", "h11", "fast"),
        type="httptools | h11 | fast",
        doc=(
            "HTTP/1.1 parser of the proxy. `httptools` (llhttp, Node.js's parser; the default) "
            "is well kept and, in the compiled build, the cheapest per request; `h11` is the "
            "pure-Python reference; `fast` is our own regex head parser (the cheapest in the "
            "pure-Python build). All three pass the same request-smuggling and conformance "
            "suite; our own framing checks run on top of each."
        ),
        roles=_PROXYING,
    )
    ssl_trusted_certificate: tuple[str, ...] = _setting(
        "system",
        parse_str_list,
        type="list of certificates (system, path, inline PEM or base64 PEM)",
        doc="CA certificates trusted for upstream TLS (Kong's lua_ssl_trusted_certificate); "
        "system means the OS store. On a data plane, cluster_cert (shared) or "
        "cluster_ca_cert (pki) is appended after these entries.",
    )

    # -- clustering -------------------------------------------------------------------------
    cluster_listen: tuple[ListenAddress, ...] = _setting(
        "0.0.0.0:8005",
        parse_listen,
        type=_LISTEN_TYPE,
        doc="Where the control plane accepts data plane connections (always mTLS).",
        roles=_CP,
    )
    cluster_telemetry_listen: tuple[ListenAddress, ...] = _setting(
        "0.0.0.0:8006",
        parse_listen,
        type=_LISTEN_TYPE,
        doc="Where the control plane accepts data plane telemetry (always mTLS); off "
        "disables telemetry.",
        roles=_CP,
    )
    cluster_control_plane: tuple[Endpoint, ...] = _setting(
        "127.0.0.1:8005",
        parse_endpoints,
        type="comma-separated host:port",
        doc="Control plane(s) a data plane connects to; with several, it tries them in turn.",
        roles=_DP,
    )
    cluster_telemetry_endpoint: Endpoint = _setting(
        "127.0.0.1:8006",
        parse_endpoint,
        type="host:port",
        doc="Control plane telemetry endpoint a data plane reports to.",
        roles=_DP,
    )
    cluster_mtls: Literal["shared", "pki"] = _setting(
        "shared",
        parse_choice("shared", "pki"),
        type="shared | pki",
        doc="shared: CP and DPs use the same certificate; pki: certificates issued by "
        "cluster_ca_cert.",
        roles=_HYBRID,
    )
    cluster_cert: str | None = _setting(
        "",
        parse_optional_str,
        type="certificate (path, inline PEM or base64 PEM)",
        doc="Certificate of the cluster link (leaf first, then intermediates). Required on "
        "control and data planes.",
        roles=_HYBRID,
    )
    cluster_cert_key: str | None = _setting(
        "",
        parse_optional_str,
        type="private key (path, inline PEM or base64 PEM; secret when inline)",
        doc="Private key of cluster_cert. Required on control and data planes.",
        roles=_HYBRID,
        redact=_redact_inline,
    )
    cluster_ca_cert: str | None = _setting(
        "",
        parse_optional_str,
        type="certificate (path, inline PEM or base64 PEM)",
        doc="Root CA of the cluster (pki mode; required on the control plane). Must be the "
        "root, not an intermediate.",
        roles=_HYBRID,
    )
    cluster_server_name: str | None = _setting(
        "",
        parse_optional_str,
        type="string (optional)",
        doc="SNI and name a data plane expects in the control plane certificate; unset: "
        "kong_clustering in shared mode, the control plane host in pki mode.",
        roles=_DP,
    )
    cluster_telemetry_server_name: str | None = _setting(
        "",
        parse_optional_str,
        type="string (optional)",
        doc="SNI for the telemetry connection; unset: cluster_server_name.",
        roles=_DP,
        doc_default="<cluster_server_name>",
    )
    cluster_ocsp: Literal["off", "on", "optional"] = _setting(
        "off",
        parse_choice("off", "on", "optional"),
        type="off | on | optional",
        doc="OCSP check of data plane certificates (pki mode only). on: refuse when the check "
        "fails; optional: refuse revoked certificates, allow when the responder fails.",
        roles=_CP,
    )
    cluster_ocsp_timeout: float = _setting(
        "5",
        parse_float(),
        type="number (seconds)",
        doc="Timeout of one OCSP request.",
        roles=_CP,
    )
    cluster_ocsp_recheck_interval: float = _setting(
        "3600",
        parse_float(allow_zero=True),
        type="number (seconds)",
        doc="How often the OCSP status of connected data planes is checked again (cached "
        "responses are reused until their nextUpdate); 0 checks only at connect.",
        roles=_CP,
    )
    cluster_max_payload: int = _setting(
        "16777216",
        parse_int(4194304, below_minimum="must be 4194304 (4MB) or greater"),
        type="integer (bytes)",
        doc="Largest configuration payload exchanged on the cluster link.",
        roles=_HYBRID,
    )
    cluster_data_plane_purge_delay: int = _setting(
        "1209600",
        parse_int(60, below_minimum="must be 60 or greater"),
        type="integer (seconds)",
        doc="How long a data plane that stopped reporting stays in /clustering/data-planes.",
        roles=_CP,
    )
    cluster_dp_labels: Mapping[str, str] = _setting(
        "",
        parse_labels,
        type="comma-separated key:value (or a TOML table)",
        doc="Labels a data plane reports to its control plane. At most 10; keys and values "
        "1-63 characters, starting and ending with a letter or digit, inner characters "
        "letters, digits, _ . : -; keys must not start with kong, konnect, insomnia, mesh "
        "or kic (any case).",
        roles=_DP,
    )
    cluster_use_proxy: bool = _setting(
        "off",
        parse_bool,
        type="boolean",
        doc="Connect to the control plane through proxy_server (HTTP CONNECT).",
        roles=_DP,
    )
    proxy_server: str | None = _setting(
        "",
        parse_optional_str,
        type="URL http(s)://[user:password@]host[:port] (password secret)",
        doc="Forward proxy for cluster connections (cluster_use_proxy). Percent-encode "
        "reserved characters of the password (# as %23).",
        roles=_DP,
        redact=_redact_url,
    )
    # NOTE: on by default (a safer default than kong.conf's off for an https proxy).
    proxy_server_ssl_verify: bool = _setting(
        "on",
        parse_bool,
        type="boolean",
        doc="Verify the certificate of an https proxy_server against ssl_trusted_certificate.",
        roles=_DP,
    )
    cluster_heartbeat_interval: float = _setting(
        "30",
        parse_float(),
        type="number (seconds)",
        doc="How often a data plane sends a heartbeat (with its configuration hash).",
        roles=_HYBRID,
    )
    cluster_heartbeat_timeout: float = _setting(
        "45",
        parse_float(),
        type="number (seconds)",
        doc="A cluster connection silent for this long is closed; must exceed "
        "cluster_heartbeat_interval.",
        roles=_HYBRID,
    )
    cluster_sync_coalesce: float = _setting(
        "0.1",
        parse_float(allow_zero=True),
        type="number (seconds)",
        doc="A control plane waits this long after a change before pushing, so that "
        "changes made together travel in one push.",
        roles=_CP,
    )
    cluster_reconnect_backoff_min: float = _setting(
        "1",
        parse_float(),
        type="number (seconds)",
        doc="First reconnect delay of a data plane (exponential backoff with full jitter).",
        roles=_DP,
    )
    cluster_reconnect_backoff_max: float = _setting(
        "30",
        parse_float(),
        type="number (seconds)",
        doc="Largest reconnect delay; must be >= cluster_reconnect_backoff_min.",
        roles=_DP,
    )
    cluster_cert_expiry_warning: int = _setting(
        "30",
        parse_int(0),
        type="integer (days)",
        doc="Warn when a cluster certificate expires within this many days; 0 disables.",
        roles=_HYBRID,
    )
    data_plane_config_cache_mode: Literal["unencrypted", "encrypted", "off"] = _setting(
        "unencrypted",
        parse_choice("unencrypted", "encrypted", "off"),
        type="unencrypted | encrypted | off",
        doc="How a data plane keeps its last configuration on disk: unencrypted "
        "(config.cache.json.gz), encrypted with the cluster key (.config.cache.jwt), or off.",
        roles=_DP,
    )
    data_plane_config_cache_path: Path = _setting(
        "",
        parse_path,
        type="path (directory)",
        doc="Directory of the data plane configuration cache.",
        roles=_DP,
        derived=lambda self: self.prefix,
        doc_default="<prefix>",
    )

    def redacted(self) -> dict[str, JSON]:
        """Every key with a JSON-safe value; secrets are masked (safe to log or serve)."""
        result: dict[str, JSON] = {}
        for key in KEYS.values():
            value: object = getattr(self, key.name)
            if key.redact is not None:
                value = key.redact(value)
            result[key.name] = _to_json(value)
        return result


def _to_json(value: object) -> JSON:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(
        value,
        Path | uuid.UUID | ListenAddress | Endpoint | ipaddress.IPv4Network | ipaddress.IPv6Network,
    ):
        return str(value)
    raise TypeError(f"no JSON form for {type(value).__name__}")  # pragma: no cover


def _build_keys() -> Mapping[str, Key]:
    keys: dict[str, Key] = {}
    for field in attrs.fields(Settings):
        key: Key = field.metadata[_META]
        keys[field.name] = attrs.evolve(key, name=field.name)
    return MappingProxyType(keys)


KEYS: Mapping[str, Key] = _build_keys()
