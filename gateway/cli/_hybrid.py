"""``python -m gateway hybrid gen_cert``: the shared-mode certificate, as ``kong hybrid``."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import certs

DEFAULT_CERT = "cluster.crt"
DEFAULT_KEY = "cluster.key"

_DESCRIPTION = """\
Hybrid mode (control plane / data plane) utilities.

  gen_cert [CERT KEY] [--days N]
      Generate the certificate/key pair for cluster_mtls = shared: an EC P-384 key
      (PKCS#8 PEM, mode 0600) and a self-signed certificate for CN=kong_clustering
      (mode 0644), valid for N days (default 1095 = 3 years). Without paths they are
      written to ./cluster.crt and ./cluster.key. Existing files are never overwritten.
      Copy both files to every control plane and data plane node and point
      cluster_cert / cluster_cert_key at them.
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "hybrid",
        help="hybrid mode utilities (gen_cert)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=_no_subcommand, hybrid_parser=parser)
    commands = parser.add_subparsers(dest="hybrid_command", metavar="SUBCOMMAND")
    gen = commands.add_parser(
        "gen_cert",
        help="generate the shared-mode cluster certificate and key",
        description="Generate the shared-mode cluster certificate/key pair (see 'hybrid --help').",
    )
    gen.add_argument(
        "paths",
        nargs="*",
        metavar="CERT KEY",
        help=f"output paths for the certificate and the key (default ./{DEFAULT_CERT} "
        f"./{DEFAULT_KEY}); give both or neither",
    )
    gen.add_argument(
        "-d",
        "--days",
        type=int,
        default=certs.DEFAULT_CLUSTER_CERT_DAYS,
        help="validity in days (default: %(default)s)",
    )
    gen.set_defaults(func=run_gen_cert)


def _no_subcommand(args: argparse.Namespace) -> int:
    args.hybrid_parser.print_help(sys.stderr)
    return 2


def run_gen_cert(args: argparse.Namespace) -> int:
    paths: list[str] = args.paths
    if len(paths) not in (0, 2):
        print(
            "gen_cert: both the certificate and the key path must be given, or neither",
            file=sys.stderr,
        )
        return 2
    if args.days < 1:
        print("gen_cert: --days must be at least 1", file=sys.stderr)
        return 2
    cert_path, key_path = (Path(p) for p in (paths or [DEFAULT_CERT, DEFAULT_KEY]))
    for path in (cert_path, key_path):
        if path.exists() or path.is_symlink():
            print(f"gen_cert: {path} already exists. Will not overwrite it.", file=sys.stderr)
            return 1
    cert_pem, key_pem = certs.generate_cluster_certificate(datetime.now(UTC), days=args.days)
    try:
        write_new_file(key_path, key_pem, 0o600)
        try:
            write_new_file(cert_path, cert_pem, 0o644)
        except BaseException:
            key_path.unlink(missing_ok=True)
            raise
    except FileExistsError as exc:
        print(f"gen_cert: {exc.filename} already exists. Will not overwrite it.", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gen_cert: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print(
        "Successfully generated certificate/key pairs, they have been written to: "
        f"'{cert_path}' and '{key_path}'."
    )
    return 0


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never overwrite) with ``mode`` set at creation, and write ``data``.

    The mode is passed to ``open`` so a private key is never readable by others, not even
    for a moment. A public file (mode with read bits for others) gets its mode reapplied
    to undo a restrictive umask.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        if mode & 0o044:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
