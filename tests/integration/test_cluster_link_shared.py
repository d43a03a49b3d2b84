"""Cluster link security, shared mode: real CP and DP processes, certificates by openssl.

One control plane process (``cluster_mtls = shared``) serves the whole module: a data plane
with the cluster's certificate joins it, and every refusal case runs against it afterwards,
so the same process also shows that it keeps serving. Each refusal case checks the log line
of the refusing side and that the refused peer got no further than TLS: the control plane
logged nothing else about its address, and ``/clustering/data-planes`` has no row for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cluster_link_support import (
    HAVE_CURL,
    HAVE_OPENSSL,
    REJECTED,
    Issued,
    OpenSSLPki,
    assert_refused_before_sync,
    cluster_port,
    control_plane_settings,
    curl_http,
    data_plane_ids,
    data_plane_settings,
    log_mark,
    node_log,
    openssl_s_client,
    plain_tcp_client,
    process_group,
    rejections,
    tls_client,
    wait_for_connected_data_plane,
    wait_for_log,
)
from cryptography import x509
from helpers import GatewayProcess, ProcessGroup

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_OPENSSL, reason="needs the openssl command line"),
]


@dataclass
class SharedCluster:
    pki: OpenSSLPki
    cert: Issued  # this cluster's shared pair
    foreign: Issued  # another cluster's shared pair (same CN, kong_clustering)
    cp: GatewayProcess
    dp: GatewayProcess  # a data plane with the right certificate, connected
    log_at_join: str  # the CP's log once that data plane had joined


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedCluster]:
    base = tmp_path_factory.mktemp("shared")
    pki = OpenSSLPki(base)
    cert = pki.shared_cluster_cert("cluster")
    foreign = pki.shared_cluster_cert("other-cluster")
    with process_group(base) as nodes:
        cp = nodes.node("cp", control_plane_settings(cert, mode="shared"))
        dp = nodes.node("dp", data_plane_settings(cert, cp, mode="shared"))
        wait_for_connected_data_plane(cp, dp.node_id)
        yield SharedCluster(pki, cert, foreign, cp, dp, node_log(cp))


def _only_the_good_data_plane(shared: SharedCluster) -> None:
    assert data_plane_ids(shared.cp) == {shared.dp.node_id}


def _cluster_port_still_accepts(shared: SharedCluster) -> None:
    """The CP process runs and a client with the cluster certificate gets the websocket
    upgrade answered (the same request every refused client sent, unanswered)."""
    assert shared.cp.alive, node_log(shared.cp)
    outcome = tls_client(
        cluster_port(shared.cp),
        cert=shared.cert.cert,
        key=shared.cert.key,
        server_name="kong_clustering",
    )
    assert outcome.got_upgrade, outcome


# -- the handshake --------------------------------------------------------------------------


def test_shared_mode_data_plane_connects_and_is_listed(shared: SharedCluster) -> None:
    row = wait_for_connected_data_plane(shared.cp, shared.dp.node_id)
    assert row["status"] == "connected"
    assert row["ip"] == "127.0.0.1"
    # The CP reports the DP certificate's notAfter, the one openssl wrote.
    cert = x509.load_pem_x509_certificate(shared.cert.leaf.read_bytes())
    expected = cert.not_valid_after_utc.timestamp()
    assert row["cert_details"]["expiry_timestamp"] == expected
    wait_for_log(shared.dp, rf"connected to control plane 127\.0\.0\.1:{shared.cp.port('cluster')}")
    assert "rejected" not in shared.log_at_join, shared.log_at_join


# -- refusals -------------------------------------------------------------------------------


def test_data_plane_with_another_clusters_certificate_is_refused(
    shared: SharedCluster, processes: ProcessGroup
) -> None:
    """The DP trusts only its own (foreign) certificate, so it refuses the CP's first; the
    CP sees the handshake aborted. Neither side gets as far as the websocket."""
    wait_for_connected_data_plane(shared.cp, shared.dp.node_id)
    mark = log_mark(shared.cp)
    port = cluster_port(shared.cp)
    intruder = processes.node(
        "dp-other-cluster",
        data_plane_settings(shared.foreign, shared.cp, mode="shared"),
    )
    wait_for_log(
        intruder,
        rf"control plane 127\.0\.0\.1:{port} rejected: self-signed certificate that is not "
        r"trusted \(certificate CN=kong_clustering",
    )
    wait_for_log(shared.cp, REJECTED + r"the peer aborted the TLS handshake", since=mark)
    intruder.stop()
    for address, _ in rejections(shared.cp, mark):
        assert_refused_before_sync(shared.cp, address, mark)
    assert "connected to control plane" not in node_log(intruder)
    assert intruder.node_id not in node_log(shared.cp, mark)
    _only_the_good_data_plane(shared)


def test_other_clusters_certificate_refused_by_the_control_plane(shared: SharedCluster) -> None:
    """``openssl s_client`` ignores the CP certificate, so the CP itself must refuse the
    foreign shared certificate (it is not byte-identical to the cluster's)."""
    mark = log_mark(shared.cp)
    run = openssl_s_client(
        cluster_port(shared.cp), cert=shared.foreign, server_name="kong_clustering"
    )
    assert "HTTP/1.1 101" not in run.stdout, run.output
    line = wait_for_log(shared.cp, REJECTED, since=mark)
    assert "certificate CN=kong_clustering" in line, line
    assert re.search(r"not trusted|not the shared cluster certificate", line), line
    ((address, _),) = rejections(shared.cp, mark)
    assert_refused_before_sync(shared.cp, address, mark)
    _only_the_good_data_plane(shared)


def test_tls_client_without_certificate_refused_openssl_s_client(shared: SharedCluster) -> None:
    mark = log_mark(shared.cp)
    run = openssl_s_client(cluster_port(shared.cp), server_name="kong_clustering")
    assert "HTTP/1.1 101" not in run.stdout, run.output
    line = wait_for_log(shared.cp, REJECTED, since=mark)
    assert "peer did not return a certificate" in line, line
    ((address, _),) = rejections(shared.cp, mark)
    assert_refused_before_sync(shared.cp, address, mark)
    _only_the_good_data_plane(shared)


def test_tls_client_without_certificate_refused_python_ssl(shared: SharedCluster) -> None:
    mark = log_mark(shared.cp)
    outcome = tls_client(cluster_port(shared.cp), server_name="kong_clustering")
    # TLS 1.3: the client finishes its handshake and learns of the refusal on its read.
    assert outcome.received == b"", outcome
    assert outcome.error is not None, outcome
    line = wait_for_log(
        shared.cp, rf"data plane {re.escape(outcome.local_address)} rejected: ", since=mark
    )
    assert "peer did not return a certificate" in line, line
    assert_refused_before_sync(shared.cp, outcome.local_address, mark)
    _only_the_good_data_plane(shared)


def test_plain_tcp_client_refused(shared: SharedCluster) -> None:
    mark = log_mark(shared.cp)
    outcome = plain_tcp_client(cluster_port(shared.cp), b"hello control plane\r\n\r\n")
    # Nothing useful back: no bytes at all, or at most a bare TLS alert record.
    assert outcome.received == b"" or outcome.received[:1] == b"\x15", outcome
    assert outcome.error is None or "Reset" in outcome.error, outcome
    line = wait_for_log(
        shared.cp, rf"data plane {re.escape(outcome.local_address)} rejected: ", since=mark
    )
    assert "TLS handshake failed" in line, line
    assert_refused_before_sync(shared.cp, outcome.local_address, mark)
    _only_the_good_data_plane(shared)
    _cluster_port_still_accepts(shared)


@pytest.mark.skipif(not HAVE_CURL, reason="needs curl")
def test_plain_http_client_refused(shared: SharedCluster) -> None:
    mark = log_mark(shared.cp)
    run, address = curl_http(cluster_port(shared.cp))
    assert run.returncode in (52, 56), run.output  # empty reply / connection reset
    assert "HTTP/" not in run.stdout, run.output
    assert address, run.output
    line = wait_for_log(shared.cp, rf"data plane {re.escape(address)} rejected: ", since=mark)
    assert "TLS handshake failed" in line, line
    assert "http request" in line, line  # OpenSSL recognised a plain HTTP request
    assert_refused_before_sync(shared.cp, address, mark)
    _only_the_good_data_plane(shared)
    _cluster_port_still_accepts(shared)


def test_control_plane_keeps_serving_after_the_refusals(shared: SharedCluster) -> None:
    """After everything above, the same CP process still runs, its data plane is still
    connected, and a client with the cluster certificate reaches the websocket upgrade."""
    row = wait_for_connected_data_plane(shared.cp, shared.dp.node_id)
    assert row["connected"] is True
    _cluster_port_still_accepts(shared)
    log = node_log(shared.cp)
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    _only_the_good_data_plane(shared)
