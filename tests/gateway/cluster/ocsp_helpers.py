"""A real OCSP responder for tests: the ``openssl ocsp`` command serving an index file.

``openssl ocsp -port`` takes only a port number (it binds every interface); clients here
only ever connect to 127.0.0.1. The port is found by binding port 0 and releasing it, and a
start that loses the race is retried.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from certs import IssuedCertificate, build_dev_pki, cert_pem, issue_certificate, key_pem
from certs._generate import DevPki


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def index_line(cert: x509.Certificate, *, revoked_at: datetime | None = None) -> str:
    not_after = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    serial = format(cert.serial_number, "X")
    if len(serial) % 2:
        serial = "0" + serial
    subject = "/" + "/".join(a.rfc4514_string() for a in reversed(list(cert.subject)))
    if revoked_at is None:
        return f"V\t{not_after}\t\t{serial}\tunknown\t{subject}\n"
    when = revoked_at.strftime("%y%m%d%H%M%SZ")
    return f"R\t{not_after}\t{when},keyCompromise\t{serial}\tunknown\t{subject}\n"


def make_pki(port: int, dp_count: int = 3) -> DevPki:
    return build_dev_pki(
        datetime.now(UTC) - timedelta(minutes=1),
        intermediates=1,
        dp_count=dp_count,
        ocsp_url=f"http://127.0.0.1:{port}/",
    )


def write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def unrelated_responder() -> IssuedCertificate:
    now = datetime.now(UTC) - timedelta(minutes=1)
    other_ca = issue_certificate(
        common_name="Unrelated CA",
        issuer=None,
        not_before=now,
        not_after=now + timedelta(days=2),
        ca=True,
    )
    from cryptography.x509.oid import ExtendedKeyUsageOID

    return issue_certificate(
        common_name="Unrelated OCSP responder",
        issuer=other_ca,
        not_before=now,
        not_after=now + timedelta(days=1),
        eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
    )


@contextlib.contextmanager
def openssl_ocsp_responder(
    directory: Path,
    pki: DevPki,
    port: int,
    *,
    revoked: tuple[int, ...] = (),
    signer: IssuedCertificate | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Serve OCSP for ``pki``'s DP certificates; indexes in ``revoked`` are revoked."""
    signer = signer or pki.ocsp_responder
    assert signer is not None
    index = directory / "index.txt"
    now = datetime.now(UTC) - timedelta(minutes=1)
    index.write_text(
        "".join(
            index_line(dp.certificate, revoked_at=now if i in revoked else None)
            for i, dp in enumerate(pki.data_planes)
        )
    )
    ca = write_pem(directory / "issuer.pem", cert_pem(pki.leaf_issuer.certificate))
    rsigner = write_pem(directory / "responder.pem", cert_pem(signer.certificate))
    rkey = write_pem(directory / "responder.key", key_pem(signer.key))
    proc = subprocess.Popen(
        [
            "openssl",
            "ocsp",
            "-index",
            str(index),
            "-port",
            str(port),
            "-rsigner",
            str(rsigner),
            "-rkey",
            str(rkey),
            "-CA",
            str(ca),
            "-nmin",
            "5",
            "-ignore_err",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Wait for its "waiting for OCSP client connections" line. (A connect probe would
        # not do: openssl ocsp serves one connection at a time and stalls on an empty one.)
        deadline = time.monotonic() + 10
        assert proc.stderr is not None
        seen = b""
        while b"waiting for OCSP client connections" not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                raise RuntimeError(f"openssl ocsp did not start: {seen.decode(errors='replace')}")
            ready, _, _ = select.select([proc.stderr], [], [], remaining)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"openssl ocsp exited: {seen.decode(errors='replace')}")
                seen += chunk
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
