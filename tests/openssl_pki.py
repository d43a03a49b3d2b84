"""Certificates made by the ``openssl`` command line, as an operator makes them.

Shared by the certificate interop tests and the integration tests of the cluster link in
PKI mode: a root CA (``make_root``), then certificates it or an intermediate signs
(``issue``), each with the extensions given as an ``openssl x509 -extfile`` text. Every key
is EC P-256 and every certificate is valid for 30 days.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["CA_EXT", "issue", "leaf_ext", "make_root", "openssl"]

_ROOT_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
{subject}
[v3_root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""

# an intermediate CA that may only sign leaves
CA_EXT = """\
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


def leaf_ext(key_usage: str = "digitalSignature", extra: str = "") -> str:
    """The extensions of an end-entity certificate; ``extra``: more lines (EKU, SANs)."""
    return (
        "basicConstraints = CA:FALSE\n"
        f"keyUsage = critical,{key_usage}\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid:always\n"
    ) + extra


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_root(cwd: Path, subject_lines: str) -> None:
    """``root.key`` / ``root.crt`` in ``cwd``; ``subject_lines``: the ``[dn]`` section
    (``CN = ...``, one attribute a line)."""
    (cwd / "root.cnf").write_text(_ROOT_CNF.format(subject=subject_lines))
    openssl(cwd, "req", "-x509", "-config", "root.cnf", "-extensions", "v3_root",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "root.key", "-out", "root.crt", "-days", "30")  # fmt: skip


def issue(cwd: Path, name: str, subject: str, issuer: str, ext: str) -> None:
    """``{name}.key`` / ``{name}.crt`` signed by ``{issuer}.key`` (``subject``: ``/CN=...``)."""
    (cwd / f"{name}.ext").write_text(ext)
    openssl(cwd, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", subject)  # fmt: skip
    openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.crt",
            "-CAkey", f"{issuer}.key", "-CAcreateserial", "-days", "30",
            "-out", f"{name}.crt", "-extfile", f"{name}.ext")  # fmt: skip
