"""Sans-I/O cores of the gateway: the CP<->DP sync protocol and the config hash.

Nothing in this package performs I/O, reads a clock or imports trio, socket, ssl or
time; time is always an argument. ``gateway`` drives these cores. The sync protocol lives
in :mod:`protocol.sync`.
"""

from protocol._errors import ProtocolError
from protocol._hash import EMPTY_CONFIG_HASH, config_hash, is_config_hash

__all__ = ["EMPTY_CONFIG_HASH", "ProtocolError", "config_hash", "is_config_hash"]
