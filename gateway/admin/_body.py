"""Request body and query decoding for the Admin API (JSON, form-encoded, multipart).

Kong accepts ``application/json``, ``application/x-www-form-urlencoded`` and
``multipart/form-data``. Form keys use Kong's notation: ``config.minute=5`` for nested
records, ``paths[]=/a`` or repeated ``paths=/a&paths=/b`` for arrays, ``hosts[1]=a`` for
indexed arrays. Form values are strings; they are converted to the schema's types
(``"5"`` -> 5 for integer fields, ``"true"`` -> True) by ``coerce_form_types``.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from gateway._forms import parse_multipart
from gateway.schema import Array, Boolean, Field, Foreign, Integer, Map, Number, Record

_INDEX = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<index>\d*)\]$")
#: The largest ``name[N]`` index a form may use (a bigger one would allocate a huge list).
MAX_FORM_INDEX = 1000
#: The most fields a form body may have.
MAX_FORM_FIELDS = 10_000


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_body(content_type: str | None, body: bytes) -> tuple[dict[str, Any], bool]:
    """Return ``(data, is_form)``; raise ``BodyError`` for what cannot be decoded."""
    if not body.strip():
        return {}, False
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype in ("", "application/json") or ctype.endswith("+json"):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BodyError(400, "Cannot parse JSON body") from None
        except RecursionError:
            raise BodyError(400, "Cannot parse JSON body: nested too deeply") from None
        if not isinstance(data, dict):
            raise BodyError(400, "Cannot parse JSON body: expected an object")
        return data, False
    if ctype == "application/x-www-form-urlencoded":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BodyError(400, "Cannot parse form body: not UTF-8") from None
        try:
            pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except ValueError:
            raise BodyError(
                400, f"Cannot parse form body: more than {MAX_FORM_FIELDS} fields"
            ) from None
        return nest_form(pairs), True
    if ctype == "multipart/form-data":
        return nest_form(_multipart(content_type or "", body)), True
    raise BodyError(415, f"Unsupported Content-Type: {ctype}")


def nest_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``[("config.minute", "5"), ("paths[]", "/a")]`` -> ``{"config": {"minute": "5"}, ...}``."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        last = parts[-1]
        m = _INDEX.match(last)
        if m:
            name = m.group("name")
            seq = node.get(name)
            if not isinstance(seq, list):
                seq = []
                node[name] = seq
            if m.group("index"):
                idx = int(m.group("index")) - 1
                if not 0 <= idx < MAX_FORM_INDEX:
                    raise BodyError(
                        400, f"Cannot parse form body: index of '{key}' not in 1..{MAX_FORM_INDEX}"
                    )
                while len(seq) <= idx:
                    seq.append(None)
                seq[idx] = value
            else:
                seq.append(value)
        elif last in node and not isinstance(node[last], dict):
            prev = node[last]
            node[last] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            node[last] = value
    return out


def coerce_form_types(record: Record, data: dict[str, Any]) -> dict[str, Any]:
    """Convert form strings to the types ``record`` expects (best effort; validation follows)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = record.fields.get(key)
        out[key] = _coerce(field, value) if field is not None else value
    return out


def _coerce(field: Field, value: Any) -> Any:
    if isinstance(field, Record) and isinstance(value, dict):
        return coerce_form_types(field, value)
    if isinstance(field, Array):
        if isinstance(value, str):
            value = [] if value == "" else [value]
        if isinstance(value, list):
            return [_coerce(field.elements, v) for v in value]
        return value
    if isinstance(field, Map) and isinstance(value, dict):
        return {k: _coerce(field.values, v) for k, v in value.items()}
    if isinstance(field, Foreign) and isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return value
    if isinstance(field, Boolean):
        lowered = value.lower()
        if lowered in ("true", "1", "on", "yes"):
            return True
        if lowered in ("false", "0", "off", "no"):
            return False
        return value
    if isinstance(field, Integer):
        try:
            return int(value)
        except ValueError:
            return value
    if isinstance(field, Number):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    if value == "" and not field.required:
        return None
    return value


def _multipart(content_type: str, body: bytes) -> list[tuple[str, str]]:
    try:
        pairs = parse_multipart(content_type, body)
    except (ValueError, LookupError, UnicodeError):
        pairs = None
    if pairs is None:
        raise BodyError(400, "Cannot parse multipart body")
    if len(pairs) > MAX_FORM_FIELDS:
        raise BodyError(400, f"Cannot parse multipart body: more than {MAX_FORM_FIELDS} fields")
    return pairs
