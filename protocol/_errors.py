from __future__ import annotations


class ProtocolError(Exception):
    """A violation of a sans-I/O protocol.

    ``local`` is True when *we* tried to do something the protocol forbids (a bug in the
    caller), False when the peer sent something invalid (untrusted input).
    """

    def __init__(self, message: str, *, local: bool = False, code: str = "protocol_error") -> None:
        super().__init__(message)
        self.local = local
        self.code = code
