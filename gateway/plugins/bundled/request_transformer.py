"""request-transformer: change the request before it reaches the service (Kong's options).

Operations run in Kong's order (remove, rename, replace, add, append) on headers, the query
string and the body (JSON and form-encoded bodies; the body is buffered only when a body
operation is configured). ``replace.uri`` rewrites the upstream path and ``http_method``
the method. Values may use templates (see ``_transform``). Replacing (or appending) the
``host`` header sets the Host sent upstream and the TLS server name; adding, removing or
renaming it does nothing, as Kong's (``_transform.apply_headers``).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode

from gateway.plugins._api import Context
from gateway.plugins._plugin import Plugin
from gateway.plugins.bundled._common import VERSION
from gateway.plugins.bundled._transform import (
    apply_headers,
    name_list,
    pair_list,
    render,
    section,
    split_pair,
)
from gateway.schema import Record, String

_BODY_LIMIT = 8 * 1024 * 1024
# RFC 3986 pchar and "/" (letters, digits and "-._~" are always safe), and "%"
_PATH_SAFE = "/%:@!$&'()*+,;="


class RequestTransformer(Plugin):
    name: ClassVar[str] = "request-transformer"
    version: ClassVar[str] = VERSION
    priority: ClassVar[int] = 801
    config_schema: ClassVar[Record] = Record(
        [
            ("http_method", String(match=r"[A-Z]+", match_message="invalid method")),
            (
                "remove",
                section(
                    [("body", name_list()), ("headers", name_list()), ("querystring", name_list())]
                ),
            ),
            (
                "rename",
                section(
                    [("body", pair_list()), ("headers", pair_list()), ("querystring", pair_list())]
                ),
            ),
            (
                "replace",
                section(
                    [
                        ("body", pair_list()),
                        ("headers", pair_list()),
                        ("querystring", pair_list()),
                        ("uri", String()),
                    ]
                ),
            ),
            (
                "add",
                section(
                    [("body", pair_list()), ("headers", pair_list()), ("querystring", pair_list())]
                ),
            ),
            (
                "append",
                section(
                    [("body", pair_list()), ("headers", pair_list()), ("querystring", pair_list())]
                ),
            ),
        ],
        required=True,
    )

    def _lookup(self, ctx: Context) -> Any:
        captures: dict[str, str] = ctx.shared.get("uri_captures") or {}

        def lookup(src: str, key: str) -> str | None:
            if src == "headers":
                return ctx.request.headers.get(key)
            if src == "query_params":
                return next(
                    (
                        unquote_plus(v)
                        for k, v in ctx.service_request.query
                        if v and unquote_plus(k) == key
                    ),
                    None,
                )
            if src == "uri_captures":
                return captures.get(key)
            value = ctx.shared.get(key)
            return value if isinstance(value, str) else None

        return lookup

    async def access(self, ctx: Context) -> None:
        conf = self.config
        lookup = self._lookup(ctx)
        req = ctx.service_request
        if conf.get("http_method"):
            req.method = conf["http_method"]
        # headers
        h = req.headers
        apply_headers(h, conf, lookup, request=True)
        # query string: kept as the client encoded it, so names are compared decoded and
        # what the plugin writes is encoded (as Kong's ngx.encode_args): a value taken from
        # a header cannot add a parameter or break the request line
        q: list[tuple[str, str | None]] = list(req.query)
        removed = set(conf["remove"]["querystring"])
        q = [(k, v) for k, v in q if unquote_plus(k) not in removed]
        for entry in conf["rename"]["querystring"]:
            old, new = split_pair(entry)
            q = [(quote(new, safe="") if unquote_plus(k) == old else k, v) for k, v in q]
        for entry in conf["replace"]["querystring"]:
            name, value = split_pair(entry)
            if any(unquote_plus(k) == name for k, _ in q):
                rendered = quote(render(value, lookup), safe="")
                q = [(k, rendered if unquote_plus(k) == name else v) for k, v in q]
        for entry in conf["add"]["querystring"]:
            name, value = split_pair(entry)
            if not any(unquote_plus(k) == name for k, _ in q):
                q.append((quote(name, safe=""), quote(render(value, lookup), safe="")))
        for entry in conf["append"]["querystring"]:
            name, value = split_pair(entry)
            q.append((quote(name, safe=""), quote(render(value, lookup), safe="")))
        req.query = q
        if conf["replace"].get("uri"):
            # what a template put in the path is escaped where a path cannot hold it (a
            # space, "?", "#"), escapes already there are kept
            req.path = quote(render(conf["replace"]["uri"], lookup), safe=_PATH_SAFE)
        if any(conf[op]["body"] for op in ("remove", "rename", "replace", "add", "append")):
            await self._transform_body(ctx, lookup)

    async def _transform_body(self, ctx: Context, lookup: Any) -> None:
        ctype = (ctx.request.headers.get("content-type") or "").lower()
        is_json = "application/json" in ctype
        is_form = "application/x-www-form-urlencoded" in ctype
        if not (is_json or is_form):
            return
        raw = await ctx.read_body(_BODY_LIMIT)
        try:
            if is_json:
                parsed = json.loads(raw or b"{}")
                if not isinstance(parsed, dict):
                    return
                doc: dict[str, Any] = parsed
            else:
                doc = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        except (ValueError, UnicodeDecodeError):
            return
        conf = self.config
        for name in conf["remove"]["body"]:
            doc.pop(name, None)
        for entry in conf["rename"]["body"]:
            old, new = split_pair(entry)
            if old in doc:
                doc[new] = doc.pop(old)
        for entry in conf["replace"]["body"]:
            name, value = split_pair(entry)
            if name in doc:
                doc[name] = render(value, lookup)
        for entry in conf["add"]["body"]:
            name, value = split_pair(entry)
            if name not in doc:
                doc[name] = render(value, lookup)
        for entry in conf["append"]["body"]:
            name, value = split_pair(entry)
            current = doc.get(name)
            rendered = render(value, lookup)
            if current is None:
                doc[name] = rendered
            elif isinstance(current, list):
                current.append(rendered)
            else:
                doc[name] = [current, rendered]
        if is_json:
            body = json.dumps(doc, separators=(",", ":")).encode()
        else:
            body = urlencode(doc, doseq=True).encode()
        ctx.service_request.body = body
        ctx.service_request.headers.remove("content-length")
