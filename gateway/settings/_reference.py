"""Render docs/reference/settings.md from ``KEYS``.

Regenerate with ``python -m gateway.settings._reference > docs/reference/settings.md``;
tests/gateway/settings/test_reference.py fails when the file is out of date.
"""

from __future__ import annotations

from gateway.settings._load import ENV_PREFIX
from gateway.settings._model import KEYS, ROLES, Key

__all__ = ["render_reference"]

_ROLE_NAMES = {"traditional": "traditional", "control_plane": "CP", "data_plane": "DP"}

_INTRO = f"""\
# Settings reference

<!-- Generated from gateway.settings.KEYS by
     `python -m gateway.settings._reference > docs/reference/settings.md`. Do not edit. -->

A node reads its settings from, lowest to highest precedence:

1. the built-in defaults listed below;
2. a TOML file given with `--conf FILE` (top-level keys, e.g. `role = "data_plane"`);
3. environment variables `{ENV_PREFIX}<KEY>` with the key in upper case
   (`{ENV_PREFIX}CLUSTER_CERT=/etc/gateway/cluster.crt`);
4. command-line flags: `--role`, `--prefix`, and `--set KEY=VALUE` for any key (repeatable;
   `--role` and `--prefix` win over `--set role=...`).

Key names, value syntax and most defaults are kong.conf's. In the environment and in `--set`
every value is a string written as in kong.conf; in the TOML file a value may also be a native
TOML value of the key's type (integer, float, boolean, array of strings, table for
`cluster_dp_labels`). An empty string means "unset" for optional keys.

Value syntax:

- **boolean**: `on`, `off`, `true`, `false` (also `yes`, `no`, `1`, `0`).
- **listen addresses**: `off`, or comma-separated entries `<ip>:<port> [flags]`, IPv6 in
  brackets (`[::1]:8001`), flags `ssl`, `http2`, `proxy_protocol`, `deferred`, `bind`,
  `reuseport`, `backlog=N`, `ipv6only=on|off`, `so_keepalive=on|off|idle:intvl:cnt`.
  Example: `0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2 ssl`. Port 0 picks a
  free port. Unknown flags are refused (Kong ignores them).
- **lists**: comma-separated in a string, or a TOML array of strings.
- **size**: bytes, or a number with `k`, `m` or `g` (`8k`, `10m`).
- **certificate / private key**: a path to a PEM file, the PEM text itself, or the PEM text
  encoded in base64.
- **log target**: `off`, `stdout`, `stderr`, or a path; a relative path is under the prefix.

Start-up rules (all problems are reported together, one line each, naming the key):

- `role = control_plane` needs `admin_listen` and `cluster_listen` (not `off`) and a database
  (`database` not `off`); `cluster_mtls = pki` needs `cluster_ca_cert`; `cluster_use_proxy`
  is refused.
- `role = data_plane` needs `proxy_listen` (not `off`) and `database = off`;
  `cluster_use_proxy = on` needs `proxy_server`.
- Control and data planes need `cluster_cert` and `cluster_cert_key`; the files must load, and
  the key must match the certificate. `cluster_ocsp` other than `off` needs
  `cluster_mtls = pki`.
- `cluster_dp_labels` and `cluster_use_proxy` are refused unless `role = data_plane`.
- `proxy_server` must be an `http` or `https` URL with a host and without query, fragment or
  parameters.
- `declarative_config` needs `database = off` and an existing file.
- `*_ssl_cert` and `*_ssl_cert_key` must be given together, with as many entries each.
- `cluster_heartbeat_timeout` > `cluster_heartbeat_interval`;
  `cluster_reconnect_backoff_max` >= `cluster_reconnect_backoff_min`.
- Unknown keys (in the file, in `{ENV_PREFIX}*` variables, or in `--set`) are refused with a
  suggestion.

`python -m gateway check [--conf FILE] [--set KEY=VALUE ...]` applies all of this without
starting the node.

Secrets (marked below) are masked wherever settings are shown (`Settings.redacted()`, the
Admin API `/` endpoint).

| key | default | type | roles | description |
|---|---|---|---|---|
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _text_cell(text: str) -> str:
    return _cell(text.replace("<", "&lt;").replace(">", "&gt;"))


def _roles(key: Key) -> str:
    if key.roles == ROLES:
        return "all"
    return ", ".join(_ROLE_NAMES[role] for role in key.roles)


def _default(key: Key) -> str:
    return f"`{key.default}`" if key.default else "(unset)"


def render_reference() -> str:
    """The Markdown reference of every key."""
    rows = []
    for key in KEYS.values():
        secret = " **Secret.**" if key.secret else ""
        rows.append(
            f"| `{key.name}` | {_cell(_default(key))} | {_text_cell(key.type)} | {_roles(key)} "
            f"| {_text_cell(key.doc)}{secret} |"
        )
    return _INTRO + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
