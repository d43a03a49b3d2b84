"""Sources and precedence, value types, unknown keys, redaction."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import attrs
import pytest
from settings_helpers import ClusterFiles, errors, load

from gateway import ConfigError
from gateway.settings import (
    KEYS,
    Settings,
    add_settings_arguments,
    load_settings,
    settings_from_args,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    s = load()
    assert s.role == "traditional"
    assert s.database == "sqlite"
    assert s.prefix == tmp_path / "gateway-prefix"
    assert s.sqlite_path == tmp_path / "gateway-prefix" / "gateway.db"
    assert s.data_plane_config_cache_path == s.prefix
    assert s.proxy_error_log == s.prefix / "logs" / "error.log"
    assert s.status_access_log == "off"
    assert s.cluster_max_payload == 16777216
    assert s.cluster_data_plane_purge_delay == 1209600
    assert s.cluster_ocsp_timeout == 5.0
    assert s.cluster_sync_coalesce == 0.1
    assert s.headers == ("server_tokens", "latency_tokens", "X-Kong-Request-Id")
    assert s.ssl_trusted_certificate == ("system",)
    assert s.worker_processes >= 1
    assert s.cluster_dp_labels == {}


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    conf = _write(
        tmp_path / "gateway.toml", 'log_level = "info"\npg_port = 6000\npg_user = "file"\n'
    )
    env = {"GATEWAY_PG_PORT": "7000", "GATEWAY_PG_USER": "env"}

    s = load_settings(conf, env=env, overrides={"pg_user": "flag"})
    assert s.pg_host == "127.0.0.1"  # default
    assert s.log_level == "info"  # file
    assert s.pg_port == 7000  # env beats file
    assert s.pg_user == "flag"  # flag beats env


def test_environment_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "debug")
    assert load_settings().log_level == "debug"
    assert load_settings(env={}).log_level == "notice"


def test_unknown_key_in_file_suggests(tmp_path: Path) -> None:
    conf = _write(tmp_path / "g.toml", 'proxy_listn = "off"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(conf, env={})
    assert str(info.value) == (
        f"proxy_listn: unknown setting in {conf}; did you mean 'proxy_listen'?"
    )
    assert info.value.key == "proxy_listn"


def test_unknown_key_without_suggestion() -> None:
    assert errors(zzzzzz="1") == ["zzzzzz: unknown setting on the command line"]


def test_unknown_environment_variable_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"GATEWAY_CLUSTER_CERT_KY": "x", "OTHER": "ignored"})
    assert str(info.value) == (
        "GATEWAY_CLUSTER_CERT_KY: unknown setting in the environment; "
        "did you mean GATEWAY_CLUSTER_CERT_KEY?"
    )
    # Keys are upper case in the environment.
    with pytest.raises(ConfigError, match="GATEWAY_log_level: unknown setting"):
        load_settings(env={"GATEWAY_log_level": "info"})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('cluster_max_payload = "big"', "cluster_max_payload: expected an integer, got 'big'"),
        (
            "cluster_max_payload = true",
            "cluster_max_payload: expected an integer, got TOML boolean",
        ),
        ("cluster_max_payload = 1.5", "cluster_max_payload: expected an integer, got TOML float"),
        ("proxy_listen = 8000", "proxy_listen: expected a string or a list of strings"),
        ("pg_ssl = 1", "pg_ssl: expected a boolean (on, off, true, false), got TOML integer"),
        ('pg_ssl = "maybe"', "pg_ssl: invalid boolean 'maybe'; accepted values: on, off"),
        ("role = 3", "role: expected one of: traditional, control_plane, data_plane"),
        (
            'role = "hybrid"',
            "role: invalid value 'hybrid'; accepted values: traditional, control_plane, data_plane",
        ),
        ("cluster_ocsp_timeout = -1", "cluster_ocsp_timeout: must be > 0, got -1"),
        ("cluster_ocsp_timeout = nan", "cluster_ocsp_timeout: expected a finite number"),
        ("log_level = 2024-01-01", "log_level: expected one of: debug"),
        ("[cluster]\nlisten = 1", "cluster: unknown setting"),
        (
            'headers = ["Server", "X-Bogus"]',
            "headers: invalid header 'X-Bogus'; accepted values: off,",
        ),
        ('node_id = "nope"', "node_id: invalid UUID 'nope'"),
        ('worker_processes = "many"', "worker_processes: expected auto or a positive integer"),
        ('client_max_body_size = "10x"', "client_max_body_size: invalid size '10x'"),
        ('trusted_ips = "10.0.0.0/8, nope"', "trusted_ips: invalid IP address or CIDR range"),
    ],
)
def test_toml_type_errors(tmp_path: Path, toml: str, message: str) -> None:
    conf = _write(tmp_path / "g.toml", toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(conf, env={})
    (line,) = [str(e) for e in info.value.errors]
    assert line.startswith(message)
    if not line.startswith("cluster:"):
        assert line.endswith(f"(from {conf})")


def test_native_toml_values(tmp_path: Path) -> None:
    conf = _write(
        tmp_path / "g.toml",
        """
pg_port = 6432
pg_ssl = true
cluster_ocsp_timeout = 2
cluster_sync_coalesce = 0.25
proxy_listen = ["127.0.0.1:0", "127.0.0.1:0 ssl"]
trusted_ips = ["10.0.0.0/8", "::1"]
headers = "off"
client_max_body_size = "10m"
large_client_header_buffers = "8 16k"
worker_processes = 3
node_id = "8a5b9e5c-1f7c-4ea3-a8a4-3c5c2f6a0b11"
""",
    )
    s = load_settings(conf, env={})
    assert s.pg_port == 6432
    assert s.pg_ssl is True
    assert s.cluster_ocsp_timeout == 2.0
    assert s.cluster_sync_coalesce == 0.25
    assert [a.ssl for a in s.proxy_listen] == [False, True]
    assert [str(n) for n in s.trusted_ips] == ["10.0.0.0/8", "::1/128"]
    assert s.headers == ()
    assert s.client_max_body_size == 10 * 1024 * 1024
    assert s.large_client_header_buffers == (8, 16384)
    assert s.worker_processes == 3
    assert s.node_id == uuid.UUID("8a5b9e5c-1f7c-4ea3-a8a4-3c5c2f6a0b11")


def test_booleans_and_headers_case() -> None:
    for text, value in [("on", True), ("OFF", False), ("true", True), ("false", False)]:
        assert load(real_ip_recursive=text).real_ip_recursive is value
    assert load(headers="via, server, x-kong-upstream-status").headers == (
        "Via",
        "Server",
        "X-Kong-Upstream-Status",
    )
    assert errors(headers="off, Via") == [
        "headers: 'off' cannot be combined with header names (from command line)"
    ]


def test_empty_string_unsets_optional_keys(tmp_path: Path) -> None:
    conf = _write(tmp_path / "g.toml", 'pg_password = "secret"\n')
    s = load_settings(conf, env={"GATEWAY_PG_PASSWORD": ""})
    assert s.pg_password is None


def test_bad_toml_file(tmp_path: Path) -> None:
    conf = _write(tmp_path / "g.toml", "role = \n")
    with pytest.raises(ConfigError, match=r"conf: .*g\.toml is not valid TOML") as info:
        load_settings(conf, env={})
    assert info.value.key == "conf"
    with pytest.raises(ConfigError, match=r"conf: cannot read .*missing\.toml"):
        load_settings(tmp_path / "missing.toml", env={})


def test_all_errors_reported_together(tmp_path: Path) -> None:
    conf = _write(tmp_path / "g.toml", 'pg_port = "x"\nlog_levl = "info"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(
            conf,
            env={"GATEWAY_CLUSTER_MAX_PAYLOAD": "1048576"},
            overrides={"role": "control_plane", "database": "off"},
        )
    lines = str(info.value).splitlines()
    assert [e.key for e in info.value.errors] == [
        "log_levl",
        "pg_port",
        "cluster_max_payload",
        "database",
        "cluster_cert",
    ]
    assert len(lines) == 5
    assert info.value.key is None
    assert lines[2] == (
        "cluster_max_payload: must be 4194304 (4MB) or greater, got 1048576 "
        "(from environment variable GATEWAY_CLUSTER_MAX_PAYLOAD)"
    )


def test_rule_errors_skip_keys_that_failed_to_parse() -> None:
    # database did not parse: no second, confusing "in-memory storage" error for it.
    lines = errors(role="data_plane", database="none", cluster_cert="x", cluster_cert_key="y")
    assert [line.split(":")[0] for line in lines] == [
        "database",
        "cluster_cert",
        "cluster_cert_key",
    ]


def test_prefix_relative_paths(tmp_path: Path) -> None:
    s = load(prefix="run", proxy_access_log="access.log", admin_access_log="stdout")
    assert s.prefix == tmp_path / "run"
    assert s.proxy_access_log == tmp_path / "run" / "access.log"
    assert s.admin_access_log == "stdout"
    assert s.sqlite_path == tmp_path / "run" / "gateway.db"
    assert load(sqlite_path="db/x.db").sqlite_path == tmp_path / "db" / "x.db"
    assert load(prefix="/srv/gw", proxy_error_log="/var/log/e.log").proxy_error_log == Path(
        "/var/log/e.log"
    )


def test_settings_is_frozen_and_evolvable() -> None:
    s = load()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.role = "data_plane"  # type: ignore[misc]
    assert attrs.evolve(s, pg_port=1).pg_port == 1
    assert Settings().role == "traditional"


def test_keys_match_settings() -> None:
    assert list(KEYS) == [f.name for f in attrs.fields(Settings)]
    for key in KEYS.values():
        assert key.doc, key.name
        assert key.type, key.name
        assert key.roles, key.name
    assert {k for k, v in KEYS.items() if v.secret} == {
        "pg_password",
        "ssl_cert_key",
        "admin_ssl_cert_key",
        "status_ssl_cert_key",
        "cluster_cert_key",
        "proxy_server",
    }


def test_redacted(cluster_files: ClusterFiles, dp: dict[str, str]) -> None:
    s = load(pg_password="hunter2")
    shown = s.redacted()
    assert shown["pg_password"] == "******"
    assert shown["proxy_listen"] == [
        "0.0.0.0:8000 reuseport backlog=16384",
        "0.0.0.0:8443 ssl http2 reuseport backlog=16384",
    ]
    assert shown["cluster_dp_labels"] == {}
    assert "hunter2" not in repr(shown)

    by_path = load(**dp).redacted()
    assert by_path["cluster_cert_key"] == cluster_files.key  # a path is not a secret
    assert by_path["pg_password"] is None

    inline = load(
        **{**dp, "cluster_cert_key": cluster_files.key_inline},
        cluster_use_proxy="on",
        proxy_server="http://user:p%23ss@proxy.local:3128",
        cluster_dp_labels="region:eu",
    ).redacted()
    assert inline["cluster_cert_key"] == "******"
    assert inline["proxy_server"] == "http://user:******@proxy.local:3128"
    assert inline["cluster_dp_labels"] == {"region": "eu"}
    assert "PRIVATE KEY" not in repr(inline)


def test_command_line_flags(tmp_path: Path) -> None:
    conf = _write(tmp_path / "g.toml", 'pg_user = "file"\nrole = "data_plane"\n')
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    args = parser.parse_args(
        [
            "--conf",
            str(conf),
            "--role",
            "traditional",
            "--prefix",
            "p",
            "--set",
            "pg_user=flag",
            "--set",
            "role=control_plane",
            "--set",
            "headers=Via,Server",
        ]
    )
    s = settings_from_args(args, env={})
    assert s.role == "traditional"  # --role wins over --set role=
    assert s.prefix == tmp_path / "p"
    assert s.pg_user == "flag"
    assert s.headers == ("Via", "Server")

    bad = parser.parse_args(["--set", "pg_user", "--set", "=x"])
    with pytest.raises(ConfigError) as info:
        settings_from_args(bad, env={})
    assert str(info.value).splitlines() == [
        "--set: expected KEY=VALUE, got 'pg_user'",
        "--set: expected KEY=VALUE, got '=x'",
    ]


def test_redacted_key_material_forms(cluster_files: ClusterFiles) -> None:
    from gateway.settings._model import KEYS as keys

    redact = keys["ssl_cert_key"].redact
    assert redact is not None
    assert redact((cluster_files.key, cluster_files.key_inline, "a" * 300)) == (
        cluster_files.key,
        "******",
        "******",
    )
    assert redact(("LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t",)) == ("******",)


def test_settings_hashable() -> None:
    assert hash(load()) == hash(load())


def test_redacted_proxy_server_forms() -> None:
    from gateway.settings._model import KEYS as keys

    redact = keys["proxy_server"].redact
    assert redact is not None
    assert redact("http://proxy:3128") == "http://proxy:3128"
    assert redact("http://user@proxy:3128") == "http://user@proxy:3128"
    assert redact("https://u:p@proxy") == "https://u:******@proxy"
    assert redact("http://[::1") == "******"
    assert redact(None) is None
