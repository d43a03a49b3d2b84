"""Sans-I/O cores of the gateway: the CP<->DP sync protocol and the config hash.

Nothing in this package performs I/O, reads a clock or imports trio, socket, ssl or
time; time is always an argument. ``gateway`` drives these cores.
"""

from protocol._errors import ProtocolError

__all__ = ["ProtocolError"]
