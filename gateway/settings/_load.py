"""Loading settings from their sources and checking them as a whole.

Sources, lowest to highest precedence: the defaults of ``Settings``, a TOML file, the
environment (``GATEWAY_<KEY>``), and overrides (command-line flags). Every value is parsed,
then the cross-key rules (Kong's start-up checks, kong-behaviour.md 11.2) run on the result.
Problems are collected, not raised one by one: the operator sees all of them at once, one
line each, each naming its key.

NOTE: unlike Kong, which ignores unknown ``KONG_*`` variables, an unknown ``GATEWAY_*``
variable is refused like an unknown key in the file, so a typo cannot go unnoticed
(pinned by ``test_unknown_environment_variable_refused``).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import attrs

import certs
from gateway._errors import ConfigError
from gateway.settings._model import KEYS, Settings
from gateway.settings._values import InvalidValue

__all__ = ["ENV_PREFIX", "load_settings"]

ENV_PREFIX = "GATEWAY_"

_LOG_KEYS = (
    "proxy_access_log",
    "proxy_error_log",
    "admin_access_log",
    "admin_error_log",
    "status_access_log",
    "status_error_log",
)
_SSL_PAIRS = (
    ("ssl_cert", "ssl_cert_key"),
    ("admin_ssl_cert", "admin_ssl_cert_key"),
    ("status_ssl_cert", "status_ssl_cert_key"),
)


def load_settings(
    conf: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
    check_files: bool = True,
) -> Settings:
    """Load and check settings; raise ``ConfigError`` listing every problem.

    ``env`` defaults to ``os.environ``; pass ``{}`` to ignore the environment.
    ``check_files=False`` skips everything that reads files (certificates, keys,
    declarative_config), for tools that only need the values.
    """
    errors: list[ConfigError] = []
    raw: dict[str, tuple[object, str]] = {}  # key -> (value, where it came from)

    if conf is not None:
        for name, value in _read_toml(Path(conf), errors).items():
            if name in KEYS:
                raw[name] = (value, str(conf))
            else:
                errors.append(_unknown(name, f"in {conf}"))

    for var, value in (os.environ if env is None else env).items():
        if not var.startswith(ENV_PREFIX):
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name in KEYS and var == ENV_PREFIX + name.upper():
            raw[name] = (value, f"environment variable {var}")
        else:
            errors.append(_unknown_env(var))

    for name, value in (overrides or {}).items():
        if name in KEYS:
            raw[name] = (value, "command line")
        else:
            errors.append(_unknown(name, "on the command line"))

    values: dict[str, Any] = {}
    failed: set[str] = set()
    for name, (value, source) in raw.items():
        try:
            values[name] = KEYS[name].parse(value)
        except InvalidValue as exc:
            failed.add(name)
            errors.extend(
                ConfigError(f"{name}: {message} (from {source})", key=name)
                for message in exc.messages
            )

    settings = _resolve(Settings(**values))
    errors.extend(e for e in _check(settings, check_files=check_files) if e.key not in failed)
    if errors:
        raise ConfigError.combine(errors)
    return settings


def _read_toml(path: Path, errors: list[ConfigError]) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        errors.append(ConfigError(f"conf: cannot read {path}: {exc.strerror or exc}", key="conf"))
    except tomllib.TOMLDecodeError as exc:
        errors.append(ConfigError(f"conf: {path} is not valid TOML: {exc}", key="conf"))
    return {}


def _suggest(name: str) -> str | None:
    matches = difflib.get_close_matches(name.lower(), KEYS, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown(name: str, where: str) -> ConfigError:
    suggestion = _suggest(name)
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    return ConfigError(f"{name}: unknown setting {where}{hint}", key=name)


def _unknown_env(var: str) -> ConfigError:
    suggestion = _suggest(var[len(ENV_PREFIX) :])
    hint = f"; did you mean {ENV_PREFIX}{suggestion.upper()}?" if suggestion else ""
    return ConfigError(f"{var}: unknown setting in the environment{hint}", key=var)


def _resolve(s: Settings) -> Settings:
    """Fill the defaults that depend on other keys; make paths absolute."""
    changes: dict[str, Any] = {}
    for name in _LOG_KEYS:
        target = getattr(s, name)
        if isinstance(target, Path):
            changes[name] = s.prefix / target
    for name in ("sqlite_path", "data_plane_config_cache_path", "declarative_config"):
        path = getattr(s, name)
        if path is not None:
            changes[name] = path.absolute()
    if s.cluster_telemetry_server_name is None:
        changes["cluster_telemetry_server_name"] = s.cluster_server_name
    # Kong's rule: a data plane trusts the cluster certificate (shared) or the cluster CA
    # (pki) for its connection to the control plane, after the user's own entries.
    if s.role == "data_plane":
        extra = s.cluster_cert if s.cluster_mtls == "shared" else s.cluster_ca_cert
        if extra is not None and extra not in s.ssl_trusted_certificate:
            changes["ssl_trusted_certificate"] = (*s.ssl_trusted_certificate, extra)
    return attrs.evolve(s, **changes)


def _check(s: Settings, *, check_files: bool) -> list[ConfigError]:
    errors: list[ConfigError] = []

    def refuse(key: str, message: str) -> None:
        if not message.startswith(key):
            message = f"{key}: {message}"
        errors.append(ConfigError(message, key=key))

    if s.role == "control_plane":
        if not s.admin_listen:
            refuse("admin_listen", 'admin_listen must be specified when role = "control_plane"')
        if not s.cluster_listen:
            refuse("cluster_listen", 'cluster_listen must be specified when role = "control_plane"')
        if s.database == "off":
            refuse(
                "database",
                'in-memory storage can not be used when role = "control_plane"',
            )
        if s.cluster_mtls == "pki" and s.cluster_ca_cert is None:
            refuse("cluster_ca_cert", 'cluster_ca_cert must be specified when cluster_mtls = "pki"')
    if s.role == "data_plane":
        if not s.proxy_listen:
            refuse("proxy_listen", 'proxy_listen must be specified when role = "data_plane"')
        if s.database != "off":
            refuse(
                "database",
                'only in-memory storage can be used when role = "data_plane"; '
                "Hint: set database = off",
            )
        if s.cluster_use_proxy and s.proxy_server is None:
            refuse(
                "cluster_use_proxy",
                "cluster_use_proxy is turned on but no proxy_server is configured",
            )
    else:
        # NOTE: Kong checks cluster_use_proxy only on control planes and ignores it on
        # traditional nodes; we refuse it wherever it would be ignored
        # (test_cluster_use_proxy_rules, test_cluster_use_proxy_traditional).
        if s.cluster_use_proxy:
            refuse(
                "cluster_use_proxy",
                f'cluster_use_proxy can not be used when role = "{s.role}"',
            )
        if s.cluster_dp_labels:
            refuse(
                "cluster_dp_labels",
                'cluster_dp_labels can only be used when role = "data_plane"',
            )

    if s.role != "traditional":
        missing = [k for k in ("cluster_cert", "cluster_cert_key") if getattr(s, k) is None]
        if missing:
            refuse(
                missing[0],
                "cluster certificate and key must be provided to use Hybrid mode "
                f"(set {' and '.join(missing)})",
            )
        # NOTE: Kong ignores cluster_ocsp in shared mode; a revocation check that silently
        # does nothing is refused instead (test_ocsp_needs_pki).
        if s.cluster_ocsp != "off" and s.cluster_mtls != "pki":
            refuse(
                "cluster_ocsp",
                f'cluster_ocsp = "{s.cluster_ocsp}" needs cluster_mtls = "pki" '
                "(OCSP applies to PKI certificates only)",
            )
        if check_files:
            errors.extend(_check_cluster_files(s))

    if s.proxy_server is not None:
        problem = _proxy_server_problem(s.proxy_server)
        if problem:
            refuse("proxy_server", problem)

    if s.declarative_config is not None:
        # NOTE: Kong ignores declarative_config when a database is configured; we refuse it
        # (test_declarative_config_rules). `config db_import FILE` loads a file into a database.
        if s.database != "off":
            refuse(
                "declarative_config",
                'declarative_config can only be used when database = "off" '
                f'(database = "{s.database}")',
            )
        elif check_files and not s.declarative_config.is_file():
            refuse(
                "declarative_config",
                f"declarative_config: file not found: {s.declarative_config}",
            )

    for cert_key, key_key in _SSL_PAIRS:
        errors.extend(_check_ssl_pair(s, cert_key, key_key, check_files=check_files))

    if check_files:
        # Entries appended from the cluster keys are checked under those keys.
        appended = {s.cluster_cert, s.cluster_ca_cert} if s.role == "data_plane" else set()
        for entry in s.ssl_trusted_certificate:
            if entry != "system" and entry not in appended:
                errors.extend(_load_trusted(entry))

    if s.cluster_heartbeat_timeout <= s.cluster_heartbeat_interval:
        refuse(
            "cluster_heartbeat_timeout",
            f"cluster_heartbeat_timeout ({s.cluster_heartbeat_timeout:g}) must be greater than "
            f"cluster_heartbeat_interval ({s.cluster_heartbeat_interval:g})",
        )
    if s.cluster_reconnect_backoff_max < s.cluster_reconnect_backoff_min:
        refuse(
            "cluster_reconnect_backoff_max",
            f"cluster_reconnect_backoff_max ({s.cluster_reconnect_backoff_max:g}) must be "
            f"greater than or equal to cluster_reconnect_backoff_min "
            f"({s.cluster_reconnect_backoff_min:g})",
        )
    return errors


def _try(load: Callable[[], object], key: str) -> list[ConfigError]:
    try:
        load()
    except certs.CertificateError as exc:
        return [ConfigError(str(exc), key=key)]
    return []


def _load_trusted(entry: str) -> list[ConfigError]:
    try:
        certs.load_certificates(entry, setting="ssl_trusted_certificate")
    except certs.CertificateError as exc:
        return [ConfigError(str(exc), key="ssl_trusted_certificate")]
    return []


def _check_cluster_files(s: Settings) -> list[ConfigError]:
    errors: list[ConfigError] = []
    chain: list[Any] = []
    key: Any = None
    if s.cluster_cert is not None:
        try:
            chain = certs.load_certificates(s.cluster_cert, setting="cluster_cert")
        except certs.CertificateError as exc:
            errors.append(ConfigError(str(exc), key="cluster_cert"))
    if s.cluster_cert_key is not None:
        try:
            key = certs.load_private_key(s.cluster_cert_key, setting="cluster_cert_key")
        except certs.CertificateError as exc:
            errors.append(ConfigError(str(exc), key="cluster_cert_key"))
    if chain and key is not None:
        errors.extend(
            _try(
                lambda: certs.check_key_matches(chain[0], key, setting="cluster_cert_key"),
                "cluster_cert_key",
            )
        )
    if s.cluster_ca_cert is not None:
        errors.extend(
            _try(
                lambda: certs.load_certificates(s.cluster_ca_cert or "", setting="cluster_ca_cert"),
                "cluster_ca_cert",
            )
        )
    return errors


def _check_ssl_pair(
    s: Settings, cert_key: str, key_key: str, *, check_files: bool
) -> list[ConfigError]:
    cert_values: tuple[str, ...] = getattr(s, cert_key)
    key_values: tuple[str, ...] = getattr(s, key_key)
    if cert_values and not key_values:
        return [ConfigError(f"{key_key} must be specified when {cert_key} is set", key=key_key)]
    if key_values and not cert_values:
        return [ConfigError(f"{cert_key} must be specified when {key_key} is set", key=cert_key)]
    if len(cert_values) != len(key_values):
        return [
            ConfigError(
                f"{cert_key} and {key_key} must list the same number of entries "
                f"({len(cert_values)} != {len(key_values)})",
                key=key_key,
            )
        ]
    if not check_files:
        return []
    errors: list[ConfigError] = []
    for cert_value, key_value in zip(cert_values, key_values, strict=True):
        errors.extend(_load_pair(cert_value, key_value, cert_key, key_key))
    return errors


def _load_pair(cert_value: str, key_value: str, cert_key: str, key_key: str) -> list[ConfigError]:
    errors: list[ConfigError] = []
    chain: list[Any] = []
    key: Any = None
    try:
        chain = certs.load_certificates(cert_value, setting=cert_key)
    except certs.CertificateError as exc:
        errors.append(ConfigError(str(exc), key=cert_key))
    try:
        key = certs.load_private_key(key_value, setting=key_key)
    except certs.CertificateError as exc:
        errors.append(ConfigError(str(exc), key=key_key))
    if chain and key is not None:
        errors.extend(
            _try(lambda: certs.check_key_matches(chain[0], key, setting=key_key), key_key)
        )
    return errors


def _proxy_server_problem(url: str) -> str | None:
    """Kong's proxy_server checks, in Kong's order (kong-behaviour.md 11.2 item 26)."""
    try:
        parsed = urlparse(url)
    except ValueError as exc:
        return f"proxy_server is invalid: {exc}"
    if not parsed.scheme or (not parsed.netloc and "://" not in url):
        return "proxy_server missing scheme"
    if parsed.scheme not in ("http", "https"):
        return f'proxy_server only supports "http" and "https", got {parsed.scheme}'
    if not parsed.hostname:
        return "proxy_server missing host"
    if parsed.fragment or parsed.query or parsed.params or "#" in url or "?" in url:
        return "fragments, query strings or parameters are meaningless in proxy configuration"
    try:
        parsed.port  # noqa: B018 - raises on an invalid port
    except ValueError:
        return f"proxy_server is invalid: bad port in {parsed.netloc.rpartition('@')[2]!r}"
    return None
