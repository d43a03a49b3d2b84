"""The fast parser backends: heads parsed in C (a strict regex grammar, or llhttp through
httptools), bodies framed by our own code.

Theory of operation: each message goes through three states. HEAD: bytes accumulate until
``find_head_end`` sees the blank line; then the head block is parsed, either

* ``"fast"``: one compiled regular expression, the RFC 9112 grammar without its lenient parts
  (request line ``token SP target SP HTTP/d.d``, ``token ":" OWS value OWS`` fields, CRLF
  only). Anything else (obs-fold, bare CR or LF, a space before the colon, control
  characters, absolute-form targets with spaces...) does not match and is a 400. Header
  names and values come from a second regex over the fields: the whole head is validated
  and split in two C calls (opt-in; the cheapest backend in the pure-Python build); or
* ``"httptools"``: a fresh llhttp parser reads just the head block; it validates tokens,
  the request line and header syntax in C, and refuses bare CR or LF and obs-folds (llhttp
  is strict by default; tests/gateway/proxy/test_proxy_http_parsing.py runs every such
  case against every backend). Of the raw checks of ``_events`` only the count of header
  lines runs on the block.

Framing and the other semantic checks are ``build_request_head`` / ``build_response_head``,
shared with the h11 backend.
BODY: framing comes from our own head checks (``Content-Length`` counts down, ``chunked``
runs ``ChunkedDecoder``, a response without either reads until EOF). DONE: ``PAUSED``
until the next cycle; pipelined bytes wait in the buffer. Owning the message boundaries
ourselves is what makes pipelining and protocol switches exact.

Substring tests here use ``find`` rather than ``in``: ``needle in data`` on bytes first tries
the needle as an integer, and raising and clearing that ``TypeError`` costs about 2,000
instructions each time (callgrind; it was 1 % of a proxied request). ``find`` and ``split``
are called unbound (``_bytes_find(data, ...)``), which skips the method lookup.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

import httptools

from gateway.http._events import (
    CLOSED,
    END,
    NEED_DATA,
    PAUSED,
    HeaderList,
    HttpError,
    Limits,
    RequestHead,
    ResponseHead,
    Sentinel,
    build_request_head,
    build_response_head,
    check_header_count,
    find_head_end,
)

__all__ = ["ChunkedDecoder", "FastRequestParser", "FastResponseParser", "HeadGrammar"]

HeadGrammar = Literal["regex", "httptools"]

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
_FIELDS = rb"((?:" + _TOKEN + rb":" + _VALUE + rb"\r\n)*)"
_REQUEST_HEAD = re.compile(
    rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])\r\n" + _FIELDS + rb"\r\n"
)
_RESPONSE_HEAD = re.compile(
    rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: (" + _VALUE + rb"))?\r\n" + _FIELDS + rb"\r\n"
)
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb"?)[ \t]*\r\n")


def _fields(section: bytes) -> HeaderList:
    return [(k.lower(), v) for k, v in _FIELD.findall(section)]


_HEX = frozenset(b"0123456789abcdefABCDEF")
_MAX_CHUNK_LINE = 4096
_MAX_TRAILERS = 16 * 1024


# Unbound methods, called with the object first: in compiled code that skips the method
# lookup of a generic ``data.find(...)`` (see find_head_end in _events)
_bytes_find: Final = bytes.find
_bytes_split: Final = bytes.split
_bytearray_find: Final = bytearray.find


class ChunkedDecoder:
    """Decodes ``Transfer-Encoding: chunked`` from a shared buffer, strictly (RFC 9112 7.1)."""

    __slots__ = ("_remaining", "_state", "_trailer_bytes", "error_status")

    def __init__(self, error_status: int) -> None:
        self._state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailers, 4 done
        self._remaining = 0
        self._trailer_bytes = 0
        self.error_status = error_status

    def step(self, buf: bytearray) -> bytes | Sentinel:
        """Consume from ``buf``: body bytes, ``END`` or ``NEED_DATA``."""
        while True:
            state = self._state
            if state == 1:
                if not buf:
                    return NEED_DATA
                n = min(self._remaining, len(buf))
                data = bytes(buf[:n])
                del buf[:n]
                self._remaining -= n
                if not self._remaining:
                    self._state = 2
                return data
            if state == 0:
                i = _bytearray_find(buf, b"\r\n")
                if i < 0:
                    if len(buf) > _MAX_CHUNK_LINE or _bytearray_find(buf, b"\n") >= 0:
                        raise HttpError(self.error_status, "invalid chunk size line")
                    return NEED_DATA
                line = bytes(buf[:i])
                del buf[: i + 2]
                size_text = _bytes_split(line, b";", 1)[0]
                if not size_text or len(size_text) > 16 or not _HEX.issuperset(size_text):
                    raise HttpError(self.error_status, "invalid chunk size")
                if _bytes_find(line, b"\n") >= 0 or _bytes_find(line, b"\r") >= 0:
                    raise HttpError(self.error_status, "bare CR or LF in a chunk size line")
                size = int(size_text, 16)
                if size:
                    self._remaining = size
                    self._state = 1
                else:
                    self._state = 3
                continue
            if state == 2:
                if len(buf) < 2:
                    return NEED_DATA
                if buf[:2] != b"\r\n":
                    raise HttpError(self.error_status, "chunk data not followed by CRLF")
                del buf[:2]
                self._state = 0
                continue
            if state == 3:
                i = _bytearray_find(buf, b"\r\n")
                if i < 0:
                    if len(buf) > _MAX_TRAILERS or _bytearray_find(buf, b"\n") >= 0:
                        raise HttpError(self.error_status, "invalid trailer section")
                    return NEED_DATA
                line = bytes(buf[:i])
                del buf[: i + 2]
                if not line:
                    self._state = 4
                    return END
                self._trailer_bytes += i + 2
                if (
                    self._trailer_bytes > _MAX_TRAILERS
                    or _bytes_find(line, b"\n") >= 0
                    or _bytes_find(line, b"\r") >= 0
                    or line[0] in b" \t"
                    or _bytes_find(line, b":") < 0
                ):
                    raise HttpError(self.error_status, "invalid trailer field")
                continue
            return END


# Header names as they come, lower-cased: a dict lookup is cheaper than ``bytes.lower``
# through mypyc's generic method call. Bounded: names are the peers' choice.
_LOWER_NAMES: dict[bytes, bytes] = {}
_LOWER_NAMES_MAX = 1024


class _HeadCollector:
    """httptools callbacks for one head.

    The callbacks it does not need are present as ``None``: httptools looks each one up when
    it creates a parser (one per head here), and a missing attribute costs an exception
    inside ``getattr``.
    """

    __slots__ = (
        "complete",
        "headers",
        "on_body",
        "on_chunk_complete",
        "on_chunk_header",
        "on_message_begin",
        "on_message_complete",
        "on_status",
        "url",
    )

    def __init__(self) -> None:
        self.on_body: None = None
        self.on_chunk_complete: None = None
        self.on_chunk_header: None = None
        self.on_message_begin: None = None
        self.on_message_complete: None = None
        self.on_status: None = None
        self.url = b""
        self.headers: HeaderList = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = _LOWER_NAMES.get(name)
        if lower is None:
            lower = name.lower()
            if len(_LOWER_NAMES) < _LOWER_NAMES_MAX:
                _LOWER_NAMES[name] = lower
        self.headers.append((lower, value))

    def on_headers_complete(self) -> None:
        self.complete = True


class _MessageReader:
    """The HEAD / BODY / DONE cycle shared by both directions."""

    def __init__(self, limits: Limits, *, request: bool, grammar: HeadGrammar) -> None:
        self._limits = limits
        self._request = request
        self._regex = grammar == "regex"
        self._buf = bytearray()
        self._eof = False
        self._state = 0  # 0 head, 1 body by length, 2 chunked, 3 until EOF, 4 done
        self._remaining = 0
        self._chunked: ChunkedDecoder | None = None
        self._error = 400 if request else 502

    def receive_data(self, data: bytes) -> None:
        if data:
            self._buf += data
        else:
            self._eof = True

    def trailing_data(self) -> bytes:
        return bytes(self._buf)

    def _take_head(self) -> bytes | None:
        buf = self._buf
        if self._request and buf and buf[0] == 13:  # (an index: no method call, usually)
            while buf.startswith(b"\r\n"):
                del buf[:2]
        # Both grammars refuse bare CR or LF themselves (the regex by construction, llhttp
        # by default: "Missing expected CR after header value"), so a complete head is not
        # scanned for them here; an incomplete one still is, to refuse it early.
        end = find_head_end(buf, self._limits, request=self._request, scan_complete=False)
        if end < 0:
            return None
        if end == len(buf):  # the usual request: nothing after the head yet
            block = bytes(buf)
            buf.clear()
        else:
            block = bytes(buf[:end])
            del buf[:end]
        if not self._regex:
            # llhttp refuses obs-folds too and hands every header line to the collector,
            # duplicates included: the framing checks run on that list (build_*_head); the
            # count of header lines is the one check left to do on the raw block
            check_header_count(block, self._limits)
        return block

    def _start_body(self, content_length: int | None, chunked: bool, until_eof: bool) -> None:
        if chunked:
            self._chunked = ChunkedDecoder(self._error)
            self._state = 2
        elif content_length:
            self._remaining = content_length
            self._state = 1
        elif until_eof:
            self._state = 3
        else:
            self._state = 5  # empty body: END is next

    def _body_event(self) -> bytes | Sentinel:
        state = self._state
        buf = self._buf
        if state == 1:
            if not buf:
                if self._eof:
                    raise HttpError(self._error, "connection closed inside a body")
                return NEED_DATA
            n = self._remaining
            if len(buf) <= n:
                data = bytes(buf)
                buf.clear()
            else:
                data = bytes(buf[:n])
                del buf[:n]
            self._remaining -= len(data)
            if not self._remaining:
                self._state = 5  # END pending
            return data
        if state == 2:
            assert self._chunked is not None
            ev = self._chunked.step(buf)
            if ev is END:
                self._state = 4
            elif ev is NEED_DATA and self._eof:
                raise HttpError(self._error, "connection closed inside a chunked body")
            return ev
        if state == 3:
            if buf:
                data = bytes(buf)
                buf.clear()
                return data
            if self._eof:
                self._state = 4
                return END
            return NEED_DATA
        if state == 5:
            self._state = 4
            return END
        return PAUSED


class FastRequestParser(_MessageReader):
    def __init__(self, limits: Limits, grammar: HeadGrammar = "regex") -> None:
        super().__init__(limits, request=True, grammar=grammar)

    def next_event(self) -> RequestHead | bytes | Sentinel:
        if self._state:
            return self._body_event()
        if not self._buf and not self._eof:
            return NEED_DATA
        block = self._take_head()
        if block is None:
            if self._eof:
                if self._buf:
                    raise HttpError(400, "connection closed inside a request head")
                return CLOSED
            return NEED_DATA
        head = self._regex_head(block) if self._regex else self._httptools_head(block)
        self._start_body(head.content_length, head.chunked, until_eof=False)
        return head

    def _regex_head(self, block: bytes) -> RequestHead:
        m = _REQUEST_HEAD.fullmatch(block)
        if m is None:
            raise HttpError(400, "malformed request head")
        method, target, version, section = m.groups()
        return build_request_head(
            method.decode("ascii"),
            target.decode("ascii"),
            version.decode("ascii"),
            _fields(section),
            self._limits,
        )

    def _httptools_head(self, block: bytes) -> RequestHead:
        collector = _HeadCollector()
        try:
            _feed_head(httptools.HttpRequestParser(collector), collector, block, 400)
        except _UnknownMethod:
            # llhttp knows a fixed list of methods; RFC 9110 (and h11, and nginx) take any
            # token, which Kong then routes: such heads go to the strict regex grammar
            return self._regex_head(block)
        # llhttp is more lenient than RFC 9112 on the request line: it takes RTSP/ and ICE/
        # versions and several spaces between the parts. One SP each, as h11 (the reference)
        # and the regex grammar require: a proxy must not read a line otherwise than the
        # server behind it might.
        line = block[: _bytes_find(block, b"\r\n")]
        parts = _bytes_split(line, b" ")
        if len(parts) != 3 or _bytes_find(line, b"\t") >= 0 or line[-8:-3] != b"HTTP/":
            raise HttpError(400, "malformed request line")
        return build_request_head(
            parts[0].decode("latin-1"),  # the method llhttp took (cheaper than get_method)
            collector.url.decode("latin-1"),
            line[-3:].decode("latin-1"),  # "d.d": cheaper than get_http_version
            collector.headers,
        )

    def start_next_cycle(self) -> None:
        self._state = 0
        self._chunked = None


class _UnknownMethod(Exception):
    """llhttp refused the request's method (it knows a fixed list of them)."""


def _feed_head(parser: Any, collector: _HeadCollector, block: bytes, status: int) -> None:
    """Feed one complete head to an httptools parser. Malformed heads raise ``HttpError``
    with ``status`` (400 for requests, 502 for responses; 505 for a request's version)."""
    kind = "request" if status == 400 else "response"
    try:
        parser.feed_data(block)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as exc:
        message = str(exc).lower()
        if status == 400 and "method" in message:
            # "Invalid method encountered", "Invalid method for HTTP/x.x request"
            raise _UnknownMethod from None
        # a well-formed version llhttp does not support (HTTP/1.2, HTTP/3.0) is a 505, as with
        # h11; a malformed one ("Expected CRLF after version": HTTP/1.10) a 400
        if status == 400 and "invalid http version" in message:
            status = 505
        raise HttpError(status, f"malformed {kind} head: {exc}") from None
    if not collector.complete:
        raise HttpError(status, f"malformed {kind} head")


class FastResponseParser(_MessageReader):
    def __init__(
        self, limits: Limits, method: str, *, upgrade: bool = False, grammar: HeadGrammar = "regex"
    ) -> None:
        super().__init__(limits, request=False, grammar=grammar)
        self._head_request = method == "HEAD"
        self._upgrade = upgrade
        self._keep_alive = False
        self._switched = False

    @property
    def reusable(self) -> bool:
        return self._state == 4 and self._keep_alive and not self._switched and not self._buf

    def next_event(self) -> ResponseHead | bytes | Sentinel:
        if self._state:
            return self._body_event()
        if not self._buf and not self._eof:
            return NEED_DATA
        block = self._take_head()
        if block is None:
            if self._eof:
                raise HttpError(502, "upstream closed before a complete response head")
            return NEED_DATA
        if self._regex:
            m = _RESPONSE_HEAD.fullmatch(block)
            if m is None:
                raise HttpError(502, "malformed response head")
            version, status_text, reason, section = m.groups()
            status = int(status_text)
            head = build_response_head(
                status, reason or b"", version.decode("ascii"), _fields(section), self._limits
            )
        else:
            head = self._httptools_head(block)
            status = head.status
        if status < 200:
            if status == 101 and self._upgrade:
                self._switched = True
                self._state = 4
            return head  # 1xx: stay in the head state for the final response
        self._keep_alive = head.keep_alive
        if self._head_request or status in (204, 304):
            self._state = 5
        else:
            self._start_body(head.content_length, head.chunked, until_eof=True)
            if head.content_length is None and not head.chunked:
                self._keep_alive = False
        return head

    def _httptools_head(self, block: bytes) -> ResponseHead:
        collector = _HeadCollector()
        _feed_head(httptools.HttpResponseParser(collector), collector, block, 502)
        if not block.startswith(b"HTTP/"):
            raise HttpError(502, "malformed response head")  # llhttp also takes RTSP/ and ICE/
        # the status line llhttp accepted is "HTTP/d.d ddd" (exactly three digits) then CRLF,
        # or SP and a reason, possibly empty: read with indexes and slices, no method calls
        status = block[9] * 100 + block[10] * 10 + block[11] - 5328  # 48 * 111: the digits
        reason = b""
        if block[12] == 32:
            reason = block[13 : _bytes_find(block, b"\r\n")]
        return build_response_head(status, reason, block[5:8].decode("latin-1"), collector.headers)
