"""request-size-limiting: refuse request bodies larger than a limit (Kong's options).

A ``Content-Length`` above the limit is refused at once with 413; a chunked body is
counted while it is read and refused with 413 as soon as it passes the limit (the body is
then buffered, up to the limit, as Kong does). ``require_content_length`` refuses bodies
without a ``Content-Length`` with 411.
"""

from __future__ import annotations

from typing import ClassVar

from gateway.plugins._api import Context
from gateway.plugins._plugin import Plugin
from gateway.plugins.bundled._common import VERSION
from gateway.schema import Boolean, Integer, Record, String

_UNITS = {"megabytes": 1024 * 1024, "kilobytes": 1024, "bytes": 1}
TOO_LARGE = {"message": "Request size limit exceeded"}


class RequestSizeLimiting(Plugin):
    name: ClassVar[str] = "request-size-limiting"
    version: ClassVar[str] = VERSION
    priority: ClassVar[int] = 951
    config_schema: ClassVar[Record] = Record(
        [
            ("allowed_payload_size", Integer(default=128, required=True)),
            (
                "size_unit",
                String(one_of=tuple(_UNITS), default="megabytes", required=True),
            ),
            ("require_content_length", Boolean(default=False, required=True)),
        ],
        required=True,
    )

    @property
    def limit(self) -> int:
        return int(self.config["allowed_payload_size"]) * _UNITS[self.config["size_unit"]]

    async def access(self, ctx: Context) -> None:
        headers = ctx.request.headers
        raw_length = headers.get("content-length")
        if raw_length is not None:
            try:
                length = int(raw_length)
            except ValueError:
                ctx.exit(411, {"message": "A valid Content-Length header is required"})
            if length > self.limit:
                ctx.exit(413, TOO_LARGE)
            return
        if headers.get("transfer-encoding") is None:
            return  # no body
        if self.config["require_content_length"]:
            ctx.exit(411, {"message": "A valid Content-Length header is required"})
        # Chunked: read (and keep) the body, refusing it once it passes the limit.
        ctx.service_request.body = await ctx.read_body(self.limit)
