"""Helpers for the cluster-link security tests: openssl-made certificates, real node
processes, and scripted clients that poke the cluster port.

Certificates come from the ``openssl`` command line only (``req`` for roots and requests,
``ca`` to sign with explicit validity dates, so that an expired certificate is a certificate
whose whole validity lies in the past). ``helpers.make_openssl_pki`` makes one fixed chain;
these cases need 0 to 4 intermediates, other EKUs and expired leaves, hence
:class:`OpenSSLPki`. Control and data planes are ``helpers.GatewayProcess`` processes
(``python -m gateway start``, ports 0, output in ``<name>.log``); the functions here read
their logs from a byte offset, so that a case sees only the lines it caused. Every wait
polls with a deadline (``helpers.poll``).

The scripted clients never verify the control plane: they play a data plane that wants to
get in, and report what the control plane gave them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from helpers import GatewayProcess, ProcessGroup, dump_logs_on_failure, http, poll

from protocol.sync import SUBPROTOCOL, WEBSOCKET_PATH

HOST = "127.0.0.1"
#: Deadline for a node to start, a log line to appear, a row to show up.
DEADLINE = 20.0
#: Deadline for one scripted client exchange.
CLIENT_DEADLINE = 10.0

HAVE_OPENSSL = shutil.which("openssl") is not None
HAVE_CURL = shutil.which("curl") is not None


# -- certificates with the openssl command line ---------------------------------------------

ROOT_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[v3_root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""
# No pathlen: the same extension serves chains of one to four intermediates.
CA_EXT = """\
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""
LEAF_EXT = """\
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""
# ``openssl ca`` with a throwaway database per signature: only the dates matter to us.
CA_CNF = """\
[ca]
default_ca = signer
[signer]
database = {db}/index.txt
new_certs_dir = {db}
serial = {db}/serial
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = supplied
"""


def openssl(cwd: Path, *args: str, stdin: bytes | None = None) -> str:
    """Run ``openssl args`` in ``cwd``; raise with its stderr when it fails."""
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, input=stdin, capture_output=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr.decode()}")
    return done.stdout.decode()


def _openssl_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


@dataclass(frozen=True)
class Issued:
    """One certificate made by openssl, and the files a node needs.

    ``leaf`` holds only this certificate; ``cert`` holds it followed by its intermediates
    (nearest first): what ``cluster_cert`` must contain. ``intermediates`` lists the
    intermediate CA certificate files above it (empty for a root or a root's child).
    """

    name: str
    leaf: Path
    cert: Path
    key: Path
    intermediates: tuple[Path, ...] = ()
    is_root: bool = False

    @property
    def chain_file(self) -> Path | None:
        """The intermediates alone in one file (for ``openssl s_client -cert_chain``)."""
        if not self.intermediates:
            return None
        path = self.leaf.with_name(f"{self.name}-intermediates.crt")
        if not path.exists():
            path.write_text("".join(p.read_text() for p in self.intermediates))
        return path


@dataclass
class OpenSSLPki:
    """A directory in which ``openssl`` makes roots, intermediate CAs and leaves."""

    directory: Path
    _serial: int = field(default=0x1000)

    def _run(self, *args: str) -> str:
        return openssl(self.directory, *args)

    def _new_key_and_request(self, name: str, subject: str, curve: str) -> Path:
        csr = self.directory / f"{name}.csr"
        self._run("req", "-new", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{curve}",
                  "-nodes", "-keyout", f"{name}.key", "-out", csr.name,
                  "-subj", subject)  # fmt: skip
        os.chmod(self.directory / f"{name}.key", 0o600)
        return csr

    def root(self, name: str, cn: str, *, days: int = 365) -> Issued:
        """A self-signed root CA (``openssl req -x509``, as the how-to guide does)."""
        cnf = self.directory / f"{name}.cnf"
        cnf.write_text(ROOT_CNF.format(cn=cn))
        self._run("req", "-x509", "-config", cnf.name, "-extensions", "v3_root",
                  "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", f"{name}.key", "-out", f"{name}.crt",
                  "-days", str(days))  # fmt: skip
        os.chmod(self.directory / f"{name}.key", 0o600)
        crt = self.directory / f"{name}.crt"
        key = self.directory / f"{name}.key"
        return Issued(name=name, leaf=crt, cert=crt, key=key, is_root=True)

    def issue(
        self,
        name: str,
        subject: str,
        issuer: Issued,
        extensions: str,
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        curve: str = "P-256",
    ) -> Issued:
        """Sign a new key's request with ``issuer`` (``openssl ca``, explicit dates)."""
        now = datetime.now(UTC)
        start = not_before or now - timedelta(minutes=5)
        end = not_after or now + timedelta(days=90)
        csr = self._new_key_and_request(name, subject, curve)
        ext = self.directory / f"{name}.ext"
        ext.write_text(extensions)
        db = self.directory / f"{name}.db"
        db.mkdir()
        (db / "index.txt").write_text("")
        self._serial += 1
        (db / "serial").write_text(f"{self._serial:X}\n")
        cnf = self.directory / f"{name}-ca.cnf"
        cnf.write_text(CA_CNF.format(db=db))
        self._run("ca", "-batch", "-notext", "-config", cnf.name,
                  "-cert", str(issuer.leaf), "-keyfile", str(issuer.key),
                  "-in", csr.name, "-out", f"{name}.crt", "-extfile", ext.name,
                  "-startdate", _openssl_time(start), "-enddate", _openssl_time(end))  # fmt: skip
        leaf = self.directory / f"{name}.crt"
        # Roots are not sent; an intermediate issuer is, followed by its own issuers.
        intermediates = () if issuer.is_root else (issuer.leaf, *issuer.intermediates)
        cert = leaf
        if intermediates:
            cert = self.directory / f"{name}-chain.crt"
            cert.write_text("".join(p.read_text() for p in (leaf, *intermediates)))
        return Issued(
            name=name,
            leaf=leaf,
            cert=cert,
            key=self.directory / f"{name}.key",
            intermediates=intermediates,
        )

    def intermediates(self, prefix: str, root: Issued, count: int) -> Issued:
        """``count`` intermediate CAs below ``root``; the lowest one (or ``root`` for 0)."""
        issuer = root
        for level in range(1, count + 1):
            issuer = self.issue(
                f"{prefix}-int{level}", f"/CN={prefix} Intermediate CA {level}", issuer, CA_EXT
            )
        return issuer

    def control_plane(
        self, name: str, issuer: Issued, *, eku: str | None = "serverAuth", san: str | None = None
    ) -> Issued:
        """A CP leaf (SAN ``DNS:cp.test,IP:127.0.0.1`` unless ``san`` says otherwise)."""
        ext = LEAF_EXT
        if eku is not None:
            ext += f"extendedKeyUsage = {eku}\n"
        ext += f"subjectAltName = {san or 'DNS:cp.test,IP:127.0.0.1'}\n"
        return self.issue(name, "/CN=cp.test", issuer, ext)

    def data_plane(
        self,
        name: str,
        issuer: Issued,
        *,
        eku: str | None = "clientAuth",
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> Issued:
        ext = LEAF_EXT + (f"extendedKeyUsage = {eku}\n" if eku is not None else "")
        return self.issue(
            name, f"/CN={name}", issuer, ext, not_before=not_before, not_after=not_after
        )

    def shared_cluster_cert(self, name: str) -> Issued:
        """A shared-mode pair as Kong's docs make it by hand: self-signed, CN=kong_clustering."""
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1",
                  "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
                  "-subj", "/CN=kong_clustering", "-days", "1095")  # fmt: skip
        os.chmod(self.directory / f"{name}.key", 0o600)
        crt = self.directory / f"{name}.crt"
        return Issued(name=name, leaf=crt, cert=crt, key=self.directory / f"{name}.key")


# -- node processes (helpers.GatewayProcess) and their logs --------------------------------


def log_mark(node: GatewayProcess) -> int:
    """The current end of the node's log: pass it as ``since`` to see only what follows."""
    try:
        return node.log_path.stat().st_size
    except FileNotFoundError:
        return 0


def node_log(node: GatewayProcess, since: int = 0) -> str:
    """The node's output (its log lines go to stderr) after byte offset ``since``,
    without the ``---- start <command>`` lines ``helpers`` writes."""
    try:
        raw = node.log_path.read_bytes()[since:]
    except FileNotFoundError:
        return ""
    lines = raw.decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("---- start "))


def wait_for_log(
    node: GatewayProcess, pattern: str, *, since: int = 0, timeout: float = DEADLINE
) -> str:
    """The first log line of ``node`` (after ``since``) matching the regex ``pattern``."""
    regex = re.compile(pattern)

    def probe() -> str | None:
        for line in node_log(node, since).splitlines():
            if regex.search(line):
                return line
        if not node.alive:
            raise AssertionError(f"{node.name} exited before logging {pattern!r}")
        return None

    try:
        return poll(probe, timeout=timeout, message=f"{node.name} logs {pattern!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- {node.name} log:\n{node_log(node)}") from None


def lines_about(node: GatewayProcess, address: str, since: int = 0) -> list[str]:
    """Log lines naming the peer ``address`` (``127.0.0.1:port``), exactly."""
    regex = re.compile(re.escape(address) + r"(?!\d)")
    return [line for line in node_log(node, since).splitlines() if regex.search(line)]


def wait_for_exit(node: GatewayProcess, timeout: float = DEADLINE) -> int:
    """The exit code of a node expected to stop by itself."""
    assert node.proc is not None
    proc = node.proc

    def exited() -> tuple[int] | None:
        code = proc.poll()
        return None if code is None else (code,)

    return poll(exited, timeout=timeout, message=f"{node.name} exits")[0]


def cluster_port(node: GatewayProcess) -> int:
    return node.port("cluster")


def control_plane_settings(
    issued: Issued, *, mode: str, ca: Issued | None = None
) -> dict[str, str]:
    settings = {
        "role": "control_plane",
        "cluster_mtls": mode,
        "cluster_cert": str(issued.cert),
        "cluster_cert_key": str(issued.key),
        "cluster_listen": f"{HOST}:0",
        "cluster_telemetry_listen": "off",
        "admin_listen": f"{HOST}:0",
        "status_listen": "off",
    }
    if ca is not None:
        settings["cluster_ca_cert"] = str(ca.cert)
    return settings


def data_plane_settings(
    issued: Issued,
    control_plane: GatewayProcess,
    *,
    mode: str,
    ca: Issued | None = None,
    server_name: str | None = None,
) -> dict[str, str]:
    cluster = f"{HOST}:{cluster_port(control_plane)}"
    settings = {
        "role": "data_plane",
        "database": "off",
        "cluster_mtls": mode,
        "cluster_cert": str(issued.cert),
        "cluster_cert_key": str(issued.key),
        "cluster_control_plane": cluster,
        "cluster_telemetry_endpoint": cluster,
        "proxy_listen": f"{HOST}:0",
        "status_listen": "off",
        "worker_processes": "1",
        # Retry quickly, so that a refused data plane logs its refusal again soon.
        "cluster_reconnect_backoff_min": "0.2",
        "cluster_reconnect_backoff_max": "1",
    }
    if ca is not None:
        settings["cluster_ca_cert"] = str(ca.cert)
    if server_name is not None:
        settings["cluster_server_name"] = server_name
    return settings


@contextlib.contextmanager
def process_group(base: Path) -> Iterator[ProcessGroup]:
    """A module-scoped ``helpers.ProcessGroup``: stopped on exit, logs shown on failure."""
    group = ProcessGroup(base)
    try:
        with dump_logs_on_failure(group):
            yield group
    finally:
        group.stop_all()


# -- the control plane's Admin API ----------------------------------------------------------


def data_planes(control_plane: GatewayProcess) -> list[dict[str, Any]]:
    """The rows of ``GET /clustering/data-planes`` (every page)."""
    rows: list[dict[str, Any]] = []
    path: str | None = "/clustering/data-planes"
    while path is not None:
        result = http("GET", control_plane.url("admin", path), timeout=CLIENT_DEADLINE)
        assert result.status == 200, result
        page = result.json()
        rows.extend(page["data"])
        path = page.get("next") or None
    return rows


def wait_for_connected_data_plane(control_plane: GatewayProcess, node_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        for row in data_planes(control_plane):
            if row.get("id") == node_id and row.get("connected") is True:
                return row
        return None

    try:
        return poll(probe, timeout=DEADLINE, message=f"data plane {node_id} connected")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- control plane log:\n{node_log(control_plane)}") from None


def data_plane_ids(control_plane: GatewayProcess) -> set[str]:
    return {str(row["id"]) for row in data_planes(control_plane)}


# -- scripted clients -----------------------------------------------------------------------


def websocket_upgrade(host: str = "cp.test") -> bytes:
    """The request a data plane sends first once TLS is up (the sync protocol's door)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {WEBSOCKET_PATH} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    ).encode()


@dataclass(frozen=True)
class ClientOutcome:
    """What a scripted client saw: its own address, the bytes it got, how it ended."""

    local_address: str
    handshake_completed: bool
    received: bytes
    error: str | None

    @property
    def got_upgrade(self) -> bool:
        return self.received.startswith(b"HTTP/1.1 101")


def _address(sockname: tuple[str, int]) -> str:
    return f"{sockname[0]}:{sockname[1]}"


def _read_until_closed(
    sock: socket.socket | ssl.SSLSocket, deadline: float
) -> tuple[bytes, str | None]:
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return received, "timed out waiting for the server to close"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except (OSError, ssl.SSLError) as exc:
            return received, f"{type(exc).__name__}: {exc}"
        if not chunk:
            return received, None
        received += chunk
        if b"\r\n\r\n" in received and received.startswith(b"HTTP/"):
            return received, None  # a response head: enough to judge


def tls_client(
    port: int,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    server_name: str = "cp.test",
    request: bytes | None = None,
) -> ClientOutcome:
    """Python ``ssl`` as a would-be data plane: handshake, send the websocket upgrade,
    read until the control plane closes. The server certificate is not checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(cert, key)
    deadline = time.monotonic() + CLIENT_DEADLINE
    raw = socket.create_connection((HOST, port), timeout=CLIENT_DEADLINE)
    local = _address(raw.getsockname())
    try:
        sock = context.wrap_socket(raw, server_hostname=server_name, do_handshake_on_connect=False)
    except BaseException:
        raw.close()
        raise
    with sock:
        try:
            sock.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            return ClientOutcome(local, False, b"", f"{type(exc).__name__}: {exc}")
        try:
            sock.sendall(request if request is not None else websocket_upgrade(server_name))
        except (OSError, ssl.SSLError) as exc:
            return ClientOutcome(local, True, b"", f"{type(exc).__name__}: {exc}")
        received, error = _read_until_closed(sock, deadline)
        return ClientOutcome(local, True, received, error)


def plain_tcp_client(port: int, payload: bytes) -> ClientOutcome:
    """A TCP client that sends ``payload`` in clear and reads until the server closes."""
    deadline = time.monotonic() + CLIENT_DEADLINE
    with socket.create_connection((HOST, port), timeout=CLIENT_DEADLINE) as sock:
        local = _address(sock.getsockname())
        try:
            sock.sendall(payload)
        except OSError as exc:
            return ClientOutcome(local, False, b"", f"{type(exc).__name__}: {exc}")
        received, error = _read_until_closed(sock, deadline)
        return ClientOutcome(local, False, received, error)


@dataclass(frozen=True)
class ToolRun:
    """A command-line client's exit status and output."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _run_tool(command: Sequence[str], stdin: bytes = b"") -> ToolRun:
    done = subprocess.run(
        command, input=stdin, capture_output=True, timeout=CLIENT_DEADLINE + 5, check=False
    )
    return ToolRun(
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def openssl_s_client(
    port: int,
    *,
    cert: Issued | None = None,
    server_name: str = "cp.test",
    request: bytes | None = None,
) -> ToolRun:
    """``openssl s_client`` as a would-be data plane: sends the websocket upgrade and, with
    ``-ign_eof``, keeps reading until the control plane closes the connection."""
    command = ["openssl", "s_client", "-connect", f"{HOST}:{port}",
               "-servername", server_name, "-ign_eof"]  # fmt: skip
    if cert is not None:
        command += ["-cert", str(cert.leaf), "-key", str(cert.key)]
        if cert.chain_file is not None:
            command += ["-cert_chain", str(cert.chain_file)]
    return _run_tool(command, request if request is not None else websocket_upgrade(server_name))


def curl_http(port: int) -> tuple[ToolRun, str]:
    """``curl http://127.0.0.1:port/<sync path>``; also the client address curl used."""
    run = _run_tool(["curl", "-sS", "--max-time", str(int(CLIENT_DEADLINE)),
                     "-w", "\nlocal=%{local_ip}:%{local_port}\n",
                     f"http://{HOST}:{port}{WEBSOCKET_PATH}"])  # fmt: skip
    found = re.search(r"local=([\d.]+:\d+)", run.stdout)
    return run, found.group(1) if found else ""


# -- assertions shared by the refusal cases -------------------------------------------------

#: The control plane's refusal line; group 1 is the peer address.
REJECTED = r"data plane (127\.0\.0\.1:\d+) rejected: "


def rejections(control_plane: GatewayProcess, since: int) -> list[tuple[str, str]]:
    """``(address, reason)`` of each refusal the control plane logged after ``since``."""
    return [
        (m.group(1), line[m.end() :])
        for line in node_log(control_plane, since).splitlines()
        if (m := re.search(REJECTED, line))
    ]


def assert_refused_before_sync(control_plane: GatewayProcess, address: str, since: int) -> None:
    """The control plane logged nothing about ``address`` but its refusal (no websocket,
    no session, no hello), and is still running."""
    about = lines_about(control_plane, address, since)
    assert len(about) == 1, about
    assert " rejected: " in about[0], about
    assert control_plane.alive, node_log(control_plane)
