"""The parser interface the server loop and the upstream client are written against.

Three backends implement it: ``"h11"`` (the reference, ``_h11_backend``), ``"httptools"``
(``_fast_backend``: llhttp parses heads, our own code frames bodies) and ``"fast"`` (the
default: a strict regex grammar parses heads in C, same body framing). They share the
checks of ``_events``; the conformance tests run against all three.
"""

from __future__ import annotations

from typing import Literal, Protocol

from gateway.http._events import Limits, RequestHead, ResponseHead, Sentinel

__all__ = [
    "BACKENDS",
    "Backend",
    "RequestParser",
    "ResponseParser",
    "make_request_parser",
    "make_response_parser",
]

Backend = Literal["h11", "httptools", "fast"]
BACKENDS: tuple[Backend, ...] = ("h11", "httptools", "fast")


class RequestParser(Protocol):
    """Server side: parses requests from a client connection."""

    def receive_data(self, data: bytes) -> None:
        """Feed bytes; ``b""`` means the peer closed its side."""

    def next_event(self) -> RequestHead | bytes | Sentinel:
        """``RequestHead``, body ``bytes``, ``END``, ``NEED_DATA``, ``PAUSED`` or ``CLOSED``.

        Raises ``HttpError`` when the client broke the protocol.
        """

    def start_next_cycle(self) -> None:
        """After ``PAUSED`` (the request was fully read): expect the next request."""

    def trailing_data(self) -> bytes:
        """Bytes received after the current request (for a protocol switch)."""


class ResponseParser(Protocol):
    """Client side: parses one response to a request we sent."""

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> ResponseHead | bytes | Sentinel:
        """``ResponseHead`` (1xx heads come first, then the final one), body ``bytes``,
        ``END``, ``NEED_DATA`` or ``PAUSED`` (after a 101). Raises ``HttpError``."""

    def trailing_data(self) -> bytes: ...

    @property
    def reusable(self) -> bool:
        """True when the response was read to its end and the connection may carry another."""


def make_request_parser(backend: Backend, limits: Limits) -> RequestParser:
    if backend == "fast":
        return FastRequestParser(limits)
    if backend == "httptools":
        return FastRequestParser(limits, "httptools")
    return H11RequestParser(limits)


def make_response_parser(
    backend: Backend, limits: Limits, method: str, *, upgrade: bool = False
) -> ResponseParser:
    if backend == "fast":
        return FastResponseParser(limits, method, upgrade=upgrade)
    if backend == "httptools":
        return FastResponseParser(limits, method, upgrade=upgrade, grammar="httptools")
    return H11ResponseParser(limits, method, upgrade=upgrade)


from gateway.http._fast_backend import FastRequestParser, FastResponseParser  # noqa: E402
from gateway.http._h11_backend import H11RequestParser, H11ResponseParser  # noqa: E402
