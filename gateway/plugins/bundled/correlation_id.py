"""correlation-id: tag each request with a unique id header (Kong's options).

An id already present in the request is kept. Generators: ``uuid`` (random UUID),
``uuid#counter`` (a per-worker UUID followed by ``#`` and a counter, cheaper), ``tracker``
(client address, port, worker pid, a counter and the time). ``echo_downstream`` copies the
id to the response.
"""

from __future__ import annotations

import itertools
import os
import uuid
from typing import ClassVar

from gateway.plugins._api import Context
from gateway.plugins._plugin import Plugin
from gateway.plugins.bundled._common import VERSION, header_name
from gateway.schema import Boolean, Record, String

_WORKER_UUID = str(uuid.uuid4())
_COUNTER = itertools.count(1)


class CorrelationId(Plugin):
    name: ClassVar[str] = "correlation-id"
    version: ClassVar[str] = VERSION
    priority: ClassVar[int] = 100001
    config_schema: ClassVar[Record] = Record(
        [
            ("header_name", header_name(default="Kong-Request-ID")),
            (
                "generator",
                String(
                    one_of=("uuid", "uuid#counter", "tracker"),
                    default="uuid#counter",
                    required=True,
                ),
            ),
            ("echo_downstream", Boolean(default=False, required=True)),
        ],
        required=True,
    )

    def _generate(self, ctx: Context) -> str:
        generator = self.config["generator"]
        if generator == "uuid":
            return str(uuid.uuid4())
        if generator == "uuid#counter":
            return f"{_WORKER_UUID}#{next(_COUNTER)}"
        return (
            f"{ctx.request.client_ip}-{ctx.request.port}-{os.getpid()}-"
            f"{next(_COUNTER)}-{ctx.now:.3f}"
        )

    async def access(self, ctx: Context) -> None:
        name = self.config["header_name"] or "Kong-Request-ID"
        value = ctx.request.headers.get(name)
        if not value:
            value = self._generate(ctx)
            ctx.service_request.headers.set(name, value)
        ctx.shared["correlation-id"] = value

    def header_filter(self, ctx: Context) -> None:
        if not self.config["echo_downstream"] or ctx.response is None:
            return
        value = ctx.shared.get("correlation-id")
        if isinstance(value, str):
            ctx.response.headers.set(self.config["header_name"] or "Kong-Request-ID", value)
