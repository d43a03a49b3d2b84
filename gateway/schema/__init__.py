"""Entity and plugin-config schemas (Kong-shaped) and their validation."""

from gateway.schema._entity import EntitySchema
from gateway.schema._errors import EntityError, ErrorCode, SchemaViolation
from gateway.schema._fields import (
    Array,
    Boolean,
    ErrorTree,
    Field,
    FieldError,
    Foreign,
    Integer,
    Map,
    Number,
    Record,
    Set,
    String,
    Timestamp,
    Uuid,
    flatten_errors,
    schema_violation_message,
)

__all__ = [
    "Array",
    "Boolean",
    "EntityError",
    "EntitySchema",
    "ErrorCode",
    "ErrorTree",
    "Field",
    "FieldError",
    "Foreign",
    "Integer",
    "Map",
    "Number",
    "Record",
    "SchemaViolation",
    "Set",
    "String",
    "Timestamp",
    "Uuid",
    "flatten_errors",
    "schema_violation_message",
]
