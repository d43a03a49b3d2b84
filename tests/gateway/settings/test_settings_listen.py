"""Kong's listen syntax and host:port endpoints."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from settings_helpers import errors, load

from gateway.settings import Endpoint, ListenAddress
from gateway.settings._listen import parse_endpoints, parse_listen
from gateway.settings._values import InvalidValue


def test_default_proxy_listen() -> None:
    assert load().proxy_listen == (
        ListenAddress(host="0.0.0.0", port=8000, reuseport=True, backlog=16384),
        ListenAddress(
            host="0.0.0.0", port=8443, ssl=True, http2=True, reuseport=True, backlog=16384
        ),
    )


def test_default_admin_cluster_status() -> None:
    s = load()
    assert [(a.host, a.port, a.ssl) for a in s.admin_listen] == [
        ("127.0.0.1", 8001, False),
        ("127.0.0.1", 8444, True),
    ]
    assert s.cluster_listen == (ListenAddress(host="0.0.0.0", port=8005),)
    assert s.cluster_telemetry_listen == (ListenAddress(host="0.0.0.0", port=8006),)
    assert s.status_listen == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("off", ()),
        ("[::1]:8001", (ListenAddress(host="::1", port=8001),)),
        ("[::]:8443 ssl http2", (ListenAddress(host="::", port=8443, ssl=True, http2=True),)),
        ("localhost:0", (ListenAddress(host="localhost", port=0),)),
        (
            "127.0.0.1:9000 proxy_protocol deferred bind ipv6only=off so_keepalive=30m::10",
            (
                ListenAddress(
                    host="127.0.0.1",
                    port=9000,
                    proxy_protocol=True,
                    deferred=True,
                    bind=True,
                    ipv6only=False,
                    so_keepalive="30m::10",
                ),
            ),
        ),
        (
            " 0.0.0.0:80 , 0.0.0.0:443 ssl ",
            (
                ListenAddress(host="0.0.0.0", port=80),
                ListenAddress(host="0.0.0.0", port=443, ssl=True),
            ),
        ),
    ],
)
def test_listen_syntax(text: str, expected: tuple[ListenAddress, ...]) -> None:
    assert parse_listen(text) == expected


def test_listen_toml_array() -> None:
    assert parse_listen(["127.0.0.1:1 ssl", "[::1]:2"]) == (
        ListenAddress(host="127.0.0.1", port=1, ssl=True),
        ListenAddress(host="::1", port=2),
    )
    assert parse_listen([]) == ()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("8000", "missing port"),
        ("0.0.0.0", "missing port"),
        ("0.0.0.0:http", "invalid port"),
        ("0.0.0.0:65536", "out of range"),
        ("::1:8001", "brackets"),
        ("[::1:8001", "invalid address"),
        ("[127.0.0.1]:80", "invalid IPv6"),
        ("bad_host!:80", "invalid host"),
        ("0.0.0.0:80 tls", "unknown listen flag 'tls'"),
        ("0.0.0.0:80 backlog=x", "unknown listen flag 'backlog=x'"),
        ("0.0.0.0:80 ipv6only=maybe", "unknown listen flag"),
        ("off, 0.0.0.0:80", "'off' cannot be combined"),
        ("0.0.0.0:80,", "empty entry"),
    ],
)
def test_listen_refused(text: str, reason: str) -> None:
    with pytest.raises(InvalidValue, match=reason):
        parse_listen(text)


def test_listen_error_names_key_and_form() -> None:
    (line,) = errors(admin_listen="127.0.0.1:8001 tls")
    assert line.startswith("admin_listen: unknown listen flag 'tls'")
    assert "[off] | <ip>:<port> [ssl] [http2]" in line
    assert "(from command line)" in line


def test_listen_str_round_trips() -> None:
    text = "[::1]:8443 ssl http2 reuseport backlog=16384"
    (address,) = parse_listen(text)
    assert str(address) == text
    assert parse_listen(str(address)) == (address,)


def test_cluster_control_plane_list() -> None:
    assert load().cluster_control_plane == (Endpoint(host="127.0.0.1", port=8005),)
    assert parse_endpoints("cp1.example.com:8005, [::1]:9005") == (
        Endpoint(host="cp1.example.com", port=8005),
        Endpoint(host="::1", port=9005),
    )
    (line,) = errors(cluster_control_plane="cp1:0")
    assert line.startswith("cluster_control_plane: port 0 out of range 1-65535")
    (line,) = errors(cluster_telemetry_endpoint="cp1")
    assert line.startswith("cluster_telemetry_endpoint: missing port")


_flags = st.fixed_dictionaries(
    {},
    optional={
        "ssl": st.booleans(),
        "http2": st.booleans(),
        "reuseport": st.booleans(),
        "proxy_protocol": st.booleans(),
        "deferred": st.booleans(),
        "bind": st.booleans(),
        "backlog": st.integers(1, 65535),
        "ipv6only": st.booleans(),
        "so_keepalive": st.sampled_from(["on", "off", "30m::10", "1:2:3"]),
    },
)
_hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9](\.[a-z]{2,5}){0,2}", fullmatch=True),
)


@given(
    st.lists(
        st.builds(
            lambda host, port, flags: ListenAddress(host=host, port=port, **flags),
            _hosts,
            st.integers(0, 65535),
            _flags,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_listen_round_trip(addresses: list[ListenAddress]) -> None:
    assert parse_listen(", ".join(str(a) for a in addresses)) == tuple(addresses)
