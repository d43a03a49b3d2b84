"""Start-up rules: kong-behaviour.md 11.2 items 15-28, plus our own combinations."""

from __future__ import annotations

from pathlib import Path

import pytest
from settings_helpers import ClusterFiles, errors, load

from gateway.settings import load_settings


def test_valid_hybrid_nodes(cp: dict[str, str], dp: dict[str, str]) -> None:
    assert load(**cp).role == "control_plane"
    assert load(**dp).role == "data_plane"


# -- 15-17: control plane ------------------------------------------------------------------


def test_cp_needs_admin_listen(cp: dict[str, str]) -> None:  # item 15
    assert errors(**cp, admin_listen="off") == [
        'admin_listen must be specified when role = "control_plane"'
    ]


def test_cp_needs_cluster_listen(cp: dict[str, str]) -> None:  # item 16
    assert errors(**cp, cluster_listen="off") == [
        'cluster_listen must be specified when role = "control_plane"'
    ]


def test_cp_needs_a_database(cp: dict[str, str]) -> None:  # item 17
    assert errors(**cp, database="off") == [
        'database: in-memory storage can not be used when role = "control_plane"'
    ]
    assert load(**cp, database="postgres").database == "postgres"


# -- 18: pki needs the CA ----------------------------------------------------------------------


def test_cp_pki_needs_ca(cluster_files: ClusterFiles, cp: dict[str, str]) -> None:
    assert errors(**cp, cluster_mtls="pki") == [
        'cluster_ca_cert must be specified when cluster_mtls = "pki"'
    ]
    s = load(
        role="control_plane",
        cluster_mtls="pki",
        cluster_ca_cert=cluster_files.pki_ca,
        cluster_cert=cluster_files.pki_cert,
        cluster_cert_key=cluster_files.pki_key,
    )
    assert s.cluster_mtls == "pki"


# -- 19-20: data plane ---------------------------------------------------------------------


def test_dp_needs_proxy_listen(dp: dict[str, str]) -> None:  # item 19
    assert errors(**dp, proxy_listen="off") == [
        'proxy_listen must be specified when role = "data_plane"'
    ]


def test_dp_needs_database_off(dp: dict[str, str]) -> None:  # item 20
    for database in ("sqlite", "postgres"):
        assert errors(**dp | {"database": database}) == [
            'database: only in-memory storage can be used when role = "data_plane"; '
            "Hint: set database = off"
        ]


# -- 21, 28: labels ------------------------------------------------------------------------


def test_labels_kong_examples(dp: dict[str, str]) -> None:  # item 21
    lines = errors(**dp, cluster_dp_labels="w@:_a")
    assert lines[0].startswith("cluster_dp_labels: label key validation failed: w@")
    assert lines[1].startswith("cluster_dp_labels: label value validation failed: _a")
    s = load(**dp, cluster_dp_labels="Aa-._zZ_key:Aa-._zZ_val")
    assert dict(s.cluster_dp_labels) == {"Aa-._zZ_key": "Aa-._zZ_val"}


def test_labels_valid_list(dp: dict[str, str]) -> None:  # item 28
    s = load(**dp, cluster_dp_labels="deployment:mycloud,region:us-east-1,a:b:c,x:y")
    assert dict(s.cluster_dp_labels) == {
        "deployment": "mycloud",
        "region": "us-east-1",
        "a": "b:c",
        "x": "y",
    }
    assert (
        len(load(**dp, cluster_dp_labels=",".join(f"k{i}:v" for i in range(10))).cluster_dp_labels)
        == 10
    )


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            ",".join(f"k{i}:v" for i in range(11)),
            "labels validation failed: count exceeded 10 max elements",
        ),
        ("k" * 64 + ":v", "label key validation failed: " + "k" * 64),
        ("k:" + "v" * 64, "label value validation failed: " + "v" * 64),
        ("deployment", "label value validation failed: "),
        (":v", "label key validation failed: "),
        ("key-:v", "label key validation failed: key-"),
        ("k:v.", "label value validation failed: v."),
        ("kong_key:v", "label key validation failed: kong_key"),
        ("KONNECT:v", "label key validation failed: KONNECT"),
        ("Insomnia1:v", "label key validation failed: Insomnia1"),
        ("mesh.x:v", "label key validation failed: mesh.x"),
        ("kic:v", "label key validation failed: kic"),
        ("k:v,k:w", "label key validation failed: k appears twice"),
    ],
)
def test_labels_refused(dp: dict[str, str], labels: str, message: str) -> None:  # item 28
    lines = errors(**dp, cluster_dp_labels=labels)
    assert any(line.startswith(f"cluster_dp_labels: {message}") for line in lines), lines


def test_labels_limits_accepted(dp: dict[str, str]) -> None:
    s = load(**dp, cluster_dp_labels="k" * 63 + ":" + "v" * 63 + ",a:1")
    assert s.cluster_dp_labels["a"] == "1"


def test_labels_toml_table(tmp_path: Path, dp: dict[str, str]) -> None:
    conf = tmp_path / "g.toml"
    conf.write_text('[cluster_dp_labels]\nregion = "eu"\n"Kong-x" = "y"\n', encoding="utf-8")
    with pytest.raises(Exception, match="label key validation failed: Kong-x"):
        load_settings(conf, env={}, overrides=dp)
    conf.write_text('cluster_dp_labels = { region = "eu" }\n', encoding="utf-8")
    assert load_settings(conf, env={}, overrides=dp).cluster_dp_labels == {"region": "eu"}


def test_labels_only_on_data_planes(cp: dict[str, str]) -> None:
    assert errors(**cp, cluster_dp_labels="a:b") == [
        'cluster_dp_labels can only be used when role = "data_plane"'
    ]


# -- 22-23: cluster certificate and key ---------------------------------------------------


@pytest.mark.parametrize("role", ["control_plane", "data_plane"])
def test_hybrid_needs_cert_and_key(cluster_files: ClusterFiles, role: str) -> None:  # item 22
    base = {"role": role, "database": "off" if role == "data_plane" else "sqlite"}
    (line,) = errors(**base)
    assert line == (
        "cluster_cert: cluster certificate and key must be provided to use Hybrid mode "
        "(set cluster_cert and cluster_cert_key)"
    )
    (line,) = errors(**base, cluster_cert=cluster_files.cert)
    assert "cluster certificate and key must be provided to use Hybrid mode" in line
    assert line.startswith("cluster_cert_key:")


def test_traditional_needs_no_cluster_cert() -> None:
    assert load().cluster_cert is None


def test_unloadable_cluster_files(tmp_path: Path) -> None:  # item 23
    missing = str(tmp_path / "nope")
    lines = errors(
        role="control_plane",
        cluster_mtls="pki",
        cluster_cert=missing + ".crt",
        cluster_cert_key=missing + ".key",
        cluster_ca_cert=missing + ".ca",
    )
    assert [line.split(" from ")[0] for line in lines] == [
        "cluster_cert: failed loading certificate",
        "cluster_cert_key: failed loading key",
        "cluster_ca_cert: failed loading certificate",
    ]
    assert lines[0].startswith(f"cluster_cert: failed loading certificate from {missing}.crt")


def test_check_files_off_skips_loading(tmp_path: Path) -> None:
    s = load_settings(
        env={},
        overrides={
            "role": "control_plane",
            "cluster_cert": str(tmp_path / "x.crt"),
            "cluster_cert_key": str(tmp_path / "x.key"),
        },
        check_files=False,
    )
    assert s.cluster_cert == str(tmp_path / "x.crt")


def test_cluster_key_must_match_cert(cluster_files: ClusterFiles, dp: dict[str, str]) -> None:
    (line,) = errors(**dp | {"cluster_cert_key": cluster_files.other_key})
    assert line.startswith("cluster_cert_key: the private key does not match the certificate")


def test_inline_and_base64_material(cluster_files: ClusterFiles, dp: dict[str, str]) -> None:
    s = load(
        **dp
        | {"cluster_cert": cluster_files.cert_base64, "cluster_cert_key": cluster_files.key_inline}
    )
    assert s.cluster_cert == cluster_files.cert_base64


# -- 24: data planes trust the cluster certificate ----------------------------------------


def test_dp_appends_shared_cert_to_trusted(cluster_files: ClusterFiles, dp: dict[str, str]) -> None:
    assert load(**dp).ssl_trusted_certificate == ("system", cluster_files.cert)
    s = load(**dp, ssl_trusted_certificate=cluster_files.pki_ca)
    assert s.ssl_trusted_certificate == (cluster_files.pki_ca, cluster_files.cert)
    based = load(**dp | {"cluster_cert": cluster_files.cert_base64})
    assert based.ssl_trusted_certificate == ("system", cluster_files.cert_base64)


def test_dp_appends_ca_in_pki_mode(cluster_files: ClusterFiles) -> None:
    s = load(
        role="data_plane",
        database="off",
        cluster_mtls="pki",
        cluster_ca_cert=cluster_files.pki_ca,
        cluster_cert=cluster_files.pki_cert,
        cluster_cert_key=cluster_files.pki_key,
    )
    assert s.ssl_trusted_certificate == ("system", cluster_files.pki_ca)


def test_cp_does_not_append(cp: dict[str, str]) -> None:
    assert load(**cp).ssl_trusted_certificate == ("system",)


def test_trusted_certificate_must_load(tmp_path: Path) -> None:
    (line,) = errors(ssl_trusted_certificate=f"system,{tmp_path / 'ca.pem'}")
    assert line.startswith("ssl_trusted_certificate: failed loading certificate from")


# -- 25-26: forward proxy ----------------------------------------------------------------------


def test_cluster_use_proxy_rules(cp: dict[str, str], dp: dict[str, str]) -> None:  # item 25
    assert errors(**dp, cluster_use_proxy="on") == [
        "cluster_use_proxy is turned on but no proxy_server is configured"
    ]
    assert errors(**cp, cluster_use_proxy="on") == [
        'cluster_use_proxy can not be used when role = "control_plane"'
    ]
    s = load(**dp, cluster_use_proxy="on", proxy_server="http://127.0.0.1:3128")
    assert s.cluster_use_proxy is True


def test_cluster_use_proxy_traditional() -> None:
    assert errors(cluster_use_proxy="on", proxy_server="http://p:1") == [
        'cluster_use_proxy can not be used when role = "traditional"'
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("😉.tld", "proxy_server missing scheme"),
        ("cool://vm.com", 'proxy_server only supports "http" and "https", got cool'),
        ("http:///path", "proxy_server missing host"),
        (
            "http://test:konghq#@127.0.0.1:16796",
            "proxy_server: fragments, query strings or parameters are meaningless in proxy "
            "configuration",
        ),
        ("http://h.tld/?a=1", "proxy_server: fragments, query strings or parameters"),
        ("http://h.tld/;p", "proxy_server: fragments, query strings or parameters"),
        ("http://h.tld:port", "proxy_server is invalid: bad port"),
    ],
)
def test_proxy_server_refused(dp: dict[str, str], url: str, message: str) -> None:  # item 26
    (line,) = errors(**dp, proxy_server=url)
    assert line.startswith(message)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:16797",
        "https://localhost:16799",
        "http://test:konghq%23@127.0.0.1:16796",
        "http://😉.tld",
        "http://%F0%9F%98%89.tld",
        "https://proxy.example.com/",
    ],
)
def test_proxy_server_accepted(dp: dict[str, str], url: str) -> None:  # item 26
    assert load(**dp, cluster_use_proxy="on", proxy_server=url).proxy_server == url


# -- 27: limits ------------------------------------------------------------------------------


def test_purge_delay_minimum(cp: dict[str, str]) -> None:
    assert errors(**cp, cluster_data_plane_purge_delay="59") == [
        "cluster_data_plane_purge_delay: must be 60 or greater, got 59 (from command line)"
    ]
    for value in ("60", "100"):
        s = load(**cp, cluster_data_plane_purge_delay=value)
        assert s.cluster_data_plane_purge_delay == int(value)


def test_max_payload_minimum(cp: dict[str, str]) -> None:
    assert errors(**cp, cluster_max_payload="1048576") == [
        "cluster_max_payload: must be 4194304 (4MB) or greater, got 1048576 (from command line)"
    ]
    for value in ("4194304", "8388608"):
        assert load(**cp, cluster_max_payload=value).cluster_max_payload == int(value)


# -- our own combinations -------------------------------------------------------------------


def test_ocsp_needs_pki(cp: dict[str, str]) -> None:
    # NOTE: Kong ignores cluster_ocsp in shared mode; we refuse it.
    assert errors(**cp, cluster_ocsp="on") == [
        'cluster_ocsp = "on" needs cluster_mtls = "pki" (OCSP applies to PKI certificates only)'
    ]


def test_declarative_config_rules(tmp_path: Path) -> None:
    kong_yml = tmp_path / "kong.yml"
    (line,) = errors(declarative_config=str(kong_yml))
    assert line == (
        'declarative_config can only be used when database = "off" (database = "sqlite")'
    )
    (line,) = errors(declarative_config=str(kong_yml), database="off")
    assert line == f"declarative_config: file not found: {kong_yml}"
    kong_yml.write_text('_format_version: "3.0"\n', encoding="utf-8")
    assert load(declarative_config="kong.yml", database="off").declarative_config == kong_yml


def test_ssl_cert_pairs(cluster_files: ClusterFiles, tmp_path: Path) -> None:
    assert errors(ssl_cert=cluster_files.cert) == [
        "ssl_cert_key must be specified when ssl_cert is set"
    ]
    assert errors(admin_ssl_cert_key=cluster_files.key) == [
        "admin_ssl_cert must be specified when admin_ssl_cert_key is set"
    ]
    assert errors(
        status_ssl_cert=f"{cluster_files.cert},{cluster_files.pki_cert}",
        status_ssl_cert_key=cluster_files.key,
    ) == ["status_ssl_cert and status_ssl_cert_key must list the same number of entries (2 != 1)"]
    s = load(
        ssl_cert=f"{cluster_files.cert},{cluster_files.pki_cert}",
        ssl_cert_key=f"{cluster_files.key},{cluster_files.pki_key}",
    )
    assert len(s.ssl_cert) == 2
    lines = errors(ssl_cert=str(tmp_path / "x.crt"), ssl_cert_key=cluster_files.other_key)
    assert lines[0].startswith("ssl_cert: failed loading certificate from")


def test_heartbeat_and_backoff_order() -> None:
    assert errors(cluster_heartbeat_interval="30", cluster_heartbeat_timeout="30") == [
        "cluster_heartbeat_timeout (30) must be greater than cluster_heartbeat_interval (30)"
    ]
    assert errors(cluster_reconnect_backoff_min="10", cluster_reconnect_backoff_max="5") == [
        "cluster_reconnect_backoff_max (5) must be greater than or equal to "
        "cluster_reconnect_backoff_min (10)"
    ]


def test_telemetry_server_name_falls_back(dp: dict[str, str]) -> None:
    s = load(**dp, cluster_server_name="cp.example.com")
    assert s.cluster_telemetry_server_name == "cp.example.com"
    s = load(**dp, cluster_server_name="a", cluster_telemetry_server_name="b")
    assert s.cluster_telemetry_server_name == "b"
