"""Pure path and host helpers of the router: normalisation, host splitting, upstream joining.

Kept apart from ``_router.py`` so that the proxy and the tests can use the exact same rules the
router matches with (a request is forwarded in the normal form it was matched in).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

__all__ = [
    "bracketed",
    "decoded_path",
    "join_upstream_path",
    "normalize_path",
    "normalize_regex_path",
    "split_host_port",
]

# RFC 3986 unreserved characters: decoding their triplets never changes what a URI means.
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# A triplet, or a bare "%" (not followed by two hex digits).
_PCT_TRIPLET: Final = re.compile(r"%([0-9A-Fa-f]{2})?")
# Characters with a meaning in a regex that an unreserved triplet may decode to.
_REGEX_META: Final = frozenset(".")


def _decode_unreserved(match: re.Match[str]) -> str:
    if match.group(1) is None:
        return "%25"
    char = chr(int(match.group(1), 16))
    if char in _UNRESERVED:
        return char
    return match.group(0).upper()


def _decode_unreserved_regex(match: re.Match[str]) -> str:
    if match.group(1) is None:
        return "%25"
    char = chr(int(match.group(1), 16))
    if char in _UNRESERVED:
        return "\\" + char if char in _REGEX_META else char
    return match.group(0).upper()


def _remove_dot_segments(path: str) -> str:
    # Kong's kong.tools.uri.normalize(uri, merge_slashes=true): "." and ".." segments are
    # resolved, empty segments (duplicate slashes) dropped, a trailing slash kept. ".." never
    # climbs above the root, so "/a/../../b" is "/b".
    trailing = path.endswith(("/", "/.", "/.."))
    out: list[str] = []
    for segment in path.split("/"):
        if not segment or segment == ".":
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    if not out:
        return "/"
    joined = "/" + "/".join(out)
    return joined + "/" if trailing else joined


def normalize_path(path: str) -> str:
    """Normalise a request path (or a plain route path) the way Kong's router does.

    1. The query string is dropped (``?`` and after).
    2. Percent-encoded triplets of unreserved characters are decoded (``/fo%6F`` -> ``/foo``);
       every other triplet is kept, upper-cased (``%2f`` -> ``%2F``).
    3. Dot segments are removed (``/a/./b/../c`` -> ``/a/c``, also when spelled ``%2E``).
    4. Duplicate slashes are merged (``/a//b`` -> ``/a/b``).

    NOTE: Kong also decodes triplets of characters that are neither reserved nor unreserved
    (``%20``) and re-escapes them when forwarding; we keep them encoded, which gives the same
    forwarded bytes. Pinned by ``test_normalize_keeps_reserved_and_other_triplets``.

    NOTE: a bare ``%`` (not starting a triplet) becomes ``%25``. Kong leaves it, so that
    ``/%2%65%2%65/`` decodes to ``/%2e%2e/`` -- an encoded dot segment the upstream may
    resolve after the router let it through. With ``%25`` the result is in normal form
    (normalising twice changes nothing). Pinned by ``test_normalize_encodes_a_bare_percent``.
    """
    query = path.find("?")
    if query >= 0:
        path = path[:query]
    if not path.startswith("/"):
        path = "/" + path
    if "%" in path:
        path = _PCT_TRIPLET.sub(_decode_unreserved, path)
    if "." in path or "//" in path:
        path = _remove_dot_segments(path)
    return path


def decoded_path(path: str) -> str:
    """A request path as nginx's ``$uri``, which Kong hashes for ``hash_on = path``.

    ``normalize_path``, then every triplet still encoded is decoded; a decoded ``/`` separates
    segments as nginx's parser treats it (``/a/..%2Fb`` -> ``/b``, ``/a%2F%2Fb`` -> ``/a/b``).
    Bytes are kept as they were (``%FF`` and raw bytes that are not UTF-8 become surrogate
    escapes, which the balancer encodes back), so the key is the bytes nginx would hash.
    """
    path = normalize_path(path)
    if not path.isascii():
        path = path.encode("latin-1").decode("utf-8", "surrogateescape")
    if "%" not in path:
        return path
    slashes = "%2F" in path
    path = unquote(path, encoding="utf-8", errors="surrogateescape")
    return _remove_dot_segments(path) if slashes else path


def normalize_regex_path(pattern: str) -> str:
    """Normalise a regex route path (without its ``~``): only steps 2 of ``normalize_path``.

    A decoded character that is a regex metacharacter is escaped (``%2E`` -> ``\\.``), as Kong.
    """
    if "%" in pattern:
        return _PCT_TRIPLET.sub(_decode_unreserved_regex, pattern)
    return pattern


# Host header values seen lately (a worker sees few distinct ones); bounded, emptied when full
_SPLIT_CACHE: dict[str, tuple[str, int | None]] = {}
_SPLIT_CACHE_SIZE = 1024


def bracketed(name: str) -> str:
    """A host name as a Host header holds it: an IPv6 literal in brackets."""
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


def split_host_port(host: str) -> tuple[str, int | None]:
    """``"Example.COM:8080"`` -> ``("example.com", 8080)``; IPv6 literals keep their brackets.

    A port that is not a number in 0..65535 is not a port: the whole value is the host name
    (as Kong's ``split_host_port``), so it can only match a route host spelled the same way.
    """
    cached = _SPLIT_CACHE.get(host)
    if cached is not None:
        return cached
    result = _split_host_port(host)
    if len(_SPLIT_CACHE) >= _SPLIT_CACHE_SIZE:
        _SPLIT_CACHE.clear()
    _SPLIT_CACHE[host] = result
    return result


def _split_host_port(host: str) -> tuple[str, int | None]:
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, None
        name, rest = host[: end + 1], host[end + 1 :]
        if rest.startswith(":") and _is_port(rest[1:]):
            return name, int(rest[1:])
        return (name, None) if not rest else (host, None)
    colon = host.find(":")
    if colon < 0 or host.find(":", colon + 1) >= 0:
        return host, None
    port = host[colon + 1 :]
    if _is_port(port):
        return host[:colon], int(port)
    return host, None


def _is_port(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit() and int(text) <= 65535


def _sanitize_postfix(postfix: str) -> str:
    # kong.router.utils.sanitize_uri_postfix: a postfix never starts with a dot segment.
    if postfix in (".", ".."):
        return ""
    if postfix.startswith("./"):
        return postfix[2:]
    if postfix.startswith("../"):
        return postfix[3:]
    return postfix


def join_upstream_path(
    service_path: str | None,
    route_path_matched: str | None,
    request_path: str,
    strip_path: bool,
    path_handling: str,
) -> str:
    """The path sent upstream: Kong's joining of ``service.path`` with the request path.

    ``route_path_matched`` is the prefix (or the text a regex path matched) that selected the
    route, ``None`` when the route has no paths; ``request_path`` is the normalised request path.
    With ``strip_path`` the matched part is removed first. ``path_handling`` ``"v0"`` joins the
    pieces as URL segments (``/s`` + ``/r`` + ``req`` -> ``/s/req``), ``"v1"`` treats
    ``service.path`` as a string prefix (``/s`` + ``req`` -> ``/sreq``). Both avoid double
    slashes. The full table from Kong's documentation is pinned by ``test_path_handling_table``.
    """
    base = service_path or "/"
    if strip_path and route_path_matched is not None:
        postfix = request_path[len(route_path_matched) :]
    else:
        postfix = request_path[1:]
    postfix = _sanitize_postfix(postfix)

    if path_handling == "v1":
        if not strip_path:
            return base + request_path[1:]
        if base.endswith("/") and postfix.startswith("/"):
            return base[:-1] + postfix
        return base + postfix

    # "v0": kong.router.utils.get_upstream_uri
    if base.endswith("/"):
        if not strip_path:
            return base + request_path[1:]
        if not postfix:
            if base == "/" or request_path.endswith("/"):
                return base
            return base[:-1]
        if postfix.startswith("/"):
            return base[:-1] + postfix
        return base + postfix
    if not strip_path:
        return base if request_path == "/" else base + request_path
    if not postfix:
        return base + "/" if len(request_path) > 1 and request_path.endswith("/") else base
    if postfix.startswith("/"):
        return base + postfix
    return base + "/" + postfix
