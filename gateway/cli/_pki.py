"""``python -m gateway pki DIR``: a development PKI for cluster_mtls = pki.

For development and tests only: the CA keys end up on the same disk as everything else.
Production PKIs come from your own CA (see docs/how-to/certificates.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import certs
from gateway.cli._hybrid import write_new_file

_DESCRIPTION = """\
Write a DEVELOPMENT PKI for cluster_mtls = pki into DIR (created if missing):

  ca.crt / ca.key                 root CA (cluster_ca_cert on every node)
  intermediate-N.crt / .key       intermediate CAs (--intermediates, 0 to 3)
  cp.crt / cp.key                 control plane: EKU serverAuth, SANs from --cp-name
  dp-N.crt / dp-N.key             data planes: EKU clientAuth (+ AIA OCSP with --ocsp-url)
  ocsp-responder.crt / .key       delegated OCSP signer (only with --ocsp-url)

Leaf .crt files hold the leaf followed by its intermediates, ready for cluster_cert.
Keys are written with mode 0600. Existing files are never overwritten.
Not for production: keep real CA keys offline.
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "pki",
        help="write a development PKI (root, intermediates, CP and DP certificates)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", metavar="DIR", help="output directory")
    parser.add_argument(
        "--intermediates", type=int, default=0, help="intermediate CAs (0-3, default 0)"
    )
    parser.add_argument(
        "--data-planes", type=int, default=1, help="data plane certificates (default 1)"
    )
    parser.add_argument(
        "--cp-name",
        action="append",
        dest="cp_names",
        metavar="NAME",
        help="control plane host name or IP for the SAN (repeatable; default localhost "
        "and 127.0.0.1); DPs must dial one of them (cluster_server_name)",
    )
    parser.add_argument("--ocsp-url", help="OCSP responder URL to put in DP certificates")
    parser.add_argument("--days", type=int, default=365, help="leaf validity (default 365)")
    parser.set_defaults(func=run_pki)


def run_pki(args: argparse.Namespace) -> int:
    if not 0 <= args.intermediates <= 3:
        print("pki: --intermediates must be between 0 and 3", file=sys.stderr)
        return 2
    if args.data_planes < 0 or args.days < 1:
        print("pki: --data-planes must be >= 0 and --days >= 1", file=sys.stderr)
        return 2
    directory = Path(args.directory)
    cp_names: list[str] = args.cp_names or ["localhost", "127.0.0.1"]
    pki = certs.build_dev_pki(
        datetime.now(UTC),
        intermediates=args.intermediates,
        cp_names=cp_names,
        dp_count=args.data_planes,
        ocsp_url=args.ocsp_url,
        days=args.days,
    )
    files: list[tuple[str, bytes, int]] = [
        ("ca.crt", certs.cert_pem(pki.root.certificate), 0o644),
        ("ca.key", pki.root.key_pem, 0o600),
    ]
    for level, ca in enumerate(pki.intermediates, start=1):
        files.append((f"intermediate-{level}.crt", certs.cert_pem(ca.certificate), 0o644))
        files.append((f"intermediate-{level}.key", ca.key_pem, 0o600))
    files.append(("cp.crt", pki.control_plane.cert_pem, 0o644))
    files.append(("cp.key", pki.control_plane.key_pem, 0o600))
    for index, dp in enumerate(pki.data_planes, start=1):
        files.append((f"dp-{index}.crt", dp.cert_pem, 0o644))
        files.append((f"dp-{index}.key", dp.key_pem, 0o600))
    if pki.ocsp_responder is not None:
        files.append(("ocsp-responder.crt", pki.ocsp_responder.cert_pem, 0o644))
        files.append(("ocsp-responder.key", pki.ocsp_responder.key_pem, 0o600))
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        print(f"pki: cannot create {directory}: {exc.strerror}", file=sys.stderr)
        return 1
    existing = [name for name, _, _ in files if (directory / name).exists()]
    if existing:
        print(
            f"pki: {', '.join(str(directory / n) for n in existing)} already exist(s). "
            "Will not overwrite.",
            file=sys.stderr,
        )
        return 1
    written: list[Path] = []
    try:
        for name, data, mode in files:
            write_new_file(directory / name, data, mode)
            written.append(directory / name)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        print(f"pki: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    d = os.fspath(directory)
    print(f"Development PKI written to {d} (not for production):")
    for name, _, _ in files:
        print(f"  {name}")
    print(
        "Control plane: cluster_mtls = pki, cluster_ca_cert = "
        f"{d}/ca.crt, cluster_cert = {d}/cp.crt, cluster_cert_key = {d}/cp.key\n"
        f"Data plane N:  cluster_mtls = pki, cluster_ca_cert = {d}/ca.crt, "
        f"cluster_cert = {d}/dp-N.crt, cluster_cert_key = {d}/dp-N.key, "
        f"cluster_server_name = {cp_names[0]}"
    )
    return 0
