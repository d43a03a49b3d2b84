"""proxy_access_log: one line per request in Kong's kong_log_format, whoever answered."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import h11
import trio
from proxy_support import (
    Upstream,
    config,
    plugin,
    raw_exchange,
    request,
    route,
    service,
    start_proxy,
    status_of,
)

from gateway.declarative import validate_config

# Kong's kong_log_format: nginx's combined, then the request id
LINE = re.compile(
    rb'^(?P<addr>\S+) - (?P<user>\S+) \[(?P<time>[^]]+)\] "(?P<request>[^"]*)" '
    rb'(?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" '
    rb'kong_request_id: "-"$'
)


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


async def _lines(path: Path, count: int) -> list[re.Match[bytes]]:
    """The first ``count`` lines of ``path``, polled with a deadline (flushed every second)."""
    with trio.fail_after(5):
        while True:
            text = await trio.to_thread.run_sync(_read, path)
            lines = text.splitlines()
            if len(lines) >= count:
                break
            await trio.sleep(0.05)
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    return [m for m in matches if m is not None]


async def test_access_log_proxy_line(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = Upstream()
    await nursery.start(up.serve)
    svc = service(up.port)
    cfg = config(
        services=[svc],
        routes=[route(svc, paths=["/api"]), locked := route(svc, paths=["/locked"])],
        plugins=[plugin("key-auth", {}, route=locked)],
    )
    path = tmp_path / "logs" / "access.log"
    port, _ = await start_proxy(nursery, validate_config(cfg), access_log=path)
    user = base64.b64encode(b"frank:pw").decode()
    ok = await request(
        port,
        "GET",
        "/api/x?q=1",
        headers=[
            ("User-Agent", 'agent "007"'),
            ("Referer", "http://ref.test/"),
            ("Authorization", f"Basic {user}"),
        ],
    )
    assert ok.status == 200
    missing = await request(port, "GET", "/nowhere")
    assert missing.status == 404
    denied = await request(port, "POST", "/locked")
    assert denied.status == 401
    # raw bytes a client may send in a header value: escaped, the line stays one line
    raw = await raw_exchange(
        port, b"GET /nowhere HTTP/1.1\r\nHost: x\r\nUser-Agent: caf\xc3\xa9\\\r\n\r\n", timeout=1
    )
    assert status_of(raw) == 404

    first, second, third, fourth = await _lines(path, 4)
    assert first["addr"] == b"127.0.0.1"
    assert first["user"] == b"frank"
    assert first["request"] == b"GET /api/x?q=1 HTTP/1.1"
    assert first["status"] == b"200"
    assert int(first["bytes"]) == len(ok.body)
    assert first["referer"] == b"http://ref.test/"
    assert first["agent"] == b"agent \\x22007\\x22"
    assert second["request"] == b"GET /nowhere HTTP/1.1"
    assert second["status"] == b"404"
    assert int(second["bytes"]) == len(missing.body)
    assert second["user"] == b"-"
    assert second["referer"] == b"-"
    assert third["request"] == b"POST /locked HTTP/1.1"
    assert third["status"] == b"401"
    assert int(third["bytes"]) == len(denied.body)
    assert fourth["agent"] == b"caf\\xC3\\xA9\\x5C"


async def test_access_log_client_gone_is_499(nursery: trio.Nursery, tmp_path: Path) -> None:
    asked = trio.Event()

    async def never(request: h11.Request, body: bytes) -> None:
        asked.set()
        await trio.sleep_forever()

    up = Upstream(never)
    await nursery.start(up.serve)
    svc = service(up.port)
    path = tmp_path / "access.log"
    port, _ = await start_proxy(
        nursery, config(services=[svc], routes=[route(svc)]), access_log=path
    )
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await client.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        await asked.wait()
    await client.aclose()
    (line,) = await _lines(path, 1)
    assert line["request"] == b"GET /slow HTTP/1.1"
    assert line["status"] == b"499"
    assert line["bytes"] == b"0"


async def test_access_log_off_writes_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = Upstream()
    await nursery.start(up.serve)
    svc = service(up.port)
    async with trio.open_nursery() as inner:
        port, _ = await start_proxy(
            inner, config(services=[svc], routes=[route(svc)]), access_log="off"
        )
        assert (await request(port, "GET", "/")).status == 200
        inner.cancel_scope.cancel()
    assert await trio.to_thread.run_sync(lambda: list(tmp_path.iterdir())) == []


async def test_access_log_requests_the_parser_refused(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # as nginx, a request refused before routing (malformed, too large, HTTP/2 on an
    # HTTP/1.1 port) still gets its line: what attack traffic looks like in the log
    up = Upstream()
    await nursery.start(up.serve)
    svc = service(up.port)
    path = tmp_path / "access.log"
    cfg = config(services=[svc], routes=[route(svc)])
    port, _ = await start_proxy(nursery, validate_config(cfg), access_log=str(path))
    smuggle = (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    answers = [
        await raw_exchange(port, smuggle),
        await raw_exchange(port, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        await raw_exchange(port, b"GET / HTTP/1.1\r\nX: \x01\r\n\r\n"),
    ]
    statuses = [status_of(a) for a in answers]
    assert statuses[:2] == [400, 505]
    lines = await _lines(path, 3)
    assert [int(m["status"]) for m in lines] == statuses
    for m, answer in zip(lines, answers, strict=True):
        assert m["addr"] == b"127.0.0.1"
        assert m["request"] == b"-"  # the line may be what was malformed: not echoed
        assert int(m["bytes"]) == len(answer.partition(b"\r\n\r\n")[2])
        assert m["agent"] == b"-"
    assert up.requests == 0
