"""Errors of the storage layer (entity errors are ``gateway.schema.EntityError``)."""

from __future__ import annotations

from gateway._errors import GatewayError


class StoreError(GatewayError):
    """The database cannot be used: unreachable, timed out, misconfigured."""


class DatabaseNotReady(StoreError):
    """The database was never bootstrapped, or has pending migrations."""
