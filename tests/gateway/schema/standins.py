"""Stand-in plugin classes with Kong-like config schemas, and a registry patch for tests.

The entity tests must not depend on the bundled plugins (another part of the tree): they
register these through ``use_plugins`` instead.
"""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.plugins import Plugin, _registry
from gateway.schema import Array, Boolean, Integer, Number, Record, String


class KeyAuthStandIn(Plugin):
    name: ClassVar[str] = "key-auth"
    version: ClassVar[str] = "3.0.0"
    priority: ClassVar[int] = 1250
    no_consumer: ClassVar[bool] = True
    protocols: ClassVar[tuple[str, ...]] = ("grpc", "grpcs", "http", "https", "ws", "wss")
    config_schema: ClassVar[Record] = Record(
        [
            ("key_names", Array(String(), required=True, default=["apikey"], len_min=1)),
            ("hide_credentials", Boolean(required=True, default=False)),
            ("anonymous", String()),
            ("key_in_header", Boolean(required=True, default=True)),
            ("key_in_query", Boolean(required=True, default=True)),
            ("key_in_body", Boolean(required=True, default=False)),
            ("run_on_preflight", Boolean(required=True, default=True)),
        ],
        required=True,
    )


def _at_least_one_limit(config: dict[str, Any]) -> str | None:
    periods = ("second", "minute", "hour", "day", "month", "year")
    if all(config.get(p) is None for p in periods):
        return "at least one of these fields must be non-empty: " + ", ".join(
            f"'config.{p}'" for p in periods
        )
    return None


class RateLimitingStandIn(Plugin):
    name: ClassVar[str] = "rate-limiting"
    version: ClassVar[str] = "3.0.0"
    priority: ClassVar[int] = 910
    config_schema: ClassVar[Record] = Record(
        [
            *[(p, Number(gt=0)) for p in ("second", "minute", "hour", "day", "month", "year")],
            (
                "limit_by",
                String(
                    one_of=("consumer", "credential", "ip", "service", "header", "path"),
                    default="consumer",
                    required=True,
                ),
            ),
            ("policy", String(one_of=("local", "cluster", "redis"), default="local")),
            ("fault_tolerant", Boolean(required=True, default=True)),
            (
                "redis",
                Record(
                    [
                        ("host", String()),
                        ("port", Integer(between=(0, 65535), default=6379)),
                        ("timeout", Integer(default=2000)),
                    ],
                    required=True,
                ),
            ),
            ("hide_client_headers", Boolean(required=True, default=False)),
        ],
        required=True,
        entity_checks=[_at_least_one_limit],
    )


class CorsStandIn(Plugin):
    name: ClassVar[str] = "cors"
    version: ClassVar[str] = "3.0.0"
    priority: ClassVar[int] = 2000
    no_consumer: ClassVar[bool] = True
    protocols: ClassVar[tuple[str, ...]] = ("http", "https")
    config_schema: ClassVar[Record] = Record(
        [
            ("origins", Array(String())),
            (
                "methods",
                Array(
                    String(one_of=("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS")),
                    default=["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"],
                ),
            ),
            ("headers", Array(String())),
            ("exposed_headers", Array(String())),
            ("credentials", Boolean(required=True, default=False)),
            ("max_age", Number()),
            ("preflight_continue", Boolean(required=True, default=False)),
        ],
        required=True,
    )


class RouteOnlyStandIn(Plugin):
    name: ClassVar[str] = "route-only"
    version: ClassVar[str] = "1.0.0"
    priority: ClassVar[int] = 1
    no_service: ClassVar[bool] = True
    no_consumer: ClassVar[bool] = True
    config_schema: ClassVar[Record] = Record([("flag", Boolean(default=False))], required=True)


STANDINS: tuple[type[Plugin], ...] = (
    KeyAuthStandIn,
    RateLimitingStandIn,
    CorsStandIn,
    RouteOnlyStandIn,
)


def use_plugins(monkeypatch: pytest.MonkeyPatch, *classes: type[Plugin]) -> None:
    """Make exactly ``classes`` (default: the stand-ins) the available plugins."""
    chosen = {cls.name: cls for cls in (classes or STANDINS)}
    monkeypatch.setattr(_registry, "available_plugins", lambda: dict(chosen))


# -- certificates ----------------------------------------------------------------------------


class Pem:
    """PEM strings for certificate tests (generated once per session)."""

    def __init__(self) -> None:
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.ec_key2 = ec.generate_private_key(ec.SECP256R1())
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_cert = _cert(self.ec_key, "example.com", ca=False)
        self.rsa_cert = _cert(self.rsa_key, "example.com", ca=False)
        self.ca_cert = _cert(self.ec_key2, "Test CA", ca=True)
        self.expired_ca = _cert(self.ec_key2, "Old CA", ca=True, days=-1)

    @staticmethod
    def key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()


def _cert(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str, *, ca: bool, days: int = 365
) -> str:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()
