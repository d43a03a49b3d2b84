"""A Trio API gateway implementing Kong Gateway's hybrid mode."""

from gateway._errors import ConfigError, GatewayError
from gateway._version import __version__

__all__ = ["ConfigError", "GatewayError", "__version__"]
