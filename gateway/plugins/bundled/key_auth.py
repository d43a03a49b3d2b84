"""key-auth: authenticate consumers with an API key (Kong's plugin, same options).

The key is looked up in the configured header names, then the query string, then the body
(form, multipart or JSON, only when ``key_in_body``). A missing key answers 401 "No API key
found in request"; an unknown or expired key 401 "Unauthorized". With ``anonymous`` set,
failures authenticate the anonymous consumer instead (Kong's "logical OR" setups).
"""

from __future__ import annotations

import json
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import HTTP
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote_plus, urlencode

from gateway._forms import parse_multipart
from gateway.plugins._api import Context
from gateway.plugins._plugin import Plugin
from gateway.plugins.bundled._common import VERSION, header_name
from gateway.schema import Array, Boolean, Record, String

_WWW_AUTH = "Key"
_CONSUMER_HEADERS = (
    "x-consumer-id",
    "x-consumer-custom-id",
    "x-consumer-username",
    "x-credential-identifier",
    "x-anonymous-consumer",
)


class KeyAuth(Plugin):
    name: ClassVar[str] = "key-auth"
    version: ClassVar[str] = VERSION
    priority: ClassVar[int] = 1250
    protocols: ClassVar[tuple[str, ...]] = ("grpc", "grpcs", "http", "https", "ws", "wss")
    no_consumer: ClassVar[bool] = True
    config_schema: ClassVar[Record] = Record(
        [
            (
                "key_names",
                Array(header_name(), required=True, default=["apikey"], len_min=1),
            ),
            ("hide_credentials", Boolean(required=True, default=False)),
            ("anonymous", String()),
            ("key_in_header", Boolean(required=True, default=True)),
            ("key_in_query", Boolean(required=True, default=True)),
            ("key_in_body", Boolean(required=True, default=False)),
            ("run_on_preflight", Boolean(required=True, default=True)),
            ("realm", String()),
        ],
        required=True,
    )

    async def access(self, ctx: Context) -> None:
        conf = self.config
        if ctx.request.method == "OPTIONS" and not conf["run_on_preflight"]:
            return
        if ctx.credential is not None and conf["anonymous"]:
            # already authenticated by another plugin ("logical OR"); as Kong, a consumer
            # without a credential (another plugin's anonymous) does not count
            return
        for name in _CONSUMER_HEADERS:
            ctx.service_request.headers.remove(name)
        key, where = await self._find_key(ctx)
        if key is None:
            self._fail(ctx, 401, "No API key found in request")
            return
        credential = ctx.entities.by_field("keyauth_credentials", "key", key)
        if credential is not None and _expired(credential, ctx.now):
            credential = None
        consumer = None
        if credential is not None:
            ref = credential.get("consumer") or {}
            consumer = ctx.entities.by_id("consumers", ref.get("id", ""))
        if consumer is None or credential is None:
            self._fail(ctx, 401, "Unauthorized")
            return
        if conf["hide_credentials"]:
            self._hide(ctx, where)
        _set_consumer(ctx, consumer, credential)

    def _fail(self, ctx: Context, status: int, message: str) -> None:
        anonymous = self.config["anonymous"]
        if anonymous:
            consumer = ctx.entities.by_id("consumers", anonymous) or ctx.entities.by_field(
                "consumers", "username", anonymous
            )
            if consumer is None:
                ctx.exit(500, {"message": "An unexpected error occurred"})
            _set_consumer(ctx, consumer, None)
            ctx.service_request.headers.set("x-anonymous-consumer", "true")
            return
        realm = self.config["realm"]
        challenge = f'{_WWW_AUTH} realm="{realm or "gateway"}"'
        ctx.exit(status, {"message": message}, {"WWW-Authenticate": challenge})

    async def _find_key(self, ctx: Context) -> tuple[str | None, tuple[str, str] | None]:
        conf = self.config
        names: list[str] = conf["key_names"]
        if conf["key_in_header"]:
            for name in names:
                value = ctx.request.headers.get(name)
                if value:
                    return value, ("header", name)
        if conf["key_in_query"]:
            lowered = {n.lower() for n in names}
            for k, v in ctx.service_request.query:
                # the query is kept as the client encoded it; keys are compared decoded
                if v and unquote_plus(k).lower() in lowered:
                    return unquote_plus(v), ("query", unquote_plus(k))
        if conf["key_in_body"]:
            body = await _read_body_fields(ctx)
            for name in names:
                value = body.get(name)
                if isinstance(value, str) and value:
                    return value, ("body", name)
        return None, None

    def _hide(self, ctx: Context, where: tuple[str, str] | None) -> None:
        if where is None:
            return
        # As Kong, the key's name goes from the headers and the query string whichever
        # held it: a copy sent both ways must not reach the service either.
        kind, name = where
        lowered = name.lower()
        request = ctx.service_request
        request.headers.remove(name)
        request.query = [(k, v) for k, v in request.query if unquote_plus(k).lower() != lowered]
        if kind == "body":
            body = ctx.shared.get("key_auth.body")
            content_type = ctx.request.headers.get("content-type") or ""
            ctype = content_type.lower()
            if isinstance(body, dict):
                body.pop(name, None)
                if "json" in ctype:
                    request.body = json.dumps(body).encode()
                elif "multipart/form-data" in ctype:
                    # the other parts (files too) go on as they came, in the same encoding
                    request.body = _drop_multipart_field(content_type, request.body or b"", name)
                else:
                    request.body = urlencode(body).encode()
                request.headers.remove("content-length")


def _expired(credential: dict[str, Any], now: float) -> bool:
    ttl = credential.get("ttl")
    created = credential.get("created_at")
    if not isinstance(ttl, int) or ttl <= 0 or not isinstance(created, int | float):
        return False
    return created + ttl <= now


def _set_consumer(
    ctx: Context, consumer: dict[str, Any], credential: dict[str, Any] | None
) -> None:
    ctx.authenticate(consumer, credential)
    headers = ctx.service_request.headers
    headers.set("x-consumer-id", consumer["id"])
    if consumer.get("custom_id"):
        headers.set("x-consumer-custom-id", consumer["custom_id"])
    if consumer.get("username"):
        headers.set("x-consumer-username", consumer["username"])
    if credential is not None:
        headers.set("x-credential-identifier", credential["id"])


async def _read_body_fields(ctx: Context) -> dict[str, Any]:
    cached = ctx.shared.get("key_auth.body")
    if isinstance(cached, dict):
        return cached
    ctype = (ctx.request.headers.get("content-type") or "").lower()
    raw = await ctx.read_body(8 * 1024 * 1024)
    ctx.service_request.body = raw
    fields: dict[str, Any] = {}
    try:
        if "application/json" in ctype:
            doc = json.loads(raw or b"{}")
            if isinstance(doc, dict):
                fields = doc
        elif "application/x-www-form-urlencoded" in ctype:
            fields = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        elif "multipart/form-data" in ctype:
            pairs = parse_multipart(ctx.request.headers.get("content-type") or "", raw)
            fields = dict(pairs or [])
    except (ValueError, UnicodeDecodeError):
        fields = {}
    ctx.shared["key_auth.body"] = fields
    return fields


def _drop_multipart_field(content_type: str, raw: bytes, name: str) -> bytes:
    """``raw`` without the parts named ``name``; the other parts byte for byte."""
    holder = EmailMessage()
    holder["content-type"] = content_type
    boundary = holder.get_boundary()
    if not boundary:
        return raw
    delimiter = b"--" + boundary.encode("latin-1")
    parts = raw.split(delimiter)
    # parts[0] is the preamble, the last one starts with "--" (the close delimiter)
    kept = [parts[0]]
    for part in parts[1:]:
        head = part.split(b"\r\n\r\n", 1)[0]
        if not part.startswith(b"--"):
            disposition = BytesHeaderParser(policy=HTTP).parsebytes(head.lstrip(b"\r\n"))
            if disposition.get_param("name", header="content-disposition") == name:
                continue
        kept.append(part)
    return delimiter.join(kept)
