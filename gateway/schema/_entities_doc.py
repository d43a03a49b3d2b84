"""Render docs/reference/entities.md from ``ENTITIES`` (a test keeps the file in sync).

Regenerate with ``python -m gateway.schema._entities_doc > docs/reference/entities.md``.
"""

from __future__ import annotations

import json

from gateway.schema._fields import Array, Field, Foreign, Integer, Map, Number, Record, String
from gateway.schema.entities import ENTITIES

_NOTES = {
    "services": "The `url` shorthand sets `protocol`, `host`, `port` and `path` at once "
    "(`https://example.com:8443/v1`); without a port, http/ws take 80 and https/wss 443. "
    "`path` must be null for tcp, tls, tls_passthrough, udp, grpc and grpcs; "
    "`client_certificate`, `tls_verify`, `tls_verify_depth` and `ca_certificates` only for "
    "https, wss and tls. A service with routes cannot be deleted (`restrict`).",
    "routes": "Per protocol (Kong's route subschemas): http/https routes need one of "
    "`methods`, `hosts`, `headers`, `paths` (`snis` too with https) and no `sources` / "
    "`destinations`; tcp/tls/udp routes need one of `sources`, `destinations`, `snis` and "
    "no `methods`, `hosts`, `paths`, `headers`; tls_passthrough needs `snis`; grpc/grpcs "
    "routes need one of `hosts`, `headers`, `paths` (`snis` with grpcs), take no `methods` "
    "and default `strip_path` to false; ws/wss like grpc. `snis` only with grpcs, https, tls, "
    "tls_passthrough or wss. Protocols of different families do not mix. Paths start with "
    "`/` (prefix) or `~/` (regex, must compile; PCRE `(?<name>...)` groups accepted). "
    "`headers` may not contain `host`.",
    "consumers": "At least one of `username`, `custom_id`.",
    "keyauth_credentials": "Admin API: `/key-auths` and `/consumers/{consumer}/key-auth`. "
    "A missing `key` is generated (random UUID, hex) on insert.",
    "plugins": "`name` must be an available plugin; `config` is validated by that plugin's "
    "`config_schema` (defaults filled, errors under `config`). `protocols` defaults to the "
    "plugin's protocols. Plugins flagged `no_consumer` / `no_route` / `no_service` refuse "
    "that scope. Unique per (name, route, service, consumer).",
    "upstreams": "`name` is a hostname (no IP, no port). Hashing: `hash_on` header / cookie / "
    "query_arg / uri_capture need their `hash_on_*` field (same for `hash_fallback`); "
    "`hash_fallback` must be `none` when `hash_on` is none or cookie and differ from "
    "`hash_on` otherwise; the two header, query-arg and uri-capture names must differ.",
    "targets": "`target` is `host[:port]`, normalised with the default port 8000 "
    "(`[::1]:8000` for IPv6). Unique per upstream. Timestamps have millisecond decimals.",
    "certificates": "PEM, parsed with `cryptography`; `key` must match `cert`; `cert_alt` / "
    "`key_alt` come together and use another key type (RSA and ECDSA).",
    "snis": "Wildcards as leftmost or rightmost label; no IP, no port. Deleted with their "
    "certificate.",
    "ca_certificates": "One CA certificate (basic constraint CA) that has not expired; "
    "`cert_digest` is computed (SHA-256 of the DER, hex).",
}


def _type(field: Field) -> str:
    if isinstance(field, Foreign):
        return f"foreign → {field.reference}"
    if isinstance(field, Array):
        return f"{field.type_name} of {_type(field.elements)}"
    if isinstance(field, Map):
        return f"map {_type(field.keys)} → {_type(field.values)}"
    return field.type_name


def _constraints(field: Field) -> str:
    parts: list[str] = []
    if field.required:
        parts.append("required")
    if field.unique:
        parts.append("unique")
    if field.auto:
        parts.append("auto")
    if isinstance(field, String | Integer | Number) and field.one_of is not None:
        parts.append("one of " + ", ".join(f"`{v}`" for v in field.one_of))
    if isinstance(field, Integer | Number) and field.between is not None:
        parts.append(f"between {field.between[0]} and {field.between[1]}")
    if isinstance(field, Integer | Number) and field.gt is not None:
        parts.append(f"> {field.gt}")
    if isinstance(field, String):
        if field.starts_with:
            parts.append(f"starts with `{field.starts_with}`")
        if field.len_min is not None:
            parts.append(f"length ≥ {field.len_min}")
    if isinstance(field, Array) and field.len_min is not None:
        parts.append(f"at least {field.len_min}")
    if isinstance(field, Foreign):
        parts.append(f"on delete: {field.on_delete}")
    if field.checks or (isinstance(field, Array) and field.elements.checks):
        parts.append("validated (see notes)")
    return "; ".join(parts)


def _default(field: Field) -> str:
    if isinstance(field, Record):
        return "(record defaults)" if field.required else ""
    if field.default is None:
        return ""
    return "`" + json.dumps(field.default) + "`"


def _rows(fields: dict[str, Field], prefix: str = "") -> list[str]:
    rows: list[str] = []
    for name, field in fields.items():
        rows.append(
            f"| `{prefix}{name}` | {_type(field)} | {_default(field)} | {_constraints(field)} |"
        )
        if isinstance(field, Record) and field.fields:
            rows += _rows(field.fields, f"{prefix}{name}.")
    return rows


def render_markdown() -> str:
    out: list[str] = [
        "# Entities",
        "",
        "<!-- Generated by `python -m gateway.schema._entities_doc`; do not edit. -->",
        "",
        "The core entities with Kong 3.x field names, types, defaults and constraints. Every",
        "entity has `id` (UUID, generated when missing) and, except where noted, `created_at`",
        'and `updated_at` (seconds since the epoch). Foreign keys are written `{"id": ...}`.',
        "Errors follow Kong: a `fields` tree and the message `schema violation (field: ...)` or",
        "`N schema violations (...)`. `ENTITIES` (gateway/schema/entities.py) is in dependency",
        "order: an entity only references entities above it.",
        "",
    ]
    for name, schema in ENTITIES.items():
        meta: list[str] = [f"Admin API path: `/{schema.admin_path}`"]
        if schema.endpoint_key:
            meta.append(f"endpoint key: `{schema.endpoint_key}`")
        if schema.owner:
            meta.append(f"owner: `{schema.owner}`")
        if schema.cache_key:
            meta.append("unique together: " + ", ".join(f"`{k}`" for k in schema.cache_key))
        out += [f"## {name}", "", "; ".join(meta) + ".", ""]
        if name in _NOTES:
            out += [_NOTES[name], ""]
        out += ["| field | type | default | constraints |", "|---|---|---|---|"]
        out += _rows(schema.fields)
        out.append("")
    return "\n".join(out)


def documented_fields(text: str) -> set[tuple[str, str]]:
    """``(entity, dotted field)`` pairs documented in ``text`` (for the sync test)."""
    found: set[tuple[str, str]] = set()
    entity = ""
    for line in text.splitlines():
        if line.startswith("## "):
            entity = line[3:].strip()
        elif line.startswith("| `") and entity:
            found.add((entity, line.split("`")[1]))
    return found


def _all_fields() -> set[tuple[str, str]]:
    def walk(fields: dict[str, Field], prefix: str) -> set[str]:
        names: set[str] = set()
        for n, f in fields.items():
            names.add(prefix + n)
            if isinstance(f, Record):
                names |= walk(f.fields, f"{prefix}{n}.")
        return names

    return {(e, f) for e, s in ENTITIES.items() for f in walk(s.fields, "")}


def undocumented(text: str) -> set[tuple[str, str]]:
    return _all_fields() - documented_fields(text)


def main() -> None:
    print(render_markdown(), end="")


if __name__ == "__main__":
    main()
