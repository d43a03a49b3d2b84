"""``POST /config`` on a node without a database (``database = off``), as Kong's DB-less mode.

Theory of operation: the body is a whole declarative configuration. It is parsed and validated
completely (``parse_declarative``), then prepared for the proxy (hashed, router and balancers
compiled) by the node's ``ConfigApplier``. Only when every step succeeded is it installed in
the proxy and shown by the Admin API's reads (the ``MemoryStore``), both in the same Trio
step, so a request sees either the old configuration or the new one, never a mix, and a
rejected configuration changes nothing.

Parsing the request body is here too: JSON, YAML, or a ``config`` field (JSON, form or
multipart) holding the document's text. YAML aliases are checked before the document is
built: a few lines of nested aliases expand to billions of values when it is walked.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import trio
import yaml

from gateway._config_apply import ConfigApplier
from gateway._memory_store import MemoryStore
from gateway.admin._body import BodyError, decode_body
from gateway.declarative import DeclarativeError, parse_declarative

#: The most values a YAML document may expand to (aliases included).
MAX_YAML_NODES = 1_000_000

_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


class DeclarativeLoader(Protocol):
    """What ``POST /config`` calls; None in ``install_meta_routes`` disables the endpoint."""

    async def load(self, doc: Mapping[str, Any], *, check_hash: bool) -> dict[str, Any] | None:
        """Validate and apply ``doc`` entirely or not at all; the configuration now in force,
        or None when ``check_hash`` is set and it equals the one in force. Raises
        ``DeclarativeError``."""
        ...


class DeclarativeReloader:
    """The ``DeclarativeLoader`` of a traditional node with ``database = off``."""

    def __init__(
        self,
        applier: ConfigApplier,
        memory: MemoryStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.applier = applier
        self.memory = memory
        self.clock = clock
        self._lock = trio.Lock()
        self._loaded_digest: str | None = None

    async def load(self, doc: Mapping[str, Any], *, check_hash: bool) -> dict[str, Any] | None:
        # As Kong, check_hash compares the documents as sent: the parsed configuration gets
        # fresh timestamps on every load, so its own hash would never repeat.
        digest = hashlib.md5(
            json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode(),
            usedforsecurity=False,
        ).hexdigest()
        # One load at a time: the comparison, the version and the swap belong together.
        async with self._lock:
            if check_hash and digest == self._loaded_digest:
                return None
            config = parse_declarative(doc, now=int(self.clock()))
            version = (self.applier.node.config_version or 0) + 1
            try:
                prepared = await self.applier.prepare(config, version=version, validate=False)
            except Exception as exc:  # compiling (router, certificates) rejected it
                raise DeclarativeError(f"declarative config is invalid: {exc}") from exc
            self.applier.install(prepared, source="declarative")
            self.memory.replace(config)
            self._loaded_digest = digest
        await self.applier.settle(prepared.version)
        return config


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (memoized, so this is
    linear in the document even when the expansion is exponential)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise BodyError(400, "failed parsing declarative configuration: recursive YAML alias")
    open_.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            total += _expanded_size(child, sizes, open_)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_)
    open_.discard(key)
    sizes[key] = total
    return total


def _load_yaml(text: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set()) > MAX_YAML_NODES:
            raise BodyError(
                400,
                "failed parsing declarative configuration: more than "
                f"{MAX_YAML_NODES} values once YAML aliases are expanded",
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_document_text(text: str | bytes) -> dict[str, Any]:
    """A declarative document from JSON or YAML text (never a file name)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        doc = json.loads(text) if text.lstrip().startswith("{") else _load_yaml(text)
    except BodyError:
        raise
    except (ValueError, yaml.YAMLError) as exc:
        raise BodyError(400, f"failed parsing declarative configuration: {exc}") from None
    except RecursionError:
        raise BodyError(
            400, "failed parsing declarative configuration: nested too deeply"
        ) from None
    if not isinstance(doc, dict):
        raise BodyError(
            400, "failed parsing declarative configuration: expected an object at the top level"
        )
    return doc


def config_from_request(content_type: str | None, body: bytes) -> dict[str, Any]:
    """The declarative document a ``POST /config`` request carries."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype in _YAML_TYPES:
        return parse_document_text(body)
    data, _ = decode_body(content_type, body)
    if not data:
        raise BodyError(400, "expected a declarative configuration in the body")
    inner = data.get("config")
    if isinstance(inner, str):
        return parse_document_text(inner)
    if isinstance(inner, dict) and "_format_version" not in data:
        return inner
    return data
