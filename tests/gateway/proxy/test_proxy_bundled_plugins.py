"""The bundled plugins as a client sees them: a real proxy on 127.0.0.1, real upstreams, and
requests from curl (subprocess) and the standard library's ``http.client``.

``test_bundled.py`` drives each plugin's phases through a harness; here the same plugins run
inside the proxy, so what is asserted is what goes over the wire: the status, headers and
body the client reads, and what the upstream received (the echo upstream reports it).
"""

from __future__ import annotations

import functools
import http.client
import json
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import pytest
import trio
from proxy_support import (
    Reply,
    Upstream,
    config,
    plugin,
    raw_exchange,
    route,
    service,
    start_proxy,
    status_of,
    uid,
)

from gateway._forms import parse_multipart
from gateway.declarative import validate_config
from gateway.plugins.bundled import rate_limiting

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    rate_limiting.COUNTERS.clear()


# -- clients --------------------------------------------------------------------------------


def _parse_curl(out: bytes) -> Reply:
    """``curl -i`` output: skips interim (1xx) heads."""
    while True:
        head, _, rest = out.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        if 100 <= status < 200:
            out = rest
            continue
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        return Reply(status, headers, rest)


async def curl(port: int, path: str, *args: str, data: bytes | None = None) -> Reply:
    """curl as a user runs it; ``Expect:`` off so that uploads go out at once."""
    cmd = ["curl", "-sS", "-i", "-H", "Expect:", *args]
    if data is not None:
        cmd += ["--data-binary", "@-"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    result = await trio.run_process(cmd, stdin=data or b"", capture_stdout=True, check=True)
    return _parse_curl(result.stdout)


def _http_client(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | Iterable[bytes] | None
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
        resp = conn.getresponse()
        content = resp.read()
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in resp.getheaders()]
        return Reply(resp.status, raw, content)
    finally:
        conn.close()


async def http_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    body: bytes | Iterable[bytes] | None = None,
) -> Reply:
    """``http.client`` (blocking) in a thread; an iterable body goes out chunked."""
    call = functools.partial(_http_client, port, method, path, headers or {}, body)
    return await trio.to_thread.run_sync(call)


def received(reply: Reply) -> dict[str, Any]:
    """What the echo upstream received, with its headers as a dict (last value wins)."""
    seen: dict[str, Any] = reply.json()
    seen["header_map"] = {k: v for k, v in seen["headers"]}
    return seen


def header_values(reply: Reply, name: str) -> list[str]:
    return [v.decode() for k, v in reply.headers if k == name.lower().encode()]


# -- setup ----------------------------------------------------------------------------------


async def start(nursery: trio.Nursery, cfg: dict[str, Any], **options: Any) -> tuple[int, Any]:
    """A proxy running ``cfg`` validated as a data plane validates it (plugin defaults)."""
    return await start_proxy(nursery, validate_config(cfg), **options)


async def start_echo(nursery: trio.Nursery) -> Upstream:
    up = Upstream()
    await nursery.start(up.serve)
    return up


def at(svc: dict[str, Any], path: str, **fields: Any) -> dict[str, Any]:
    """A route on ``path`` that keeps its path upstream."""
    return route(svc, paths=[path], strip_path=False, **fields)


async def serve_raw(nursery: trio.Nursery, handler: Any) -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


# -- key-auth -------------------------------------------------------------------------------

ALICE = {"id": uid(), "username": "alice", "custom_id": "c-alice"}
GUEST = {"id": uid(), "username": "guest", "custom_id": None}
ALICE_KEY = {"id": uid(), "key": "alice+key/1", "consumer": {"id": ALICE["id"]}, "ttl": None}


async def start_key_auth(nursery: trio.Nursery) -> tuple[int, Upstream]:
    up = await start_echo(nursery)
    svc = service(up.port)
    hidden, shown, anon = at(svc, "/hidden"), at(svc, "/shown"), at(svc, "/anon")
    in_body = at(svc, "/body")
    cfg = config(
        services=[svc],
        routes=[hidden, shown, anon, in_body],
        consumers=[ALICE, GUEST],
        keyauth_credentials=[ALICE_KEY],
        plugins=[
            plugin("key-auth", {"hide_credentials": True}, route=hidden),
            plugin("key-auth", {"key_names": ["x-api-key", "apikey"]}, route=shown),
            plugin("key-auth", {"anonymous": "guest"}, route=anon),
            plugin("key-auth", {"key_in_body": True, "hide_credentials": True}, route=in_body),
        ],
    )
    port, _ = await start(nursery, cfg)
    return port, up


async def test_key_auth_refuses_without_a_valid_key(nursery: trio.Nursery) -> None:
    port, up = await start_key_auth(nursery)
    reply = await curl(port, "/hidden")
    assert reply.status == 401
    assert reply.json() == {"message": "No API key found in request"}
    assert reply.header("www-authenticate") == 'Key realm="gateway"'
    assert reply.header("content-type") == "application/json; charset=utf-8"
    reply = await curl(port, "/hidden", "-H", "apikey: wrong")
    assert reply.status == 401
    assert reply.json() == {"message": "Unauthorized"}
    reply = await curl(port, "/hidden?apikey=")  # an empty key is no key
    assert reply.json() == {"message": "No API key found in request"}
    assert up.requests == 0


async def test_key_auth_header_key_is_hidden_from_the_upstream(nursery: trio.Nursery) -> None:
    port, _ = await start_key_auth(nursery)
    # the client also tries to pass itself off as someone else
    reply = await curl(
        port, "/hidden/x", "-H", "apikey: alice+key/1", "-H", "X-Consumer-Username: admin"
    )
    assert reply.status == 200
    seen = received(reply)
    assert "apikey" not in seen["header_map"]
    assert seen["header_map"]["x-consumer-id"] == ALICE["id"]
    assert seen["header_map"]["x-consumer-username"] == "alice"
    assert seen["header_map"]["x-consumer-custom-id"] == "c-alice"
    assert seen["header_map"]["x-credential-identifier"] == ALICE_KEY["id"]
    assert "x-anonymous-consumer" not in seen["header_map"]
    assert [v for k, v in seen["headers"] if k == "x-consumer-username"] == ["alice"]


async def test_key_auth_query_key_is_hidden_from_the_upstream(nursery: trio.Nursery) -> None:
    port, _ = await start_key_auth(nursery)
    # the key as a client encodes it in a query string ("+" and "/" escaped)
    reply = await curl(port, "/hidden?a=1&apikey=alice%2Bkey%2F1&b=2")
    assert reply.status == 200
    seen = received(reply)
    assert seen["target"] == "/hidden?a=1&b=2"
    assert seen["header_map"]["x-consumer-username"] == "alice"
    # a key sent twice (header and query) is hidden everywhere, as Kong
    reply = await curl(port, "/hidden?apikey=alice%2Bkey%2F1", "-H", "apikey: alice+key/1")
    seen = received(reply)
    assert seen["target"] == "/hidden"
    assert "apikey" not in seen["header_map"]


async def test_key_auth_without_hide_credentials_forwards_the_key(nursery: trio.Nursery) -> None:
    port, _ = await start_key_auth(nursery)
    reply = await http_request(port, path="/shown", headers={"X-API-Key": "alice+key/1"})
    assert reply.status == 200
    seen = received(reply)
    assert seen["header_map"]["x-api-key"] == "alice+key/1"
    assert seen["header_map"]["x-consumer-username"] == "alice"
    reply = await http_request(port, path="/shown?apikey=alice%2Bkey%2F1")
    assert received(reply)["target"] == "/shown?apikey=alice%2Bkey%2F1"


async def test_key_auth_body_key_is_hidden_from_the_upstream(nursery: trio.Nursery) -> None:
    port, _ = await start_key_auth(nursery)
    reply = await curl(port, "/body", "-F", "apikey=alice+key/1", "-F", "note=hi", "-F", "a=b")
    assert reply.status == 200
    seen = received(reply)
    assert seen["header_map"]["x-consumer-username"] == "alice"
    body = seen["body"].encode("latin-1")
    assert seen["header_map"]["content-length"] == str(len(body))
    fields = parse_multipart(seen["header_map"]["content-type"], body)
    assert fields == [("note", "hi"), ("a", "b")]
    reply = await http_request(
        port,
        "POST",
        "/body",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"apikey": "alice+key/1", "x": [1]}).encode(),
    )
    assert json.loads(received(reply)["body"]) == {"x": [1]}
    reply = await curl(port, "/body", data=b"x=1&apikey=alice%2Bkey%2F1")
    assert received(reply)["body"] == "x=1"


async def test_key_auth_anonymous_consumer(nursery: trio.Nursery) -> None:
    port, up = await start_key_auth(nursery)
    reply = await curl(port, "/anon", "-H", "X-Consumer-Username: admin")
    assert reply.status == 200
    seen = received(reply)["header_map"]
    assert seen["x-anonymous-consumer"] == "true"
    assert seen["x-consumer-id"] == GUEST["id"]
    assert seen["x-consumer-username"] == "guest"
    assert "x-credential-identifier" not in seen
    # a wrong key is anonymous too; a good key is the key's consumer
    seen = received(await curl(port, "/anon", "-H", "apikey: wrong"))["header_map"]
    assert seen["x-consumer-username"] == "guest"
    seen = received(await curl(port, "/anon", "-H", "apikey: alice+key/1"))["header_map"]
    assert seen["x-consumer-username"] == "alice"
    assert "x-anonymous-consumer" not in seen
    assert up.requests == 3


# -- rate-limiting --------------------------------------------------------------------------


async def _away_from_a_minute_boundary() -> None:
    # Windows are calendar minutes: a test that ran across a boundary would see its counts
    # start again. Waits (rarely, at most 3 s) for the next minute.
    left = 60 - time.time() % 60
    if left < 3:
        await trio.sleep(left + 0.05)


def _resets(before: float, after: float) -> set[str]:
    return {str(60 - int(t) % 60) for t in (before, after)}


async def test_rate_limiting_headers_then_429(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    r = at(svc, "/limited")
    cfg = config(
        services=[svc],
        routes=[r],
        plugins=[plugin("rate-limiting", {"minute": 3, "hour": 100}, route=r)],
    )
    port, _ = await start(nursery, cfg)
    await _away_from_a_minute_boundary()
    for remaining in (2, 1, 0):
        before = time.time()
        reply = await curl(port, "/limited")
        after = time.time()
        assert reply.status == 200
        assert reply.header("x-ratelimit-limit-minute") == "3"
        assert reply.header("x-ratelimit-remaining-minute") == str(remaining)
        assert reply.header("x-ratelimit-limit-hour") == "100"
        assert reply.header("x-ratelimit-remaining-hour") == str(97 + remaining)
        # the window closest to its end gives the RateLimit-* headers: the minute
        assert reply.header("ratelimit-limit") == "3"
        assert reply.header("ratelimit-remaining") == str(remaining)
        assert reply.header("ratelimit-reset") in _resets(before, after)
        assert reply.header("retry-after") is None
        assert received(reply)["target"] == "/limited"
    before = time.time()
    reply = await curl(port, "/limited")
    after = time.time()
    assert reply.status == 429
    assert reply.json() == {"message": "API rate limit exceeded"}
    assert reply.header("retry-after") in _resets(before, after)
    assert reply.header("ratelimit-reset") == reply.header("retry-after")
    assert reply.header("x-ratelimit-remaining-minute") == "0"
    assert reply.header("ratelimit-remaining") == "0"
    assert up.requests == 3


async def test_rate_limiting_by_header_and_hidden_headers(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    r = at(svc, "/tenant")
    conf = {
        "hour": 1,
        "limit_by": "header",
        "header_name": "X-Tenant",
        "hide_client_headers": True,
        "error_code": 403,
        "error_message": "quota used up",
    }
    cfg = config(services=[svc], routes=[r], plugins=[plugin("rate-limiting", conf, route=r)])
    port, _ = await start(nursery, cfg)
    first = await http_request(port, path="/tenant", headers={"X-Tenant": "a"})
    assert first.status == 200
    assert not [k for k, _ in first.headers if b"ratelimit" in k]
    refused = await http_request(port, path="/tenant", headers={"X-Tenant": "a"})
    assert refused.status == 403
    assert refused.json() == {"message": "quota used up"}
    assert refused.header("retry-after") is not None  # Kong sends it even when hiding
    assert refused.header("x-ratelimit-limit-hour") is None
    # another tenant has its own counter
    assert (await http_request(port, path="/tenant", headers={"X-Tenant": "b"})).status == 200
    assert up.requests == 2


# -- request-transformer ----------------------------------------------------------------------

TRANSFORM = {
    "remove": {"headers": ["x-drop"], "querystring": ["drop"], "body": ["secret"]},
    "rename": {"headers": ["x-old:x-new"], "querystring": ["old:new"], "body": ["old:new"]},
    "replace": {
        "headers": ["x-rep:replaced"],
        "querystring": ["rep:replaced"],
        "body": ["rep:replaced"],
    },
    "add": {
        "headers": ["x-added:$(headers.x-src)", "x-rep:not-added"],
        "querystring": ["added:$(headers.x-src)"],
        "body": ["added:yes", "rep:not-added"],
    },
    "append": {"headers": ["x-app:second"], "querystring": ["app:2"], "body": ["tags:b"]},
}


async def start_transformed(nursery: trio.Nursery, conf: dict[str, Any]) -> int:
    up = await start_echo(nursery)
    svc = service(up.port)
    r = at(svc, "/t")
    cfg = config(services=[svc], routes=[r], plugins=[plugin("request-transformer", conf, route=r)])
    port, _ = await start(nursery, cfg)
    return port


async def test_request_transformer_headers_and_query(nursery: trio.Nursery) -> None:
    port = await start_transformed(nursery, TRANSFORM)
    reply = await curl(
        port,
        "/t?drop=1&old=o&rep=r&keep=k",
        *("-H", "X-Drop: 1", "-H", "X-Old: o", "-H", "X-Rep: r"),
        *("-H", "X-Src: from client", "-H", "X-App: first"),
    )
    assert reply.status == 200
    seen = received(reply)
    h = seen["header_map"]
    assert "x-drop" not in h
    assert "x-old" not in h
    assert h["x-new"] == "o"
    assert h["x-rep"] == "replaced"
    assert h["x-added"] == "from client"
    assert [v for k, v in seen["headers"] if k == "x-app"] == ["first", "second"]
    # values that are not query-safe are encoded: a header cannot add a parameter
    assert seen["target"] == "/t?new=o&rep=replaced&keep=k&added=from%20client&app=2"
    reply = await curl(port, "/t", "-H", "X-Src: a&admin=true")
    assert received(reply)["target"] == "/t?added=a%26admin%3Dtrue&app=2"
    assert received(reply)["header_map"]["x-added"] == "a&admin=true"


async def test_request_transformer_form_body(nursery: trio.Nursery) -> None:
    port = await start_transformed(nursery, TRANSFORM)
    form = b"secret=s&old=o&rep=r&tags=a&keep=k%20k"
    reply = await curl(port, "/t", data=form)  # curl's default: x-www-form-urlencoded
    seen = received(reply)
    assert seen["method"] == "POST"
    assert sorted(parse_qsl(seen["body"])) == [
        ("added", "yes"),
        ("keep", "k k"),
        ("new", "o"),
        ("rep", "replaced"),
        ("tags", "a"),
        ("tags", "b"),
    ]
    assert seen["header_map"]["content-length"] == str(len(seen["body"]))
    assert "transfer-encoding" not in seen["header_map"]


async def test_request_transformer_json_body(nursery: trio.Nursery) -> None:
    port = await start_transformed(nursery, TRANSFORM)
    doc = {"secret": 1, "old": "o", "rep": 2, "tags": "a", "keep": [1, 2]}
    # chunked upload: the plugin buffers it and sends it with a length
    body = json.dumps(doc).encode()
    reply = await http_request(
        port,
        "POST",
        "/t",
        headers={"Content-Type": "application/json"},
        body=iter([body[:10], body[10:]]),
    )
    seen = received(reply)
    assert json.loads(seen["body"]) == {
        "new": "o",
        "rep": "replaced",
        "tags": ["a", "b"],
        "keep": [1, 2],
        "added": "yes",
    }
    assert seen["header_map"]["content-length"] == str(len(seen["body"]))
    assert "transfer-encoding" not in seen["header_map"]
    # a body of another type passes untouched
    reply = await curl(port, "/t", "-H", "Content-Type: text/plain", data=b"secret=s")
    assert received(reply)["body"] == "secret=s"


async def test_request_transformer_method_and_uri(nursery: trio.Nursery) -> None:
    port = await start_transformed(
        nursery, {"http_method": "PUT", "replace": {"uri": "/v2$(headers.x-suffix)"}}
    )
    reply = await curl(port, "/t/old?q=1", "-H", "X-Suffix: /items")
    seen = received(reply)
    assert seen["method"] == "PUT"
    assert seen["target"] == "/v2/items?q=1"
    # what a header puts in the path cannot end it or break the request line
    reply = await curl(port, "/t?q=1", "-H", "X-Suffix: /a b?admin=1#x")
    assert reply.status == 200
    assert received(reply)["target"] == "/v2/a%20b%3Fadmin=1%23x?q=1"


async def test_request_transformer_uri_captures(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    r = route(svc, paths=[r"~/users/(?<id>\d+)$"], strip_path=False)
    conf = {"add": {"headers": ["x-user-id:$(uri_captures.id)"]}}
    cfg = config(services=[svc], routes=[r], plugins=[plugin("request-transformer", conf, route=r)])
    port, _ = await start(nursery, cfg)
    reply = await curl(port, "/users/42")
    assert received(reply)["header_map"]["x-user-id"] == "42"


# -- response-transformer ---------------------------------------------------------------------

RESPONSE_TRANSFORM = {
    "remove": {"headers": ["x-internal"], "json": ["password"]},
    "rename": {"headers": ["x-old:x-new"]},
    "replace": {"json": ["count:2"], "json_types": ["number"]},
    "add": {"headers": ["x-added:yes"], "json": ["flag:true"], "json_types": ["boolean"]},
    "append": {"headers": ["x-app:2"], "json": ["tags:b"]},
}
UPSTREAM_DOC = {"password": "hunter2", "user": "u", "count": 1, "tags": ["a"]}
TRANSFORMED_DOC = {"user": "u", "count": 2, "tags": ["a", "b"], "flag": True}


async def test_response_transformer_headers_and_json(nursery: trio.Nursery) -> None:
    async def api(req: Any, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        ctype = b"application/json" if req.target == b"/json" else b"text/plain"
        headers = [
            (b"content-type", ctype),
            (b"x-internal", b"1"),
            (b"x-old", b"o"),
            (b"x-app", b"1"),
        ]
        return 200, headers, json.dumps(UPSTREAM_DOC).encode()

    up = Upstream(api)
    await nursery.start(up.serve)
    svc = service(up.port)
    cfg = config(
        services=[svc],
        routes=[route(svc)],
        plugins=[plugin("response-transformer", RESPONSE_TRANSFORM, service=svc)],
    )
    port, _ = await start(nursery, cfg)
    reply = await http_request(port, path="/json")
    assert reply.status == 200
    assert reply.json() == TRANSFORMED_DOC
    assert reply.header("x-internal") is None
    assert reply.header("x-old") is None
    assert reply.header("x-new") == "o"
    assert reply.header("x-added") == "yes"
    assert header_values(reply, "x-app") == ["1", "2"]
    # not JSON: the headers change, the body does not
    reply = await curl(port, "/text")
    assert json.loads(reply.body) == UPSTREAM_DOC
    assert reply.header("x-added") == "yes"
    assert reply.header("x-internal") is None


async def test_response_transformer_on_a_chunked_upstream_response(nursery: trio.Nursery) -> None:
    pieces = [b'{"password": "hun', b'ter2", "user": "u", "cou', b'nt": 1, "tags": ["a"]}']

    async def chunked_api(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\nX-Internal: 1\r\n\r\n"
        )
        for piece in pieces:
            await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
            await trio.sleep(0.01)  # separate reads on the proxy's side
        await stream.send_all(b"0\r\n\r\n")
        await stream.aclose()

    up_port = await serve_raw(nursery, chunked_api)
    svc = service(up_port)
    cfg = config(
        services=[svc],
        routes=[route(svc)],
        plugins=[plugin("response-transformer", RESPONSE_TRANSFORM)],
    )
    port, _ = await start(nursery, cfg)
    reply = await curl(port, "/")
    assert reply.status == 200
    assert reply.header("transfer-encoding") == "chunked"
    assert reply.header("x-internal") is None
    assert json.loads(reply.body) == TRANSFORMED_DOC
    reply = await http_request(port)  # a second time, through another client
    assert reply.json() == TRANSFORMED_DOC


# -- cors -------------------------------------------------------------------------------------

CORS = {
    "origins": ["http://app.example", r"(a|b)\.example\.com"],
    "credentials": True,
    "max_age": 600,
    "methods": ["GET", "PUT"],
    "exposed_headers": ["X-Total", "X-Page"],
}


async def start_cors(nursery: trio.Nursery, conf: dict[str, Any]) -> tuple[int, Upstream]:
    up = await start_echo(nursery)
    svc = service(up.port)
    cfg = config(services=[svc], routes=[route(svc)], plugins=[plugin("cors", conf)])
    port, _ = await start(nursery, cfg)
    return port, up


async def test_cors_preflight_is_answered_by_the_gateway(nursery: trio.Nursery) -> None:
    port, up = await start_cors(nursery, CORS)
    reply = await curl(
        port,
        "/things",
        *("-X", "OPTIONS", "-H", "Origin: http://app.example"),
        *("-H", "Access-Control-Request-Method: PUT"),
        *("-H", "Access-Control-Request-Headers: x-token, content-type"),
    )
    assert reply.status == 200
    assert reply.body == b""
    assert reply.header("access-control-allow-origin") == "http://app.example"
    assert reply.header("access-control-allow-methods") == "GET,PUT"
    assert reply.header("access-control-allow-headers") == "x-token, content-type"
    assert reply.header("access-control-allow-credentials") == "true"
    assert reply.header("access-control-max-age") == "600"
    assert reply.header("vary") == "Origin"
    assert reply.header("access-control-expose-headers") is None
    assert up.requests == 0
    # a regular expression without a scheme matches the origin's host
    reply = await curl(
        port,
        "/things",
        *("-X", "OPTIONS", "-H", "Origin: https://b.example.com"),
        *("-H", "Access-Control-Request-Method: GET"),
    )
    assert reply.header("access-control-allow-origin") == "https://b.example.com"
    assert reply.header("access-control-allow-headers") is None
    assert up.requests == 0


async def test_cors_actual_requests(nursery: trio.Nursery) -> None:
    port, up = await start_cors(nursery, CORS)
    reply = await http_request(port, path="/things", headers={"Origin": "http://app.example"})
    assert reply.status == 200
    assert received(reply)["target"] == "/things"
    assert reply.header("access-control-allow-origin") == "http://app.example"
    assert reply.header("access-control-allow-credentials") == "true"
    assert reply.header("access-control-expose-headers") == "X-Total,X-Page"
    assert reply.header("vary") == "Origin"
    assert reply.header("access-control-allow-methods") is None  # preflight only
    # an origin not allowed: no ACAO (the browser refuses), the request still goes through
    reply = await curl(port, "/things", "-H", "Origin: https://evil.example.com")
    assert reply.status == 200
    assert reply.header("access-control-allow-origin") is None
    assert reply.header("access-control-allow-credentials") is None
    assert reply.header("vary") == "Origin"
    # OPTIONS that is not a preflight (no Origin, or no Access-Control-Request-Method) goes
    # to the service, as Kong
    reply = await curl(port, "/opt", "-X", "OPTIONS", "-H", "Origin: http://app.example")
    assert received(reply)["method"] == "OPTIONS"
    reply = await curl(port, "/opt", "-X", "OPTIONS", "-H", "Access-Control-Request-Method: GET")
    assert received(reply)["method"] == "OPTIONS"
    assert up.requests == 4


async def test_cors_wildcard_and_preflight_continue(nursery: trio.Nursery) -> None:
    port, up = await start_cors(nursery, {"preflight_continue": True})
    reply = await curl(port, "/", "-H", "Origin: http://anywhere.test")
    assert reply.header("access-control-allow-origin") == "*"
    assert reply.header("vary") is None
    reply = await curl(
        port,
        "/pre",
        *("-X", "OPTIONS", "-H", "Origin: http://anywhere.test"),
        *("-H", "Access-Control-Request-Method: GET"),
    )
    # the service answers the preflight, and the plugin leaves its answer alone (Kong)
    assert received(reply)["method"] == "OPTIONS"
    assert reply.header("access-control-allow-origin") is None
    assert up.requests == 2


# -- ip-restriction ---------------------------------------------------------------------------


async def test_ip_restriction_deny_and_allow(nursery: trio.Nursery) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    deny, allow, others = at(svc, "/deny"), at(svc, "/allow"), at(svc, "/others")
    custom = at(svc, "/custom")
    cfg = config(
        services=[svc],
        routes=[deny, allow, others, custom],
        plugins=[
            plugin("ip-restriction", {"deny": ["127.0.0.0/8"]}, route=deny),
            plugin("ip-restriction", {"allow": ["127.0.0.1", "::1"]}, route=allow),
            plugin("ip-restriction", {"allow": ["10.0.0.0/8"]}, route=others),
            plugin(
                "ip-restriction",
                {"deny": ["127.0.0.1"], "status": 401, "message": "go away"},
                route=custom,
            ),
        ],
    )
    port, _ = await start(nursery, cfg)
    reply = await curl(port, "/deny")
    assert reply.status == 403
    assert reply.json() == {"message": "Your IP address is not allowed"}
    assert (await curl(port, "/others")).json() == {"message": "Your IP address is not allowed"}
    reply = await http_request(port, path="/custom")
    assert (reply.status, reply.json()) == (401, {"message": "go away"})
    reply = await curl(port, "/allow")
    assert reply.status == 200
    assert received(reply)["target"] == "/allow"
    assert up.requests == 1


async def test_ip_restriction_uses_the_forwarded_address(nursery: trio.Nursery) -> None:
    import ipaddress

    up = await start_echo(nursery)
    svc = service(up.port)
    r = at(svc, "/")
    cfg = config(
        services=[svc],
        routes=[r],
        plugins=[plugin("ip-restriction", {"allow": ["10.0.0.0/8"], "deny": ["10.0.0.66"]})],
    )
    port, _ = await start(
        nursery,
        cfg,
        trusted_ips=[ipaddress.ip_network("127.0.0.0/8")],
        real_ip_header="X-Forwarded-For",
    )
    assert (await curl(port, "/", "-H", "X-Forwarded-For: 10.1.2.3")).status == 200
    assert (await curl(port, "/", "-H", "X-Forwarded-For: 10.0.0.66")).status == 403
    assert (await curl(port, "/", "-H", "X-Forwarded-For: 192.0.2.1")).status == 403
    assert (await curl(port, "/")).status == 403  # 127.0.0.1 itself
    assert up.requests == 1


# -- correlation-id ---------------------------------------------------------------------------


async def test_correlation_id_generated_echoed_and_passed_upstream(
    nursery: trio.Nursery,
) -> None:
    up = await start_echo(nursery)
    svc = service(up.port)
    echoed, quiet, guarded = at(svc, "/echoed"), at(svc, "/quiet"), at(svc, "/guarded")
    cfg = config(
        services=[svc],
        routes=[echoed, quiet, guarded],
        plugins=[
            plugin("correlation-id", {"generator": "uuid", "echo_downstream": True}, route=echoed),
            plugin("correlation-id", {"header_name": "X-Request-ID"}, route=quiet),
            plugin("correlation-id", {"echo_downstream": True}, route=guarded),
            plugin("key-auth", {}, route=guarded),
        ],
        consumers=[],
    )
    port, _ = await start(nursery, cfg)
    ids = []
    for _ in range(2):
        reply = await curl(port, "/echoed")
        value = reply.header("kong-request-id")
        assert value is not None
        assert UUID.fullmatch(value)
        assert received(reply)["header_map"]["kong-request-id"] == value
        ids.append(value)
    assert ids[0] != ids[1]
    # a client's id is kept, upstream and downstream
    reply = await http_request(port, path="/echoed", headers={"Kong-Request-ID": "mine-1"})
    assert reply.header("kong-request-id") == "mine-1"
    assert received(reply)["header_map"]["kong-request-id"] == "mine-1"
    # the default generator (uuid#counter) under another header name, not echoed
    first = await http_request(port, path="/quiet")
    second = await http_request(port, path="/quiet")
    assert first.header("x-request-id") is None
    a = received(first)["header_map"]["x-request-id"]
    b = received(second)["header_map"]["x-request-id"]
    worker, _, n = a.partition("#")
    assert UUID.fullmatch(worker)
    assert b == f"{worker}#{int(n) + 1}"
    # the id is echoed on the gateway's own answers too (key-auth refusing here)
    reply = await curl(port, "/guarded")
    assert reply.status == 401
    assert (reply.header("kong-request-id") or "").startswith(worker + "#")


# -- request-size-limiting --------------------------------------------------------------------


async def start_size_limited(nursery: trio.Nursery) -> tuple[int, Upstream]:
    up = await start_echo(nursery)
    svc = service(up.port)
    limited, strict = at(svc, "/upload"), at(svc, "/strict")
    kib = {"allowed_payload_size": 1, "size_unit": "kilobytes"}
    cfg = config(
        services=[svc],
        routes=[limited, strict],
        plugins=[
            plugin("request-size-limiting", kib, route=limited),
            plugin("request-size-limiting", {**kib, "require_content_length": True}, route=strict),
        ],
    )
    port, _ = await start(nursery, cfg)
    return port, up


async def test_request_size_limiting_with_content_length(nursery: trio.Nursery) -> None:
    port, up = await start_size_limited(nursery)
    reply = await curl(port, "/upload", data=b"a" * 1024)
    assert reply.status == 200
    assert len(received(reply)["body"]) == 1024
    reply = await curl(port, "/upload", data=b"a" * 1025)
    assert reply.status == 413
    assert reply.json() == {"message": "Request size limit exceeded"}
    # a large declared length is refused from the head alone, without waiting for the body
    with trio.fail_after(5):
        raw = await raw_exchange(
            port,
            b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 104857600\r\n\r\n",
            timeout=2,
        )
    assert status_of(raw) == 413
    assert raw.endswith(b'{"message":"Request size limit exceeded"}')
    assert up.requests == 1


async def test_request_size_limiting_with_chunked_bodies(nursery: trio.Nursery) -> None:
    port, up = await start_size_limited(nursery)
    chunked = ("-H", "Transfer-Encoding: chunked")
    reply = await curl(port, "/upload", *chunked, data=b"b" * 1000)
    assert reply.status == 200
    seen = received(reply)
    assert seen["body"] == "b" * 1000
    assert seen["header_map"]["content-length"] == "1000"
    reply = await curl(port, "/upload", *chunked, data=b"b" * 5000)
    assert reply.status == 413
    assert reply.json() == {"message": "Request size limit exceeded"}
    reply = await http_request(port, "POST", "/upload", body=iter([b"c" * 600, b"c" * 600]))
    assert reply.status == 413
    # require_content_length: 411 for a chunked body, a length under the limit passes
    reply = await curl(port, "/strict", *chunked, data=b"d" * 10)
    assert reply.status == 411
    assert reply.json() == {"message": "A valid Content-Length header is required"}
    assert (await curl(port, "/strict", data=b"d" * 10)).status == 200
    assert up.requests == 2
