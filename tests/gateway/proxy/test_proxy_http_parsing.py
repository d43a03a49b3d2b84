"""The HTTP/1.1 parser backends: smuggling defences, limits and framing, against both."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http import (
    BACKENDS,
    END,
    NEED_DATA,
    PAUSED,
    HttpError,
    Limits,
    RequestHead,
    ResponseHead,
    make_request_parser,
    make_response_parser,
)

pytestmark = pytest.mark.parametrize("backend", BACKENDS)


def parse_all(backend: str, data: bytes, limits: Limits | None = None) -> list[object]:
    parser = make_request_parser(backend, limits or Limits())  # type: ignore[arg-type]
    parser.receive_data(data)
    events: list[object] = []
    for _ in range(1000):
        ev = parser.next_event()
        if ev is NEED_DATA:
            break
        if ev is PAUSED:
            parser.start_next_cycle()
            events.append(PAUSED)
            continue
        events.append(ev)
    return events


def refused(backend: str, data: bytes, limits: Limits | None = None) -> int:
    with pytest.raises(HttpError) as info:
        parse_all(backend, data, limits)
    return info.value.status


SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # noqa: E501
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",  # noqa: E501
    "duplicate_cl_same": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",  # noqa: E501
    "duplicate_cl_differ": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",  # noqa: E501
    "cl_list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    "cl_negative": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "cl_plus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "cl_hex": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
    "duplicate_te": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # noqa: E501
    "te_list": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te_xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te_http10": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "obs_fold_tab": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n",
    "rtsp_version": b"GET / RTSP/1.0\r\nHost: a\r\n\r\n",  # llhttp parses RTSP/ and ICE/
    "ice_version": b"GET / ICE/1.0\r\nHost: a\r\n\r\n",
    "bare_lf_headers": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare_lf_one_line": b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
    "bare_cr": b"GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n",
    "absolute_form": b"GET http://evil.test/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "authority_form": b"CONNECT evil.test:443 HTTP/1.1\r\nHost: a\r\n\r\n",
    "asterisk_form": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "missing_host": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "duplicate_host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "no_colon": b"GET / HTTP/1.1\r\nHost: a\r\nbogus\r\n\r\n",
    "bad_chunk_size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",  # noqa: E501
    "chunk_without_crlf": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",  # noqa: E501
    "chunk_size_space": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n",  # noqa: E501
    "chunk_bare_lf": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",  # noqa: E501
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_smuggling_vectors_are_refused_with_400(backend: str, case: str) -> None:
    assert refused(backend, SMUGGLING[case]) == 400


@pytest.mark.parametrize(
    "line", [b"GET / HTTP/2.0", b"GET / HTTP/1.2", b"GET / HTTP/0.9", b"GET / HTTP/3.0"]
)
def test_unsupported_versions_are_refused(backend: str, line: bytes) -> None:
    assert refused(backend, line + b"\r\nHost: a\r\n\r\n") in (400, 505)


def test_http2_line_is_505(backend: str) -> None:
    assert refused(backend, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n") == 505


def test_header_block_limit_is_hard_whatever_the_chunking(backend: str) -> None:
    limits = Limits(max_header_bytes=4096)
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    assert refused(backend, big, limits) == 431
    # incomplete, in one piece: refused as soon as the limit is passed
    assert refused(backend, big[:4500], limits) == 431


def test_request_line_limit(backend: str) -> None:
    limits = Limits(max_request_line=100)
    assert refused(backend, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: a\r\n\r\n", limits) == 414
    assert refused(backend, b"GET /" + b"a" * 200, limits) == 414


def test_number_of_headers_limit(backend: str) -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(20))
    assert (
        refused(
            backend, b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n", Limits(max_headers=10)
        )
        == 431
    )


def test_valid_request_with_chunked_body_and_pipelining(backend: str) -> None:
    data = (
        b"POST /a?x=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer-A: b\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    events = parse_all(backend, data)
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [h.target for h in heads] == ["/a?x=1", "/b"]
    assert heads[0].chunked
    assert heads[0].keep_alive
    assert not heads[1].keep_alive
    body = b"".join(e for e in events if isinstance(e, bytes))
    assert body == b"abcde"
    assert events.count(END) == 2


def test_expect_continue_and_upgrade_flags(backend: str) -> None:
    (head, *_rest) = parse_all(
        backend,
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    assert isinstance(head, RequestHead)
    assert head.expect_continue
    (head, *_rest) = parse_all(
        backend,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    assert isinstance(head, RequestHead)
    assert head.upgrade == "websocket"


def test_http10_keep_alive_rules(backend: str) -> None:
    (head, *_r) = parse_all(backend, b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(head, RequestHead)
    assert not head.keep_alive
    (head, *_r) = parse_all(backend, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert isinstance(head, RequestHead)
    assert head.keep_alive


REQUEST = (
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    b"PUT /y HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody"
)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(REQUEST) - 1), max_size=8))
def test_any_split_gives_the_same_events(backend: str, cuts: list[int]) -> None:
    parser = make_request_parser(backend, Limits())  # type: ignore[arg-type]
    points = [0, *sorted(set(cuts)), len(REQUEST)]
    targets: list[str] = []
    body = b""
    ends = 0
    for a, b in itertools.pairwise(points):
        parser.receive_data(REQUEST[a:b])
        while True:
            ev = parser.next_event()
            if ev is NEED_DATA:
                break
            if ev is PAUSED:
                parser.start_next_cycle()
            elif isinstance(ev, RequestHead):
                targets.append(ev.target)
            elif isinstance(ev, bytes):
                body += ev
            elif ev is END:
                ends += 1
    assert targets == ["/x", "/y"]
    assert body == b"hello worldbody"
    assert ends == 2


def response_events(backend: str, method: str, data: bytes, eof: bool = False) -> list[object]:
    parser = make_response_parser(backend, Limits(), method)  # type: ignore[arg-type]
    parser.receive_data(data)
    if eof:
        parser.receive_data(b"")
    out: list[object] = []
    while True:
        ev = parser.next_event()
        if ev is NEED_DATA or ev is PAUSED:
            break
        out.append(ev)
        if ev is END:
            break
    return out


def test_response_framing(backend: str) -> None:
    evs = response_events(backend, "GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert isinstance(evs[0], ResponseHead)
    assert evs[1:] == [b"ok", END]
    evs = response_events(backend, "HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
    assert evs[1:] == [END]
    evs = response_events(
        backend, "GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    )
    assert [e.status for e in evs if isinstance(e, ResponseHead)] == [100, 204]
    evs = response_events(backend, "GET", b"HTTP/1.0 200 OK\r\n\r\nuntil close", eof=True)
    assert b"".join(e for e in evs if isinstance(e, bytes)) == b"until close"


@pytest.mark.parametrize(
    ("status_line", "status", "reason", "version"),
    [
        (b"HTTP/1.1 200 OK", 200, b"OK", "1.1"),
        (b"HTTP/1.1 404 Not Found", 404, b"Not Found", "1.1"),
        (b"HTTP/1.0 301 Moved  Permanently", 301, b"Moved  Permanently", "1.0"),
        (b"HTTP/1.1 599 ", 599, b"", "1.1"),
        (b"HTTP/1.1 204", 204, b"", "1.1"),
        (b"HTTP/1.1 100 Continue", 100, b"Continue", "1.1"),
        (b"HTTP/1.1 999 \xe9t\xe9", 999, b"\xe9t\xe9", "1.1"),
    ],
)
def test_status_lines_are_read_whole(
    backend: str, status_line: bytes, status: int, reason: bytes, version: str
) -> None:
    evs = response_events(backend, "HEAD", status_line + b"\r\nContent-Length: 0\r\n\r\n")
    head = evs[0]
    assert isinstance(head, ResponseHead)
    assert (head.status, head.reason, head.version) == (status, reason, version)


@pytest.mark.parametrize(
    "status_line",
    [
        b"RTSP/1.0 200 OK",
        b"ICE/1.0 200 OK",
        b"HTTP/2.0 200 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1 200OK",
    ],
)
def test_response_with_a_foreign_status_line_is_502(backend: str, status_line: bytes) -> None:
    with pytest.raises(HttpError) as info:
        response_events(backend, "GET", status_line + b"\r\nContent-Length: 0\r\n\r\n")
    assert info.value.status == 502


def test_response_reusable_only_when_complete(backend: str) -> None:
    parser = make_response_parser(backend, Limits(), "GET")  # type: ignore[arg-type]
    parser.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no")
    while parser.next_event() is not NEED_DATA:
        pass
    assert not parser.reusable
    parser.receive_data(b"k")
    while parser.next_event() not in (NEED_DATA, PAUSED):
        pass
    assert parser.reusable


def _outcome(backend: str, data: bytes) -> tuple[object, ...]:
    try:
        events = parse_all(backend, data)
    except HttpError as exc:
        return ("refused", exc.status)
    head = events[0]
    assert isinstance(head, RequestHead)
    return ("ok", head.method, head.target, head.version, head.headers)


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(
        ["GET", "POST", "OPTIONS", "PURGE", "M-SEARCH", "SOURCE", "DESCRIBE", "FOO", "get"]
    ),
    target=st.sampled_from(["/", "/a?b=c", "/%20x", "*", "http://x/", "/a b"]),
    version=st.sampled_from(
        [
            "HTTP/1.1",
            "HTTP/1.0",
            "HTTP/2.0",
            "HTTP/0.9",
            "HTTP/1.10",
            "HTTP/11",
            "HTTP/1",
            "http/1.1",
            "RTSP/1.0",
            "ICE/1.0",
            "HTTP/1.1 ",
            " HTTP/1.1",
            "HTTP/ 1.1",
        ]
    ),
    sep=st.sampled_from([" ", "  ", "\t"]),
)
def test_request_lines_are_judged_as_the_reference_parser_does(
    backend: str, method: str, target: str, version: str, sep: str
) -> None:
    """Every backend accepts exactly the request lines h11 accepts, with the same method,
    target and version, and refuses the others with the same status (llhttp also parses
    RTSP/ICE versions and some lenient spacing: those must not slip through)."""
    line = f"{method}{sep}{target}{sep}{version}".encode()
    data = line + b"\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
    assert _outcome(backend, data) == _outcome("h11", data), data
