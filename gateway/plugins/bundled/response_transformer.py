"""response-transformer: change the response before it reaches the client (Kong's options).

Header operations run in ``header_filter``. JSON operations run on responses whose
``Content-Type`` is JSON: the body is buffered until its end (only then), transformed, and
sent with a new length. ``json_types`` (``boolean``, ``number``, ``string``) gives the type
of each added or replaced JSON value, position by position.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from gateway.plugins._api import Context
from gateway.plugins._plugin import Plugin
from gateway.plugins.bundled._common import VERSION
from gateway.plugins.bundled._transform import (
    apply_headers,
    apply_json,
    name_list,
    pair_list,
    section,
)
from gateway.schema import Array, Record, String

_TYPES = Array(String(one_of=("boolean", "number", "string")), default=[], required=True)


def _headers_and_json(typed: bool, pairs: bool) -> Record:
    make = pair_list if pairs else name_list
    fields: list[tuple[str, Any]] = [("headers", make()), ("json", make())]
    if typed:
        fields.append(("json_types", _TYPES))
    return section(fields)


class ResponseTransformer(Plugin):
    name: ClassVar[str] = "response-transformer"
    version: ClassVar[str] = VERSION
    priority: ClassVar[int] = 800
    config_schema: ClassVar[Record] = Record(
        [
            ("remove", _headers_and_json(False, False)),
            ("rename", _headers_and_json(False, True)),
            ("replace", _headers_and_json(True, True)),
            ("add", _headers_and_json(True, True)),
            ("append", _headers_and_json(True, True)),
        ],
        required=True,
    )

    def __init__(self, config: dict[str, Any], *, plugin_id: str = "") -> None:
        super().__init__(config, plugin_id=plugin_id)
        self.has_json = any(
            config[op]["json"] for op in ("remove", "rename", "replace", "add", "append")
        )

    def header_filter(self, ctx: Context) -> None:
        response = ctx.response
        if response is None:
            return
        conf = self.config
        h = response.headers

        def lookup(src: str, key: str) -> str | None:
            if src == "headers":
                return h.get(key)
            return None

        apply_headers(h, conf, lookup)
        ctype = (h.get("content-type") or "").lower()
        if self.has_json and "json" in ctype:
            h.remove("content-length")
            ctx.shared["response-transformer.buffer"] = []

    def body_filter(self, ctx: Context, chunk: bytes, eof: bool) -> bytes:
        buffer = ctx.shared.get("response-transformer.buffer")
        if buffer is None:
            return chunk
        buffer.append(chunk)
        if not eof:
            return b""
        raw = b"".join(buffer)
        ctx.shared["response-transformer.buffer"] = None
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return raw
        if not isinstance(doc, dict):
            return raw
        doc = apply_json(doc, self.config, lambda s, k: None, with_types=True)
        return json.dumps(doc, separators=(",", ":")).encode()
