"""Events and checks shared by every HTTP/1.1 parser backend.

Theory of operation: a parser backend is a sans-I/O object. The shell feeds it bytes with
``receive_data`` (``b""`` means EOF) and pulls events with ``next_event``: a head
(``RequestHead`` / ``ResponseHead``), body bytes (a ``bytes`` object), ``END`` (end of the
message), ``NEED_DATA``, ``PAUSED`` (server side: a complete request was read; call
``start_next_cycle`` for the next one) or ``CLOSED`` (the peer closed between messages).

Every backend builds heads with the same semantic checks (``build_request_head`` /
``build_response_head``: framing, duplicates, Host, version, target form) and counts header
lines (``check_header_count``). h11 silently accepts several smuggling vectors (obs-folds,
bare LF, ``Content-Length`` + ``Transfer-Encoding``, duplicate identical ``Content-Length``,
absolute-form targets, ``HTTP/2.0`` request lines), so its head blocks also get the raw
checks of ``check_head_block`` (and ``find_head_end``'s CR/LF scan) before parsing; llhttp
and the regex grammar refuse those byte-level faults themselves. The conformance suite runs
against every backend, so all refuse the same way.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "CLOSED",
    "END",
    "NEED_DATA",
    "PAUSED",
    "HeaderList",
    "HttpError",
    "Limits",
    "RequestHead",
    "ResponseHead",
    "Sentinel",
    "build_request_head",
    "build_response_head",
    "check_head_block",
    "check_header_count",
    "find_head_end",
    "header_tokens",
]

HeaderList = list[tuple[bytes, bytes]]


class Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = Sentinel("NEED_DATA")
PAUSED: Final = Sentinel("PAUSED")
END: Final = Sentinel("END")
CLOSED: Final = Sentinel("CLOSED")


class HttpError(Exception):
    """The peer broke HTTP/1.1; ``status`` is the answer a server gives (400, 413, 431, 505...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Limits:
    """Hard limits on what a peer may send (nginx's defaults are in the same range)."""

    __slots__ = ("max_body_size", "max_header_bytes", "max_headers", "max_request_line")

    def __init__(
        self,
        *,
        max_header_bytes: int = 32 * 1024,
        max_request_line: int = 8 * 1024,
        max_headers: int = 100,
        max_body_size: int | None = None,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_request_line = max_request_line
        self.max_headers = max_headers
        self.max_body_size = max_body_size


class RequestHead:
    """A request line and its headers (names lower-case), with the framing already decided."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        *,
        method: str,
        target: str,
        version: str,
        headers: HeaderList,
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
        expect_continue: bool,
        upgrade: str | None,
        host: str,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        self.host = host

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class ResponseHead:
    __slots__ = (
        "chunked",
        "content_length",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        *,
        status: int,
        reason: bytes,
        version: str,
        headers: HeaderList,
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive


# Unbound methods, called with the object as first argument: in compiled code this skips
# the method lookup of a generic ``buf.find(...)``, which is half of such a call's cost
# (169 against 84 ns for a find in a small head, mypyc 2.4.1).
_bytearray_find: Final = bytearray.find


def find_head_end(
    buf: bytearray, limits: Limits, *, request: bool, scan_complete: bool = True
) -> int:
    """Index just past the blank line ending the head in ``buf``, or -1 when incomplete.

    Raises ``HttpError`` as soon as the bytes seen so far cannot become a valid head: a bare
    LF or CR, an oversized request line (414) or header block (431). Counting ourselves
    makes the limits hard whatever the receive size (h11's ``max_incomplete_event_size``
    is not, see the stack notes section 5).
    """
    end = _bytearray_find(buf, b"\r\n\r\n")
    if end < 0 or scan_complete:
        # (a backend whose head grammar refuses bare CR/LF itself skips this once complete)
        scan = buf if end < 0 else buf[: end + 4]
        pairs = scan.count(b"\r\n")
        lf = scan.count(b"\n")
        cr = scan.count(b"\r")
        if end < 0 and scan.endswith(b"\r"):
            cr -= 1  # may be the first half of a CRLF still to come
        if lf != pairs or cr != pairs:
            raise HttpError(400, "bare CR or LF in the message head")
    # a complete head no longer than the limit holds a request line no longer than it
    if request and (end < 0 or end > limits.max_request_line):
        line_end = _bytearray_find(buf, b"\r\n")
        if (line_end < 0 and len(buf) > limits.max_request_line) or (
            line_end > limits.max_request_line
        ):
            raise HttpError(414, "request line too long")
    if end < 0:
        if len(buf) > limits.max_header_bytes:
            raise HttpError(431, "request header fields too large")
        return -1
    if end + 4 > limits.max_header_bytes:
        raise HttpError(431, "request header fields too large")
    return end + 4


_FRAMING_RE = re.compile(
    rb"\r\n(content-length|transfer-encoding|host)[ \t]*:[ \t]*([^\r]*)", re.IGNORECASE
)


def check_header_count(block: bytes, limits: Limits) -> None:
    """431 when a complete head (ending with CRLF CRLF) has more header lines than allowed."""
    # a valid header line takes at least 4 bytes ("a:" CRLF): a short block cannot have too
    # many (an invalid one is refused by the parser anyway)
    if len(block) > 4 * limits.max_headers and block.count(b"\r\n") - 2 > limits.max_headers:
        raise HttpError(431, "too many header fields")


def check_head_block(block: bytes, limits: Limits, *, request: bool) -> None:
    """Raw checks on a complete head (ending with CRLF CRLF) before a backend that accepts
    too much (h11, see the module docstring) parses it.

    Done with C-level scans of the whole block (count, find, one regex) rather than a loop
    over lines: this runs for every message on both legs.
    """
    check_header_count(block, limits)
    body = block[:-2]  # keep the CRLF ending the last header line
    if b"\r\n " in body or b"\r\n\t" in body:  # obs-fold (RFC 9112 5.2)
        raise HttpError(400, "obsolete line folding in the header block")
    if b"\r\n\r\n" in body:
        raise HttpError(400, "empty header line")
    found = _FRAMING_RE.findall(block)
    if not found:
        return
    cl = te = host = 0
    for name, value in found:
        name = name.lower()
        if name == b"content-length":
            cl += 1
            if not value.rstrip(b" \t").isdigit():
                raise HttpError(400 if request else 502, "invalid Content-Length")
        elif name == b"transfer-encoding":
            te += 1
            if request and value.rstrip(b" \t").lower() != b"chunked":
                raise HttpError(400, "unsupported Transfer-Encoding")
        else:
            host += 1
    if cl > 1:
        raise HttpError(400 if request else 502, "duplicate Content-Length")
    if te > 1:
        raise HttpError(400 if request else 502, "duplicate Transfer-Encoding")
    if request:
        if cl and te:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if host > 1:
            raise HttpError(400, "duplicate Host")


_VERSIONS = ("1.1", "1.0")


# the values a Connection header nearly always has (nginx sends "keep-alive" on every
# response), tokenised in advance: one dict lookup instead of a split, a strip and a lower
_SINGLE_TOKENS = {
    spelling: token
    for token in (b"keep-alive", b"close", b"upgrade")
    for spelling in (token, token.capitalize(), token.title(), token.upper())
}


def header_tokens(value: bytes) -> list[bytes]:
    """The comma-separated tokens of a header value, stripped and lower-cased."""
    token = _SINGLE_TOKENS.get(value)
    if token is not None:
        return [token]
    return [t.strip().lower() for t in value.split(b",")]


def build_request_head(
    method: str, target: str, version: str, headers: HeaderList, limits: Limits | None = None
) -> RequestHead:
    """Semantic checks every backend applies to a parsed request head (one pass).

    Framing is checked here on the header list as parsed (duplicates included), so a
    backend that parses heads itself needs no other framing check.
    """
    if version not in _VERSIONS:
        raise HttpError(505, "HTTP version not supported")
    if target[:1] != "/":
        # absolute-form (RFC 9112 3.2.2) is for forward proxies; authority/asterisk forms
        # (CONNECT, OPTIONS *) are not proxied either.
        raise HttpError(400, "request target must be in origin-form")
    if limits is not None and len(headers) > limits.max_headers:
        raise HttpError(431, "too many header fields")
    content_length: int | None = None
    chunked = False
    host: bytes | None = None
    hosts = cls = tes = 0
    connection: list[bytes] | None = None
    expect = False
    upgrade: bytes | None = None
    for k, v in headers:
        if k == b"host":
            hosts += 1
            host = v
        elif k == b"content-length":
            cls += 1
            v = v.strip(b" \t")
            if not v.isdigit() or len(v) > 18:
                raise HttpError(400, "invalid Content-Length")
            content_length = int(v)
        elif k == b"transfer-encoding":
            tes += 1
            if v.strip(b" \t").lower() != b"chunked":
                raise HttpError(400, "unsupported Transfer-Encoding")
            chunked = True
        elif k == b"connection":
            connection = (connection or []) + header_tokens(v)
        elif k == b"expect":
            expect = v.strip().lower() == b"100-continue"
        elif k == b"upgrade":
            upgrade = v.strip()
    if cls > 1:
        raise HttpError(400, "duplicate Content-Length")
    if tes:
        if tes > 1:
            raise HttpError(400, "duplicate Transfer-Encoding")
        if cls:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if version == "1.0":
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 message")
    if hosts > 1:
        raise HttpError(400, "duplicate Host")
    if version == "1.1":
        if not host:
            raise HttpError(400, "missing Host header")
        keep_alive = connection is None or b"close" not in connection
    else:
        keep_alive = connection is not None and b"keep-alive" in connection
        expect = False
    if upgrade is not None and (connection is None or b"upgrade" not in connection):
        upgrade = None
    return RequestHead(
        method=method,
        target=target,
        version=version,
        headers=headers,
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
        expect_continue=expect and (chunked or bool(content_length)),
        upgrade=upgrade.decode("latin-1") if upgrade is not None else None,
        host=host.decode("latin-1") if host else "",
    )


def build_response_head(
    status: int, reason: bytes, version: str, headers: HeaderList, limits: Limits | None = None
) -> ResponseHead:
    if version not in _VERSIONS:
        raise HttpError(502, "unsupported HTTP version from upstream")
    if limits is not None and len(headers) > limits.max_headers:
        raise HttpError(502, "too many header fields from upstream")
    content_length: int | None = None
    chunked = False
    cls = tes = 0
    connection: list[bytes] | None = None
    for k, v in headers:
        if k == b"content-length":
            cls += 1
            v = v.strip(b" \t")
            if not v.isdigit() or len(v) > 18:
                raise HttpError(502, "invalid Content-Length from upstream")
            content_length = int(v)
        elif k == b"transfer-encoding":
            tes += 1
            if header_tokens(v)[-1] != b"chunked":
                raise HttpError(502, "unsupported Transfer-Encoding from upstream")
            chunked = True
        elif k == b"connection":
            connection = (connection or []) + header_tokens(v)
    if cls > 1 or tes > 1:
        raise HttpError(502, "duplicate framing headers from upstream")
    if version == "1.1":
        keep_alive = connection is None or b"close" not in connection
    else:
        keep_alive = connection is not None and b"keep-alive" in connection
    if chunked and content_length is not None:
        # RFC 9112 6.3: Transfer-Encoding wins; the connection must not be reused.
        content_length = None
        keep_alive = False
    return ResponseHead(
        status=status,
        reason=reason,
        version=version,
        headers=headers,
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
    )
