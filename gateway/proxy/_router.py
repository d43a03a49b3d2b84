"""The HTTP router: Kong 3.x ``traditional_compatible`` route matching, compiled once per config.

Theory of operation
-------------------

``Router.compile(config)`` turns every HTTP-family route into one or more *matchers*. As Kong's
``traditional_compatible`` flavour does, a route whose paths differ in kind or length is split
into one matcher per group (all its regex paths; its plain paths of one length), so that each
path competes with its own priority. Every matcher gets a priority key (see ``_priority_key`` and
docs/reference/proxy-routing.md) and the matchers are sorted once: a matcher's *rank* is its
position in that order, lower is better. Matching a request means finding the matching matcher
of lowest rank.

The matchers are then spread over indexes so that a request only looks at matchers that can
match its host and path:

* host buckets: an exact-host dict (``host`` and ``host:port`` keys), dicts of wildcard
  suffixes (``*.example.com`` is keyed ``.example.com``) and prefixes (``example.*`` is keyed
  ``example.``) probed once per dot of the request host, and one bucket for routes without
  hosts;
* inside a bucket, a prefix table: plain paths are keyed by themselves, regex paths by their
  literal prefix (``~/users/\\d+`` by ``/users/``); the request probes one dict key per distinct
  key length of the bucket (``path[:n]``), and a slot of several regex matchers is first tried
  with one combined regex (alternatives in rank order, an empty marker group after each) that
  says in C which is the first alternative that can match;
* methods, SNIs, headers and protocols are checked on the few matchers that survive, as
  precomputed sets and compiled regexes.

Each slot's list is sorted by rank, so a scan stops at its first full match or as soon as a rank
is not better than the best found so far: the answer is the minimum over slots, and nothing is
sorted per request. Buckets and key lengths also know their best rank and are skipped when
they cannot beat the match in hand. The slow reference in
tests/gateway/proxy/test_router_property.py (one linear scan in rank order) must always give the
same answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from gateway.proxy._router_paths import (
    join_upstream_path,
    normalize_path,
    normalize_regex_path,
    split_host_port,
)

__all__ = [
    "DEFAULT_PORTS",
    "HeaderValues",
    "RouteMatch",
    "Router",
    "RouterIssue",
    "join_upstream_path",
    "normalize_path",
    "regex_literal_prefix",
    "split_host_port",
]

HeaderValues = str | Sequence[str]

HTTP_PROTOCOLS: Final = frozenset({"http", "https", "ws", "wss"})
SECURE_SCHEMES: Final = frozenset({"https", "wss"})
DEFAULT_PORTS: Final[Mapping[str, int]] = MappingProxyType(
    {"http": 80, "ws": 80, "https": 443, "wss": 443}
)
_DEFAULT_PORTS: Final[dict[str, int]] = dict(DEFAULT_PORTS)
_MAX_HEADER_COUNT: Final = 255
_HOST_CACHE_SIZE: Final = 4096
_COMBINE_AT_LEAST: Final = 3
_NO_CAPTURES: Final[Mapping[str, str]] = MappingProxyType({})
_NAMED_GROUP_PCRE: Final = re.compile(r"\(\?<(?![=!])")
_BACKREFERENCE: Final = re.compile(r"\\[1-9]|\(\?P=|\(\?\(")
_REGEX_STOP: Final = frozenset(".^$*+?{}[]|()")


class RouteMatch:
    """What the router found for a request. Read-only by convention (slots, no setters)."""

    __slots__ = (
        "matched_path",
        "path",
        "preserve_host",
        "redirect_status",
        "request_buffering",
        "response_buffering",
        "route",
        "service",
        "strip_path",
        "upstream_path",
        "uri_captures",
    )

    route: dict[str, Any]
    """The route entity as found in the config."""
    service: dict[str, Any] | None
    """The route's service entity; ``None`` -> the proxy answers 503."""
    upstream_path: str
    """The path to send upstream: strip_path applied, joined with ``service.path`` following
    ``path_handling``, no query string."""
    matched_path: str | None
    """The route path prefix, or the text a regex path matched; ``None`` without paths."""
    uri_captures: Mapping[str, str]
    """Regex captures: named ones by name, all by position ("1", "2", ...)."""
    redirect_status: int | None
    """Set when the route is https-only and the request came over plain http/ws: the proxy
    must answer with this status (426, or a redirect to https) instead of proxying."""
    path: str
    """The normalised request path the route was matched with."""
    preserve_host: bool
    strip_path: bool
    request_buffering: bool
    response_buffering: bool

    def __init__(
        self,
        *,
        route: dict[str, Any],
        service: dict[str, Any] | None,
        upstream_path: str,
        matched_path: str | None,
        uri_captures: Mapping[str, str],
        redirect_status: int | None,
        path: str,
        preserve_host: bool,
        strip_path: bool,
        request_buffering: bool,
        response_buffering: bool,
    ) -> None:
        self.route = route
        self.service = service
        self.upstream_path = upstream_path
        self.matched_path = matched_path
        self.uri_captures = uri_captures
        self.redirect_status = redirect_status
        self.path = path
        self.preserve_host = preserve_host
        self.strip_path = strip_path
        self.request_buffering = request_buffering
        self.response_buffering = response_buffering

    def __repr__(self) -> str:
        return (
            f"RouteMatch(route={self.route.get('name') or self.route.get('id')!r}, "
            f"upstream_path={self.upstream_path!r}, matched_path={self.matched_path!r}, "
            f"redirect_status={self.redirect_status!r})"
        )


class RouterIssue:
    """A route (or one of its values) the router could not use, for the caller to log."""

    __slots__ = ("message", "route_id")

    def __init__(self, route_id: str | None, message: str) -> None:
        self.route_id = route_id
        self.message = message

    def __repr__(self) -> str:
        return f"RouterIssue(route_id={self.route_id!r}, message={self.message!r})"


class _HeaderRule:
    __slots__ = ("name", "regexes", "values")

    def __init__(self, name: str, values: frozenset[str], regexes: tuple[re.Pattern[str], ...]):
        self.name = name
        self.values = values
        self.regexes = regexes

    def accepts(self, value: HeaderValues | None) -> bool:
        if value is None:
            return False
        for one in (value,) if isinstance(value, str) else value:
            lowered = one.lower()
            if lowered in self.values:
                return True
            for regex in self.regexes:
                if regex.search(lowered) is not None:
                    return True
        return False


class _CaseInsensitiveHeaders(Mapping[str, HeaderValues]):
    """The request headers seen by header rules: looked up as given (h11 and most servers give
    lower-case names), and only on a miss lower-cased once. Never touched when no route has
    header rules, so a lazily decoded mapping stays undecoded."""

    __slots__ = ("_lowered", "_raw")

    def __init__(self, raw: Mapping[str, HeaderValues]) -> None:
        self._raw = raw
        self._lowered: dict[str, HeaderValues] | None = None

    def _fold(self) -> dict[str, HeaderValues]:
        if self._lowered is None:
            self._lowered = {key.lower(): value for key, value in self._raw.items()}
        return self._lowered

    def get(self, key: str, default: Any = None) -> Any:
        value = self._raw.get(key)
        if value is None:
            value = self._fold().get(key)
        return default if value is None else value

    def __getitem__(self, key: str) -> HeaderValues:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fold())

    def __len__(self) -> int:
        return len(self._fold())


class _Matcher:
    """One route, or one path group of a route. Everything a request is checked against."""

    __slots__ = (
        "hosts",
        "key",
        "methods",
        "path_handling",
        "prefixes",
        "rank",
        "regexes",
        "route",
        "rules",
        "schemes",
        "service",
        "service_path",
        "snis",
        "strip_path",
    )

    def __init__(
        self,
        *,
        route: dict[str, Any],
        service: dict[str, Any] | None,
        key: tuple[Any, ...],
        schemes: dict[str, int],
        hosts: tuple[tuple[str, str, int | None], ...],
        methods: frozenset[str] | None,
        snis: tuple[tuple[str, str], ...] | None,
        rules: tuple[_HeaderRule, ...],
        prefixes: tuple[str, ...],
        regexes: tuple[tuple[re.Pattern[str], str, str], ...],
    ) -> None:
        self.route = route
        self.service = service
        self.key = key
        self.rank = 0
        self.schemes = schemes
        self.hosts = hosts
        self.methods = methods
        self.snis = snis
        self.rules = rules
        self.prefixes = prefixes
        self.regexes = regexes
        self.strip_path = bool(route.get("strip_path", True))
        # NOTE: Kong's traditional_compatible flavour forces "v0"; we honour the route's value.
        # test_path_handling_v1_is_honoured
        self.path_handling = str(route.get("path_handling") or "v0")
        self.service_path = service.get("path") if service is not None else None

    def sni_accepts(self, sni: str | None) -> bool:
        assert self.snis is not None
        if not sni:
            return False
        sni = sni.lower()
        if sni.endswith(".") and len(sni) > 1:
            sni = sni[:-1]
        for kind, value in self.snis:
            if kind == "=":
                if sni == value:
                    return True
            elif kind == "*.":
                if sni.endswith(value):
                    return True
            elif sni.startswith(value):
                return True
        return False

    def check(
        self,
        method: str,
        scheme: str,
        sni: str | None,
        headers: Mapping[str, HeaderValues],
        path: str,
    ) -> tuple[str | None, re.Match[str] | None] | None:
        """Everything but the host; returns (matched path, regex match) or None."""
        if scheme not in self.schemes:
            return None
        if self.methods is not None and method not in self.methods:
            return None
        if self.snis is not None and scheme in SECURE_SCHEMES and not self.sni_accepts(sni):
            return None
        for rule in self.rules:
            if not rule.accepts(headers.get(rule.name)):
                return None
        if self.regexes:
            for regex, _, _ in self.regexes:
                found = regex.match(path)
                if found is not None:
                    return found.group(0), found
            return None
        if self.prefixes:
            for prefix in self.prefixes:
                if path.startswith(prefix):
                    return prefix, None
            return None
        return None, None


class _Slot:
    """The matchers of one bucket whose path (or regex literal prefix) is one string."""

    __slots__ = ("combined", "marker_to_position", "matchers")

    def __init__(self) -> None:
        self.matchers: list[_Matcher] = []
        self.combined: re.Pattern[str] | None = None
        self.marker_to_position: dict[int, int] = {}

    def build_combined(self) -> None:
        # One alternation in rank order; the first alternative that matches (re.match tries
        # them left to right) tells where the scan can start. Only for all-regex slots whose
        # patterns survive being concatenated (no backreferences, no global inline flags).
        if len(self.matchers) < _COMBINE_AT_LEAST:
            return
        parts: list[str] = []
        markers: dict[int, int] = {}
        for position, matcher in enumerate(self.matchers):
            if not matcher.regexes:
                return
            for _, source, _ in matcher.regexes:
                if _BACKREFERENCE.search(source):
                    return
                parts.append(f"(?:{_uncapture_groups(source)})()")
                markers[len(parts)] = position
        try:
            combined = re.compile("|".join(parts))
        except (re.error, RecursionError, OverflowError):
            return
        if combined.groups != len(parts):
            return
        self.combined = combined
        self.marker_to_position = markers


class _Bucket:
    """The matchers of one host key (or of no host), indexed by path."""

    __slots__ = ("best_rank", "lengths", "no_path", "slots")

    def __init__(self) -> None:
        self.slots: dict[str, _Slot] = {}
        self.no_path: list[_Matcher] = []
        self.lengths: tuple[tuple[int, int], ...] = ()
        self.best_rank = 0

    def add(self, matcher: _Matcher) -> None:
        # Matchers are added in rank order: the first one has the bucket's best rank.
        if not self.slots and not self.no_path:
            self.best_rank = matcher.rank
        if not matcher.prefixes and not matcher.regexes:
            self.no_path.append(matcher)
            return
        keys = matcher.prefixes or tuple(literal for _, _, literal in matcher.regexes)
        for key in keys:
            slot = self.slots.get(key)
            if slot is None:
                slot = self.slots[key] = _Slot()
            if not slot.matchers or slot.matchers[-1] is not matcher:
                slot.matchers.append(matcher)

    def finish(self) -> None:
        # (key length, best rank among the slots of that length), shortest first: a probe is
        # skipped when no slot of that length can beat the best match found so far.
        best: dict[int, int] = {}
        for key, slot in self.slots.items():
            rank = slot.matchers[0].rank
            if rank < best.get(len(key), rank + 1):
                best[len(key)] = rank
        self.lengths = tuple(sorted(best.items()))
        for slot in self.slots.values():
            slot.build_combined()


class Router:
    """Kong ``traditional_compatible`` HTTP routing over one config version."""

    __slots__ = (
        "_any",
        "_exact",
        "_exact_port",
        "_has_rules",
        "_has_wildcards",
        "_host_cache",
        "_matchers",
        "_prefix",
        "_prefix_port",
        "_suffix",
        "_suffix_port",
        "issues",
    )

    def __init__(self, matchers: list[_Matcher], issues: list[RouterIssue]) -> None:
        self._matchers = matchers
        self.issues: tuple[RouterIssue, ...] = tuple(issues)
        """Routes or values that were left out (invalid regex, unsupported attribute)."""
        self._exact: dict[str, _Bucket] = {}
        self._exact_port: dict[str, _Bucket] = {}
        self._suffix: dict[str, _Bucket] = {}
        self._suffix_port: dict[str, _Bucket] = {}
        self._prefix: dict[str, _Bucket] = {}
        self._prefix_port: dict[str, _Bucket] = {}
        self._any: _Bucket | None = None
        self._host_cache: dict[tuple[str, int | None], list[_Bucket]] = {}
        self._has_rules = any(m.rules for m in matchers)
        for matcher in matchers:
            if not matcher.hosts:
                if self._any is None:
                    self._any = _Bucket()
                self._any.add(matcher)
                continue
            for kind, name, port in matcher.hosts:
                table = self._table(kind, port)
                key = name if port is None else f"{name}:{port}"
                bucket = table.get(key)
                if bucket is None:
                    bucket = table[key] = _Bucket()
                bucket.add(matcher)
        for table in self._tables():
            for bucket in table.values():
                bucket.finish()
        if self._any is not None:
            self._any.finish()
        self._has_wildcards = bool(
            self._suffix or self._prefix or self._suffix_port or self._prefix_port
        )

    def _table(self, kind: str, port: int | None) -> dict[str, _Bucket]:
        if kind == "=":
            return self._exact if port is None else self._exact_port
        if kind == "*.":
            return self._suffix if port is None else self._suffix_port
        return self._prefix if port is None else self._prefix_port

    def _tables(self) -> tuple[dict[str, _Bucket], ...]:
        return (
            self._exact,
            self._exact_port,
            self._suffix,
            self._suffix_port,
            self._prefix,
            self._prefix_port,
        )

    @classmethod
    def compile(cls, config: Mapping[str, Any]) -> Router:
        """Build the router of one config dict (docs/design/contracts.md section 1)."""
        services: dict[Any, dict[str, Any]] = {}
        for service in config.get("services") or ():
            services[service.get("id")] = service
        issues: list[RouterIssue] = []
        matchers: list[_Matcher] = []
        for index, route in enumerate(config.get("routes") or ()):
            matchers.extend(_compile_route(route, index, services, issues))
        matchers.sort(key=lambda m: m.key)
        for rank, matcher in enumerate(matchers):
            matcher.rank = rank
        return cls(matchers, issues)

    def __len__(self) -> int:
        return len(self._matchers)

    def _buckets(self, name: str, port: int | None) -> list[_Bucket]:
        key = (name, port)
        found = self._host_cache.get(key)
        if found is None:
            found = self._find_buckets(name, port)
            if len(self._host_cache) >= _HOST_CACHE_SIZE:
                # Hosts are chosen by clients: the cache is bounded, simply emptied when full.
                self._host_cache.clear()
            self._host_cache[key] = found
        return found

    def _find_buckets(self, name: str, port: int | None) -> list[_Bucket]:
        found: list[_Bucket] = []
        bucket = self._exact.get(name)
        if bucket is not None:
            found.append(bucket)
        if self._exact_port and port is not None:
            bucket = self._exact_port.get(f"{name}:{port}")
            if bucket is not None:
                found.append(bucket)
        if self._has_wildcards:
            suffixes, prefixes = self._suffix, self._prefix
            suffixes_port, prefixes_port = self._suffix_port, self._prefix_port
            dot = name.find(".")
            while dot >= 0:
                if suffixes:
                    bucket = suffixes.get(name[dot:])
                    if bucket is not None:
                        found.append(bucket)
                if prefixes:
                    bucket = prefixes.get(name[: dot + 1])
                    if bucket is not None:
                        found.append(bucket)
                if suffixes_port:
                    bucket = suffixes_port.get(f"{name[dot:]}:{port}")
                    if bucket is not None:
                        found.append(bucket)
                if prefixes_port:
                    bucket = prefixes_port.get(f"{name[: dot + 1]}:{port}")
                    if bucket is not None:
                        found.append(bucket)
                dot = name.find(".", dot + 1)
        if self._any is not None:
            found.append(self._any)
        return found

    def match(
        self,
        method: str,
        host: str,
        path: str,
        headers: Mapping[str, HeaderValues],
        sni: str | None,
        scheme: str,
    ) -> RouteMatch | None:
        """The route for a request, or ``None`` (the proxy answers 404).

        ``host`` is the Host header (port optional); ``path`` the request target in origin
        form (a query string is ignored); ``headers`` a mapping of header name to value (or
        list of values; names are compared case-insensitively); ``sni`` the TLS server name;
        ``scheme`` one of ``http``, ``https``, ``ws``, ``wss`` (``ws``/``wss`` for WebSocket
        upgrade requests over plain/TLS connections).
        """
        path = normalize_path(path)
        name, port = split_host_port(host)
        if port is None:
            port = _DEFAULT_PORTS.get(scheme)
        if self._has_rules:
            headers = _CaseInsensitiveHeaders(headers)

        best: _Matcher | None = None
        best_rank = len(self._matchers)
        best_found: tuple[str | None, re.Match[str] | None] | None = None
        size = len(path)
        for bucket in self._buckets(name, port):
            if bucket.best_rank >= best_rank:
                continue
            for length, length_rank in bucket.lengths:
                if length > size:
                    break
                if length_rank >= best_rank:
                    continue
                slot = bucket.slots.get(path[:length])
                if slot is None:
                    continue
                candidates = slot.matchers
                start = 0
                if slot.combined is not None:
                    first = slot.combined.match(path)
                    if first is None:
                        continue
                    assert first.lastindex is not None
                    start = slot.marker_to_position[first.lastindex]
                for position in range(start, len(candidates)):
                    matcher = candidates[position]
                    if matcher.rank >= best_rank:
                        break
                    found = matcher.check(method, scheme, sni, headers, path)
                    if found is not None:
                        best, best_rank, best_found = matcher, matcher.rank, found
                        break
            for matcher in bucket.no_path:
                if matcher.rank >= best_rank:
                    break
                found = matcher.check(method, scheme, sni, headers, path)
                if found is not None:
                    best, best_rank, best_found = matcher, matcher.rank, found
                    break
        if best is None or best_found is None:
            return None
        return _route_match(best, best_found, path, scheme)


def _route_match(
    matcher: _Matcher,
    found: tuple[str | None, re.Match[str] | None],
    path: str,
    scheme: str,
) -> RouteMatch:
    matched_path, regex_match = found
    captures = _NO_CAPTURES
    if regex_match is not None and regex_match.re.groups:
        named = {k: v for k, v in regex_match.groupdict().items() if v is not None}
        positional = {str(i): v for i, v in enumerate(regex_match.groups(), 1) if v is not None}
        if named or positional:
            captures = {**positional, **named}
    route = matcher.route
    redirect = matcher.schemes[scheme]
    return RouteMatch(
        route=route,
        service=matcher.service,
        upstream_path=join_upstream_path(
            matcher.service_path, matched_path, path, matcher.strip_path, matcher.path_handling
        ),
        matched_path=matched_path,
        uri_captures=captures,
        redirect_status=redirect or None,
        path=path,
        preserve_host=bool(route.get("preserve_host", False)),
        strip_path=matcher.strip_path,
        request_buffering=bool(route.get("request_buffering", True)),
        response_buffering=bool(route.get("response_buffering", True)),
    )


# --- compiling one route ---------------------------------------------------------------------


def _scheme_table(protocols: frozenset[str], redirect: int) -> dict[str, int]:
    """scheme -> 0 (proxy) or the status to answer with (https-only route over plain)."""
    table: dict[str, int] = {}
    if "http" in protocols:
        table["http"] = 0
    elif "https" in protocols:
        table["http"] = redirect
    if protocols & {"http", "https"}:
        table["https"] = 0
    if protocols & {"ws", "http"}:
        table["ws"] = 0
    elif protocols & {"wss", "https"}:
        table["ws"] = redirect
    table["wss"] = 0
    return table


def _pcre_to_python(pattern: str) -> str:
    # Kong's regexes are PCRE: (?<name>...) is (?P<name>...) in Python 3.11.
    return _NAMED_GROUP_PCRE.sub("(?P<", pattern)


def _uncapture_groups(pattern: str) -> str:
    """Capturing groups become non-capturing (``(x)``, ``(?P<n>x)`` -> ``(?:x)``), outside
    character classes. Inside one big alternation, capture marks make Python's ``re`` slow
    down with the number of groups; the captures are taken later from the route's own regex."""
    out: list[str] = []
    index = 0
    in_class = False
    size = len(pattern)
    while index < size:
        char = pattern[index]
        if char == "\\":
            out.append(pattern[index : index + 2])
            index += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            out.append(char)
            index += 1
            for opener in ("^", "]"):
                if pattern.startswith(opener, index):
                    out.append(opener)
                    index += 1
            continue
        elif char == "(":
            if pattern.startswith("(?P<", index):
                close = pattern.find(">", index)
                if close > 0:
                    out.append("(?:")
                    index = close + 1
                    continue
            elif not pattern.startswith("(?", index):
                out.append("(?:")
                index += 1
                continue
        out.append(char)
        index += 1
    return "".join(out)


def _has_top_level_alternation(pattern: str) -> bool:
    depth = 0
    index = 0
    in_class = False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            if pattern.startswith("^", index + 1):
                index += 1
            if pattern.startswith("]", index + 1):
                index += 1
        elif char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif char == "|" and depth == 0:
            return True
        index += 1
    return False


def regex_literal_prefix(pattern: str) -> str:
    """The literal text every match of ``pattern`` (matched at position 0) starts with.

    Conservative: stops at the first metacharacter, drops a character made optional by the
    quantifier after it, and gives ``""`` for a top-level alternation. Used only to index
    regex paths; the regex itself still decides.
    """
    if _has_top_level_alternation(pattern):
        return ""
    out: list[str] = []
    index = 1 if pattern.startswith("^") else 0
    size = len(pattern)
    while index < size:
        char = pattern[index]
        if char == "\\":
            escaped = pattern[index + 1 : index + 2]
            if not escaped or not escaped.isascii() or escaped.isalnum() or escaped == "_":
                break
            literal, step = escaped, 2
        elif char in _REGEX_STOP:
            break
        else:
            literal, step = char, 1
        following = pattern[index + step : index + step + 1]
        if following in ("*", "?", "{"):
            break
        out.append(literal)
        index += step
        if following == "+":
            break
    return "".join(out)


def _priority_key(
    route: dict[str, Any],
    index: int,
    *,
    weight: int,
    plain_hosts_only: bool,
    header_count: int,
    is_regex: bool,
    plain_length: int,
) -> tuple[Any, ...]:
    # NOTE: Kong's traditional_compatible leaves full ties unordered; created_at, then id, then
    # the position in the config make the order total. test_priority_created_at_breaks_ties
    created_at = route.get("created_at")
    return (
        -weight,
        -int(plain_hosts_only),
        -min(header_count, _MAX_HEADER_COUNT),
        -int(is_regex),
        -(int(route.get("regex_priority") or 0) if is_regex else 0),
        -plain_length,
        created_at if isinstance(created_at, int | float) else 0,
        str(route.get("id") or ""),
        index,
    )


def _compile_route(
    route: dict[str, Any],
    index: int,
    services: Mapping[Any, dict[str, Any]],
    issues: list[RouterIssue],
) -> list[_Matcher]:
    route_id = route.get("id")
    protocols = frozenset(route.get("protocols") or ("http", "https"))
    http_protocols = protocols & HTTP_PROTOCOLS
    if not http_protocols:
        return []  # grpc, grpcs, tcp, tls, tls_passthrough, udp: not this router's
    if route.get("sources") or route.get("destinations"):
        # NOTE: the HTTP router is not given the connection's addresses; rather than widen the
        # route by ignoring them, it is left out. test_sources_routes_are_left_out
        issues.append(RouterIssue(route_id, "sources/destinations are not supported on HTTP"))
        return []

    service_ref = route.get("service")
    service: dict[str, Any] | None = None
    if isinstance(service_ref, Mapping) and service_ref.get("id") is not None:
        service = services.get(service_ref["id"])
        if service is None:
            issues.append(RouterIssue(route_id, "service not found: routed without service"))

    redirect = int(route.get("https_redirect_status_code") or 426)
    schemes = _scheme_table(http_protocols, redirect)

    hosts: list[tuple[str, str, int | None]] = []
    # NOTE: per Kong's docs a route without hosts has "no wildcard host" and ranks with the
    # plain-host routes (Kong's code only sets this bit for routes with hosts).
    # test_priority_no_host_route_before_wildcard_host_route
    plain_hosts_only = True
    for value in route.get("hosts") or ():
        name, port = split_host_port(str(value))
        if name.startswith("*.") and "*" not in name[1:]:
            hosts.append(("*.", name[1:], port))
            plain_hosts_only = False
        elif name.endswith(".*") and "*" not in name[:-1]:
            hosts.append((".*", name[:-1], port))
            plain_hosts_only = False
        elif "*" in name or not name:
            issues.append(RouterIssue(route_id, f"invalid host ignored: {value!r}"))
        else:
            hosts.append(("=", name, port))
    if route.get("hosts") and not hosts:
        issues.append(RouterIssue(route_id, "no usable host: route left out"))
        return []

    methods_value = route.get("methods")
    methods = frozenset(str(m) for m in methods_value) if methods_value else None

    snis: tuple[tuple[str, str], ...] | None = None
    if route.get("snis"):
        sni_list: list[tuple[str, str]] = []
        for value in route["snis"]:
            sni = str(value).lower()
            if sni.startswith("*"):
                sni_list.append(("*.", sni[1:]))
            elif sni.endswith("*"):
                sni_list.append((".*", sni[:-1]))
            else:
                sni_list.append(("=", sni[:-1] if len(sni) > 1 and sni.endswith(".") else sni))
        snis = tuple(sni_list)

    rules: list[_HeaderRule] = []
    for header_name, values in (route.get("headers") or {}).items():
        plain: set[str] = set()
        regexes: list[re.Pattern[str]] = []
        for value in values or ():
            text = str(value)
            if text.startswith("~*"):
                try:
                    regexes.append(re.compile(_pcre_to_python(text[2:]), re.IGNORECASE))
                except (re.error, RecursionError, OverflowError) as exc:
                    issues.append(RouterIssue(route_id, f"invalid header regex {text!r}: {exc}"))
                    return []
            else:
                plain.add(text.lower())
        rules.append(_HeaderRule(str(header_name).lower(), frozenset(plain), tuple(regexes)))

    weight = sum(
        1
        for present in (
            methods is not None,
            bool(route.get("hosts")),
            bool(rules),
            snis is not None,
            bool(route.get("paths")),
        )
        if present
    )

    def make(
        prefixes: tuple[str, ...], regexes: tuple[tuple[re.Pattern[str], str, str], ...]
    ) -> _Matcher:
        key = _priority_key(
            route,
            index,
            weight=weight,
            plain_hosts_only=plain_hosts_only,
            header_count=len(rules),
            is_regex=bool(regexes),
            plain_length=len(prefixes[0]) if prefixes else 0,
        )
        return _Matcher(
            route=route,
            service=service,
            key=key,
            schemes=schemes,
            hosts=tuple(hosts),
            methods=methods,
            snis=snis,
            rules=tuple(rules),
            prefixes=prefixes,
            regexes=regexes,
        )

    paths = route.get("paths") or ()
    if not paths:
        return [make((), ())]

    regex_paths: list[tuple[re.Pattern[str], str, str]] = []
    plain_by_length: dict[int, list[str]] = {}
    had_regex = False
    for value in paths:
        text = str(value)
        if text.startswith("~"):
            had_regex = True
            # Matched with re.match: the whole pattern is anchored at the start, as the
            # traditional router's anchored flag (Kong's ATC prepends "^", which leaves a
            # top-level alternation's later branches unanchored).
            # test_regex_top_level_alternation_is_anchored_as_a_whole
            source = _pcre_to_python(normalize_regex_path(text[1:]))
            try:
                compiled = re.compile(source)
            except (re.error, RecursionError, OverflowError) as exc:
                issues.append(RouterIssue(route_id, f"invalid regex path {text!r}: {exc}"))
                continue
            regex_paths.append((compiled, source, regex_literal_prefix(source)))
        else:
            prefix = normalize_path(text)
            group = plain_by_length.setdefault(len(prefix), [])
            if prefix not in group:
                group.append(prefix)
    matchers = [make(tuple(group), ()) for group in plain_by_length.values()]
    if regex_paths:
        matchers.append(make((), tuple(regex_paths)))
    elif had_regex and not matchers:
        issues.append(RouterIssue(route_id, "no usable path: route left out"))
    return matchers
