"""Errors of the upstream leg and the JSON error bodies the proxy answers with (as Kong)."""

from __future__ import annotations

import json

from gateway._errors import GatewayError

__all__ = ["UpstreamFailure", "error_body"]


class UpstreamFailure(GatewayError):
    """The upstream leg failed before a response head reached the client: answer ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(message: str) -> bytes:
    """Kong's error body: ``{"message": "..."}``."""
    return json.dumps({"message": message}, separators=(",", ":")).encode("utf-8")
