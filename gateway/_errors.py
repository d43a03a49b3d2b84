from __future__ import annotations

from collections.abc import Sequence


class GatewayError(Exception):
    """Base class of the errors the gateway shell raises."""


class ConfigError(GatewayError):
    """An invalid setting: ``key`` names it, the message says what is accepted.

    Settings are checked as a whole and every problem is reported at once: ``errors`` holds
    one ``ConfigError`` per problem (just ``(self,)`` for a single one), and the message of a
    combined error is their messages, one per line.
    """

    def __init__(
        self, message: str, *, key: str | None = None, errors: Sequence[ConfigError] = ()
    ) -> None:
        super().__init__(message)
        self.key = key
        self.errors: tuple[ConfigError, ...] = tuple(errors) if errors else (self,)

    @classmethod
    def combine(cls, errors: Sequence[ConfigError]) -> ConfigError:
        """One error for several; a single error is returned as it is."""
        if len(errors) == 1:
            return errors[0]
        keys = {e.key for e in errors}
        key = keys.pop() if len(keys) == 1 else None
        return cls("\n".join(str(e) for e in errors), key=key, errors=errors)
