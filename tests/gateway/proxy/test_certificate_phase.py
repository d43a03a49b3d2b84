"""The certificate phase without sockets: which instances run it, and how it is dispatched.

The handshakes themselves are in test_proxy_tls.py.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any, ClassVar

import pytest
from proxy_support import config, plugin, route, service

import gateway.proxy._pipeline as pipeline
from gateway.plugins import Context, Handshake, Plugin, get_plugin
from gateway.proxy import compile_config
from gateway.proxy._tls import run_certificate_phase
from gateway.schema import Record

CALLS: list[str] = []


class Picker(Plugin):
    """Picks ``config["id"]`` (or the certificate of ``config["sni"]``); rejects on demand."""

    name = "test-picker"
    version = "1.0.0"
    priority = 200
    config_schema: ClassVar[Record] = Record([])

    def certificate(self, handshake: Handshake) -> None:
        CALLS.append(f"{self.name}:{self.config.get('tag', '')}")
        if self.config.get("reject"):
            handshake.reject(self.config["reject"])
        if "id" in self.config:
            assert handshake.use_certificate(self.config["id"]) is self.config.get("found", True)
        if "sni" in self.config:
            assert handshake.use_certificate_for(self.config["sni"])


class Late(Picker):
    name = "test-late"
    priority = 100


class Failing(Plugin):
    name = "test-failing"
    version = "1.0.0"
    priority = 150
    config_schema: ClassVar[Record] = Record([])

    def certificate(self, handshake: Handshake) -> None:
        CALLS.append(self.name)
        raise RuntimeError("certificate bug")


class AccessOnly(Plugin):
    name = "test-access-only"
    version = "1.0.0"
    priority = 300
    config_schema: ClassVar[Record] = Record([])

    async def access(self, ctx: Context) -> None:
        pass


TEST_PLUGINS: dict[str, type[Plugin]] = {
    cls.name: cls for cls in (Picker, Late, Failing, AccessOnly)
}


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    CALLS.clear()
    monkeypatch.setattr(
        pipeline, "get_plugin", lambda name: TEST_PLUGINS.get(name) or get_plugin(name)
    )


class Certificates:
    """A stand-in for CertificateStore: placeholder contexts by id and by name."""

    def __init__(self) -> None:
        self.ids = {"one": ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)}
        self.names = {"two.test": ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)}

    def by_id(self, cert_id: str) -> ssl.SSLContext | None:
        return self.ids.get(cert_id)

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        return self.names.get(server_name)


def _table(*plugins: dict[str, Any]) -> pipeline.PluginTable:
    svc = service(1)
    r = route(svc)
    return compile_config(config(services=[svc], routes=[r], plugins=list(plugins))).plugins


def test_only_global_instances_with_the_hook_run_by_priority() -> None:
    svc = service(1)
    r = route(svc)
    consumer = {"id": "c1", "username": "alice", "custom_id": None}
    cfg = config(
        services=[svc],
        routes=[r],
        consumers=[consumer],
        plugins=[
            plugin("test-late", {"tag": "global"}),
            plugin("test-picker", {"tag": "global"}),
            plugin("test-picker", {"tag": "route"}, route=r),
            plugin("test-late", {"tag": "service"}, service=svc),
            plugin("test-failing", consumer=consumer),
            plugin("test-access-only"),
        ],
    )
    table = compile_config(cfg).plugins
    assert [(type(p).name, p.config["tag"]) for p in table.certificate] == [
        ("test-picker", "global"),
        ("test-late", "global"),
    ]


def test_no_certificate_plugins_leave_the_phase_empty() -> None:
    assert _table().certificate == ()
    assert _table(plugin("test-access-only")).certificate == ()
    disabled = plugin("test-picker")
    disabled["enabled"] = False
    assert _table(disabled).certificate == ()


def test_protocols_without_tls_skip_the_phase() -> None:
    http_only = plugin("test-picker")
    http_only["protocols"] = ["http", "grpc"]
    assert _table(http_only).certificate == ()
    grpcs = plugin("test-picker")
    grpcs["protocols"] = ["grpcs"]
    assert len(_table(grpcs).certificate) == 1


def test_the_last_pick_wins() -> None:
    certs = Certificates()
    table = _table(plugin("test-picker", {"id": "one"}), plugin("test-late", {"sni": "two.test"}))
    handshake = Handshake("two.test", ("127.0.0.1", 5000), certs)
    assert run_certificate_phase(table.certificate, handshake) is None
    assert handshake.chosen is certs.names["two.test"]
    assert CALLS == ["test-picker:", "test-late:"]


def test_an_unknown_certificate_changes_nothing() -> None:
    handshake = Handshake("x.test", None, Certificates())
    assert handshake.use_certificate("missing") is False
    assert handshake.use_certificate_for("missing.test") is False
    assert handshake.chosen is None
    assert Handshake(None, None, None).use_certificate("one") is False


def test_a_rejection_stops_the_phase_with_a_logged_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = _table(plugin("test-picker", {"reject": "no such tenant"}), plugin("test-late"))
    handshake = Handshake("evil.test", ("10.0.0.7", 4242), Certificates())
    with caplog.at_level(logging.INFO, logger="gateway.proxy"):
        alert = run_certificate_phase(table.certificate, handshake)
    assert alert == ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
    assert CALLS == ["test-picker:"]
    (record,) = caplog.records
    assert "no such tenant" in record.getMessage()
    assert "'evil.test'" in record.getMessage()
    assert "10.0.0.7:4242" in record.getMessage()


def test_an_exception_aborts_the_handshake_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # as Kong: an error in the certificate phase ends the handshake; the later plugins and
    # any pick made before do not matter
    table = _table(
        plugin("test-picker", {"id": "one"}), plugin("test-failing"), plugin("test-late")
    )
    handshake = Handshake(None, None, Certificates())
    alert = run_certificate_phase(table.certificate, handshake)
    assert alert == ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
    assert CALLS == ["test-picker:", "test-failing"]
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert "test-failing" in record.getMessage()
    assert record.exc_info is not None
