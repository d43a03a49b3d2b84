"""Shared pieces of request-transformer and response-transformer.

Values may use Kong's templates: ``$(headers.name)``, ``$(headers["name"])``,
``$(query_params.name)``, ``$(uri_captures.name)`` (also with ``["..."]``), optionally with
a fallback ``$(headers.x or 'default')``. Only these lookups are supported; Kong runs
arbitrary Lua there, which we deliberately do not (documented in the plugin reference).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.plugins.bundled._common import colon_pair_check
from gateway.schema import Array, Record, String

_TEMPLATE = re.compile(
    r"\$\(\s*(?P<src>headers|query_params|uri_captures|shared)"
    r"(?:\.(?P<dot>[A-Za-z0-9_-]+)|\[\s*[\"'](?P<key>[^\"']+)[\"']\s*\])"
    r"(?:\s+or\s+[\"'](?P<default>[^\"']*)[\"'])?\s*\)"
)

Lookup = Callable[[str, str], str | None]


def render(value: str, lookup: Lookup) -> str:
    if "$(" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        key = m.group("dot") or m.group("key") or ""
        found = lookup(m.group("src"), key)
        if found is None:
            return m.group("default") or ""
        return found

    return _TEMPLATE.sub(sub, value)


def split_pair(entry: str) -> tuple[str, str]:
    name, _, value = entry.partition(":")
    return name, value


def pair_list(**kw: Any) -> Array:
    return Array(String(checks=[colon_pair_check]), default=[], required=True, **kw)


def name_list(**kw: Any) -> Array:
    return Array(String(), default=[], required=True, **kw)


def section(fields: list[tuple[str, Any]]) -> Record:
    return Record(fields, required=True)


def convert_json_value(value: str, json_type: str | None) -> Any:
    if json_type == "boolean":
        return value.lower() == "true"
    if json_type == "number":
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def apply_json(
    doc: dict[str, Any], conf: Mapping[str, Any], lookup: Lookup, *, with_types: bool
) -> dict[str, Any]:
    """Kong's order: remove, rename, replace, add, append."""
    for name in conf["remove"].get("json", []):
        doc.pop(name, None)
    for entry in conf["rename"].get("json", []):
        old, new = split_pair(entry)
        if old in doc:
            doc[new] = doc.pop(old)
    for op in ("replace", "add", "append"):
        entries = conf[op].get("json", [])
        types = conf[op].get("json_types", []) if with_types else []
        for i, entry in enumerate(entries):
            name, raw = split_pair(entry)
            value = convert_json_value(render(raw, lookup), types[i] if i < len(types) else None)
            if op == "replace":
                if name in doc:
                    doc[name] = value
            elif op == "add":
                if name not in doc:
                    doc[name] = value
            else:
                current = doc.get(name)
                if current is None:
                    doc[name] = value
                elif isinstance(current, list):
                    current.append(value)
                else:
                    doc[name] = [current, value]
    return doc


def apply_headers(
    headers: Any, conf: Mapping[str, Any], lookup: Lookup, *, request: bool = False
) -> None:
    """Header operations in Kong's order: remove, rename, replace, add, append.

    On the request (``request=True``) ``host`` is Kong's request-transformer's exception: the
    client's Host is not among the headers it edits, so removing or renaming ``host`` does
    nothing, adding it is ignored, and replacing it always sets it (Kong's ``set_headers``:
    the Host sent upstream and the TLS server name).

    NOTE: appending ``host`` sets it too; Kong fails the request there (500: its
    ``ngx.var.upstream_host`` cannot hold a list). Pinned by ``test_request_transformer_host``.
    """

    def is_host(name: str) -> bool:  # the request's Host, which only replace may set
        return request and name.lower() == "host"

    for name in conf["remove"]["headers"]:
        if not is_host(name):
            headers.remove(name)
    for entry in conf["rename"]["headers"]:
        old, new = split_pair(entry)
        if is_host(old):
            continue
        values = headers.get_all(old)
        if values:
            headers.remove(old)
            for v in values:
                headers.add(new, v)
    for entry in conf["replace"]["headers"]:
        name, value = split_pair(entry)
        if name in headers or is_host(name):
            headers.set(name, render(value, lookup))
    for entry in conf["add"]["headers"]:
        name, value = split_pair(entry)
        if is_host(name):
            continue
        if name not in headers:
            headers.set(name, render(value, lookup))
    for entry in conf["append"]["headers"]:
        name, value = split_pair(entry)
        headers.add(name, render(value, lookup))
