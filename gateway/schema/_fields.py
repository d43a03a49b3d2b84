"""Schema fields and the validating walker.

Theory of operation: an entity (and a plugin's ``config``) is described by a ``Record`` of
named ``Field`` objects, as Kong's schemas are. ``Record.validate(value)`` walks the input
once, fills defaults, normalises values (``Set`` removes duplicates, ``Foreign`` accepts an id
string or ``{"id": ...}``) and collects *every* error into a tree shaped like Kong's error
``fields``: a dict keyed by field name, lists (padded with ``None``) for array elements, and
``"@entity"`` for whole-record checks. Validation never stops at the first error.

Entities are plain ``dict`` objects (the Admin API's JSON) rather than attrs classes: Kong's
semantics (``null`` for unset fields, PATCH merges, plugin-defined config schemas, the
``/schemas`` endpoint) map one-to-one to a schema walker. Runtimes compile what they need
from the validated dicts into their own slotted objects (see docs/design/entities.md).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

ErrorTree = dict[str, Any]
_MISSING: Any = object()


class FieldError(Exception):
    """Raised by custom checks; the message becomes the field's error."""


class Field:
    """Base class of every field type.

    ``required``: the value may not be null/missing (after defaults). ``default``: value used
    when the input does not mention the field (``None`` = null). ``checks``: callables taking
    the normalised value and raising ``FieldError`` (or returning an error string).
    """

    type_name = "any"

    def __init__(
        self,
        *,
        required: bool = False,
        default: Any = None,
        unique: bool = False,
        immutable: bool = False,
        auto: bool = False,
        checks: Sequence[Callable[[Any], str | None]] = (),
        description: str = "",
        secret: bool = False,
    ) -> None:
        self.required = required
        self.default = default
        self.unique = unique
        self.immutable = immutable
        self.auto = auto
        self.checks = tuple(checks)
        self.description = description
        self.secret = secret

    # -- validation -------------------------------------------------------------------------
    def validate(self, value: Any) -> tuple[Any, Any]:
        """Return ``(normalised, error)``; ``error`` is None, a string, or a sub-tree."""
        if value is None:
            if self.required:
                return None, "required field missing"
            return None, None
        normalised, error = self._validate(value)
        if error is not None:
            return value, error
        for check in self.checks:
            try:
                message = check(normalised)
            except FieldError as exc:
                message = str(exc)
            if message:
                return value, message
        return normalised, None

    def _validate(self, value: Any) -> tuple[Any, Any]:
        return value, None

    def default_value(self) -> Any:
        d = self.default
        if isinstance(d, list | dict):
            return _deepcopy(d)
        return d

    # -- description (GET /schemas) -------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type_name}
        if self.required:
            out["required"] = True
        if self.default is not None:
            out["default"] = self.default
        if self.unique:
            out["unique"] = True
        if self.immutable:
            out["immutable"] = True
        if self.auto:
            out["auto"] = True
        if self.description:
            out["description"] = self.description
        if self.secret:
            out["referenceable"] = True
        return out


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


class String(Field):
    type_name = "string"

    def __init__(
        self,
        *,
        one_of: Iterable[str] | None = None,
        len_min: int | None = None,
        len_max: int | None = None,
        match: str | None = None,
        match_message: str | None = None,
        starts_with: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.one_of = tuple(one_of) if one_of is not None else None
        self.len_min = len_min
        self.len_max = len_max
        self.match = re.compile(match) if match else None
        self.match_message = match_message
        self.starts_with = starts_with

    def _validate(self, value: Any) -> tuple[Any, Any]:
        if not isinstance(value, str):
            return value, "expected a string"
        if self.one_of is not None and value not in self.one_of:
            return value, "expected one of: " + ", ".join(self.one_of)
        if self.len_min is not None and len(value) < self.len_min:
            if self.len_min == 1:
                return value, "length must be at least 1"
            return value, f"length must be at least {self.len_min}"
        if self.len_max is not None and len(value) > self.len_max:
            return value, f"length must be at most {self.len_max}"
        if self.starts_with is not None and not value.startswith(self.starts_with):
            return value, f"should start with: {self.starts_with}"
        if self.match is not None and not self.match.fullmatch(value):
            return value, self.match_message or f"invalid value: {value}"
        return value, None

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.one_of is not None:
            out["one_of"] = list(self.one_of)
        if self.len_min is not None:
            out["len_min"] = self.len_min
        if self.len_max is not None:
            out["len_max"] = self.len_max
        if self.match is not None:
            out["match"] = self.match.pattern
        if self.starts_with is not None:
            out["starts_with"] = self.starts_with
        return out


class Uuid(String):
    type_name = "string"

    def _validate(self, value: Any) -> tuple[Any, Any]:
        if not isinstance(value, str):
            return value, "expected a string"
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            return value, "expected a valid UUID"
        if len(value) != 36:
            return value, "expected a valid UUID"
        return str(parsed), None

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["uuid"] = True
        return out


class Integer(Field):
    type_name = "integer"

    def __init__(
        self,
        *,
        between: tuple[int, int] | None = None,
        gt: int | None = None,
        one_of: Iterable[int] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.between = between
        self.gt = gt
        self.one_of = tuple(one_of) if one_of is not None else None

    def _validate(self, value: Any) -> tuple[Any, Any]:
        if isinstance(value, bool):
            return value, "expected an integer"
        if isinstance(value, float):
            if not value.is_integer():
                return value, "expected an integer"
            value = int(value)
        if not isinstance(value, int):
            return value, "expected an integer"
        return _check_number(self, value)

    def describe(self) -> dict[str, Any]:
        return _describe_number(self, super().describe())


class Number(Field):
    type_name = "number"

    def __init__(
        self,
        *,
        between: tuple[float, float] | None = None,
        gt: float | None = None,
        one_of: Iterable[float] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.between = between
        self.gt = gt
        self.one_of = tuple(one_of) if one_of is not None else None

    def _validate(self, value: Any) -> tuple[Any, Any]:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value, "expected a number"
        if isinstance(value, float) and not math.isfinite(value):
            return value, "expected a number"
        return _check_number(self, value)

    def describe(self) -> dict[str, Any]:
        return _describe_number(self, super().describe())


def _check_number(field: Integer | Number, value: Any) -> tuple[Any, Any]:
    if field.between is not None:
        lo, hi = field.between
        if not lo <= value <= hi:
            return value, f"value should be between {lo} and {hi}"
    if field.gt is not None and not value > field.gt:
        return value, f"value must be greater than {field.gt}"
    if field.one_of is not None and value not in field.one_of:
        return value, "expected one of: " + ", ".join(str(v) for v in field.one_of)
    return value, None


def _describe_number(field: Integer | Number, out: dict[str, Any]) -> dict[str, Any]:
    if field.between is not None:
        out["between"] = list(field.between)
    if field.gt is not None:
        out["gt"] = field.gt
    if field.one_of is not None:
        out["one_of"] = list(field.one_of)
    return out


class Boolean(Field):
    type_name = "boolean"

    def _validate(self, value: Any) -> tuple[Any, Any]:
        if not isinstance(value, bool):
            return value, "expected a boolean"
        return value, None


class Timestamp(Integer):
    """Seconds since the epoch (Kong's ``created_at`` / ``updated_at``)."""

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["timestamp"] = True
        return out


class Array(Field):
    type_name = "array"

    def __init__(
        self,
        elements: Field,
        *,
        len_min: int | None = None,
        len_max: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.elements = elements
        self.len_min = len_min
        self.len_max = len_max

    def _validate(self, value: Any) -> tuple[Any, Any]:
        if isinstance(value, dict) and not value:
            value = []  # an empty JSON object is an empty array (Lua tables, form bodies)
        if not isinstance(value, list | tuple):
            return value, f"expected {'a set' if self.type_name == 'set' else 'an array'}"
        out: list[Any] = []
        errors: list[Any] = []
        bad = False
        for item in value:
            if item is None:
                errors.append("required field missing")
                out.append(None)
                bad = True
                continue
            v, e = self.elements.validate(item)
            out.append(v)
            errors.append(e)
            bad = bad or e is not None
        if bad:
            return value, errors
        if self.len_min is not None and len(out) < self.len_min:
            return value, f"length must be at least {self.len_min}"
        if self.len_max is not None and len(out) > self.len_max:
            return value, f"length must be at most {self.len_max}"
        return self._finish(out), None

    def _finish(self, items: list[Any]) -> list[Any]:
        return items

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["elements"] = self.elements.describe()
        if self.len_min is not None:
            out["len_min"] = self.len_min
        if self.len_max is not None:
            out["len_max"] = self.len_max
        return out


class Set(Array):
    """An array whose duplicates are removed (first occurrence kept)."""

    type_name = "set"

    def _finish(self, items: list[Any]) -> list[Any]:
        seen: list[Any] = []
        for item in items:
            if item not in seen:
                seen.append(item)
        return seen


class Map(Field):
    type_name = "map"

    def __init__(
        self, keys: Field, values: Field, *, len_max: int | None = None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.keys = keys
        self.values = values
        self.len_max = len_max

    def _validate(self, value: Any) -> tuple[Any, Any]:
        if isinstance(value, list) and not value:
            value = {}
        if not isinstance(value, dict):
            return value, "expected a map"
        out: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for k, v in value.items():
            nk, ke = self.keys.validate(k)
            if ke is not None:
                errors[str(k)] = ke if isinstance(ke, str) else "invalid key"
                continue
            nv, ve = self.values.validate(v)
            if ve is not None:
                errors[str(k)] = ve
                continue
            out[nk] = nv
        if errors:
            return value, errors
        if self.len_max is not None and len(out) > self.len_max:
            return value, f"length must be at most {self.len_max}"
        return out, None

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["keys"] = self.keys.describe()
        out["values"] = self.values.describe()
        if self.len_max is not None:
            out["len_max"] = self.len_max
        return out


class Foreign(Field):
    """A reference to another entity, written ``{"id": "<uuid>"}`` (or an id string)."""

    type_name = "foreign"

    def __init__(self, reference: str, *, on_delete: str = "restrict", **kw: Any) -> None:
        super().__init__(**kw)
        self.reference = reference
        self.on_delete = on_delete  # "restrict" | "cascade" | "null"

    def _validate(self, value: Any) -> tuple[Any, Any]:
        if isinstance(value, str):
            value = {"id": value}
        if not isinstance(value, dict):
            return value, "expected a record"
        extra = set(value) - {"id", "name", "username"}
        if extra:
            return value, {k: "unknown field" for k in sorted(extra)}
        if "id" not in value:
            # A reference by endpoint key ({"name": ...}) is resolved by the DAO before
            # validation; reaching here unresolved is an error.
            return value, {"id": "required field missing"}
        v, e = Uuid().validate(value["id"])
        if e is not None:
            return value, {"id": e}
        return {"id": v}, None

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["reference"] = self.reference
        out["on_delete"] = self.on_delete
        return out


EntityCheck = Callable[[dict[str, Any]], "str | dict[str, Any] | None"]


class Record(Field):
    """A named set of fields. ``entity_checks`` run on the whole record once every field is
    valid; they return an error (string for ``@entity``, or ``{field: message}``) or None."""

    type_name = "record"

    def __init__(
        self,
        fields: Sequence[tuple[str, Field]],
        *,
        entity_checks: Sequence[EntityCheck] = (),
        allow_unknown: bool = False,
        **kw: Any,
    ) -> None:
        kw.setdefault("required", False)
        super().__init__(**kw)
        self.fields: dict[str, Field] = dict(fields)
        self.entity_checks = tuple(entity_checks)
        self.allow_unknown = allow_unknown

    def default_value(self) -> Any:
        if self.default is not None:
            return _deepcopy(self.default)
        if self.required:
            # A required record with every field defaulted is built from its defaults.
            return {}
        return None

    def validate(self, value: Any) -> tuple[Any, Any]:
        if value is None and self.required:
            value = {}
        return super().validate(value)

    def _validate(self, value: Any) -> tuple[Any, Any]:
        return self.validate_record(value)

    def validate_record(
        self, value: Any, *, partial: bool = False, fill_defaults: bool = True
    ) -> tuple[Any, Any]:
        if isinstance(value, list) and not value:
            value = {}
        if not isinstance(value, Mapping):
            return value, "expected a record"
        errors: ErrorTree = {}
        out: dict[str, Any] = {}
        for key in value:
            if key not in self.fields and not self.allow_unknown:
                errors[str(key)] = "unknown field"
        for name, field in self.fields.items():
            if name in value:
                raw = value[name]
            elif partial:
                continue
            elif fill_defaults:
                raw = field.default_value()
            else:
                raw = None
            v, e = field.validate(raw)
            if e is not None:
                errors[name] = e
            else:
                out[name] = v
        if self.allow_unknown:
            for key in value:
                if key not in self.fields:
                    out[key] = value[key]
        if errors:
            return value, errors
        if not partial:
            for check in self.entity_checks:
                result = check(out)
                if result is None:
                    continue
                if isinstance(result, str):
                    errors.setdefault("@entity", []).append(result)
                else:
                    for key, sub in result.items():
                        if key == "@entity":
                            subs = sub if isinstance(sub, list) else [sub]
                            errors.setdefault("@entity", []).extend(subs)
                        else:
                            errors.setdefault(key, sub)
            if errors:
                return value, errors
        return out, None

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["fields"] = [{name: field.describe()} for name, field in self.fields.items()]
        return out


# -- error rendering ---------------------------------------------------------------------------


def flatten_errors(tree: Any, prefix: str = "") -> list[str]:
    """``{"a": {"b": "bad"}, "@entity": ["x"]}`` -> ``["a.b: bad", "x"]`` (Kong's message)."""
    out: list[str] = []
    if isinstance(tree, str):
        out.append(f"{prefix}: {tree}" if prefix else tree)
    elif isinstance(tree, dict):
        for key in sorted(tree, key=lambda k: (k != "@entity", k)):
            sub = tree[key]
            if key == "@entity":
                for msg in sub if isinstance(sub, list) else [sub]:
                    out.extend(flatten_errors(msg, prefix))
            else:
                out.extend(flatten_errors(sub, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(tree, list):
        for i, sub in enumerate(tree):
            if sub is not None:
                out.extend(flatten_errors(sub, f"{prefix}.{i + 1}" if prefix else str(i + 1)))
    return out


def schema_violation_message(tree: ErrorTree) -> str:
    """Kong's message: ``schema violation (x: y)`` / ``2 schema violations (x: y; z: w)``."""
    parts = flatten_errors(tree)
    if len(parts) == 1:
        return f"schema violation ({parts[0]})"
    return f"{len(parts)} schema violations ({'; '.join(parts)})"
