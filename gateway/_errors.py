from __future__ import annotations


class GatewayError(Exception):
    """Base class of the errors the gateway shell raises."""


class ConfigError(GatewayError):
    """An invalid setting: ``key`` names it, the message says what is accepted."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
