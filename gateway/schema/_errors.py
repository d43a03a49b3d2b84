"""Kong's database error codes and the JSON error body the Admin API returns."""

from __future__ import annotations

import enum
from typing import Any

from gateway.schema._fields import ErrorTree, schema_violation_message


class ErrorCode(enum.IntEnum):
    INVALID_PRIMARY_KEY = 1
    SCHEMA_VIOLATION = 2
    PRIMARY_KEY_VIOLATION = 3
    FOREIGN_KEY_VIOLATION = 4
    UNIQUE_VIOLATION = 5
    NOT_FOUND = 6
    INVALID_OFFSET = 7
    DATABASE_ERROR = 8
    INVALID_SIZE = 9
    INVALID_UNIQUE = 10
    INVALID_OPTIONS = 11
    OPERATION_UNSUPPORTED = 12
    FOREIGN_KEYS_UNRESOLVED = 13
    DECLARATIVE_CONFIG = 14
    TRANSFORMATION_ERROR = 15
    INVALID_FOREIGN_KEY = 16
    INVALID_WORKSPACE = 17
    INVALID_UNIQUE_GLOBAL = 18
    REFERENCED_BY_OTHERS = 19
    INVALID_SEARCH_QUERY = 20


_NAMES = {
    ErrorCode.INVALID_PRIMARY_KEY: "invalid primary key",
    ErrorCode.SCHEMA_VIOLATION: "schema violation",
    ErrorCode.PRIMARY_KEY_VIOLATION: "primary key violation",
    ErrorCode.FOREIGN_KEY_VIOLATION: "foreign key violation",
    ErrorCode.UNIQUE_VIOLATION: "unique constraint violation",
    ErrorCode.NOT_FOUND: "not found",
    ErrorCode.INVALID_OFFSET: "invalid offset",
    ErrorCode.DATABASE_ERROR: "database error",
    ErrorCode.INVALID_SIZE: "invalid size",
    ErrorCode.INVALID_UNIQUE: "invalid unique",
    ErrorCode.INVALID_OPTIONS: "invalid options",
    ErrorCode.OPERATION_UNSUPPORTED: "operation unsupported",
    ErrorCode.FOREIGN_KEYS_UNRESOLVED: "foreign keys unresolved",
    ErrorCode.DECLARATIVE_CONFIG: "invalid declarative configuration",
    ErrorCode.TRANSFORMATION_ERROR: "transformation error",
    ErrorCode.INVALID_FOREIGN_KEY: "invalid foreign key",
    ErrorCode.INVALID_WORKSPACE: "invalid workspace",
    ErrorCode.INVALID_UNIQUE_GLOBAL: "invalid global query",
    ErrorCode.REFERENCED_BY_OTHERS: "referenced by others",
    ErrorCode.INVALID_SEARCH_QUERY: "invalid search query",
}


class EntityError(Exception):
    """An error about entities, rendered as Kong's body ``{message, name, code, fields}``."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        fields: ErrorTree | None = None,
        status: int = 400,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields
        self.status = status
        self.extra = extra or {}

    @property
    def name(self) -> str:
        return _NAMES[self.code]

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": int(self.code), "name": self.name, "message": self.message}
        if self.fields is not None:
            out["fields"] = self.fields
        out.update(self.extra)
        return out


class SchemaViolation(EntityError):
    def __init__(self, fields: ErrorTree) -> None:
        super().__init__(
            ErrorCode.SCHEMA_VIOLATION, schema_violation_message(fields), fields=fields
        )
