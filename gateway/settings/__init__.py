"""Settings of a node: kong.conf-style keys from defaults, a TOML file, the environment
(``GATEWAY_<KEY>``) and command-line flags, checked as a whole at start.

The reference of every key is docs/reference/settings.md, generated from ``KEYS``.
"""

from gateway.settings._cli import add_settings_arguments, settings_from_args
from gateway.settings._listen import Endpoint, ListenAddress
from gateway.settings._load import ENV_PREFIX, load_settings
from gateway.settings._model import KEYS, ROLES, Key, Role, Settings

__all__ = [
    "ENV_PREFIX",
    "KEYS",
    "ROLES",
    "Endpoint",
    "Key",
    "ListenAddress",
    "Role",
    "Settings",
    "add_settings_arguments",
    "load_settings",
    "settings_from_args",
]
