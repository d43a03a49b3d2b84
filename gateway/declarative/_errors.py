"""The one error a declarative configuration produces, listing every problem."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.schema import EntityError, ErrorCode, ErrorTree, flatten_errors


class DeclarativeError(EntityError):
    """Kong's ``invalid declarative configuration`` (code 14).

    ``fields`` is the error tree shaped like the document (``{"services": [{"routes":
    [{"paths": [...]}]}]}``; lists padded with None), ``messages`` the same errors flattened
    with 1-based entity paths (``services.1.routes.1.paths.1: ...``) and ``flattened`` one
    entry per faulty entity (Kong's ``flattened_errors``).
    """

    def __init__(
        self,
        message: str,
        *,
        fields: ErrorTree | None = None,
        flattened: Sequence[dict[str, Any]] = (),
    ) -> None:
        extra = {"flattened_errors": list(flattened)} if flattened else None
        super().__init__(ErrorCode.DECLARATIVE_CONFIG, message, fields=fields, extra=extra)
        self.messages: list[str] = flatten_errors(fields) if fields else [message]
        self.flattened: list[dict[str, Any]] = list(flattened)

    @classmethod
    def from_tree(
        cls, fields: ErrorTree, flattened: Sequence[dict[str, Any]] = ()
    ) -> DeclarativeError:
        messages = flatten_errors(fields)
        if len(messages) == 1:
            summary = messages[0]
        else:
            summary = f"{len(messages)} errors ({'; '.join(messages)})"
        return cls(f"declarative config is invalid: {summary}", fields=fields, flattened=flattened)
