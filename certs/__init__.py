"""Pure certificate policy and tooling for the cluster link.

Loading PEM material, the shared and PKI verification rules, OCSP request building and
response checking, and certificate generation. No sockets, no clocks: validation times
are arguments.
"""

from certs._checks import (
    check_ca_root,
    check_validity,
    describe,
    expires_within,
    fingerprint_sha256,
)
from certs._errors import CertificateError, VerificationError
from certs._generate import (
    CLUSTER_COMMON_NAME,
    DEFAULT_CLUSTER_CERT_DAYS,
    DevPki,
    IssuedCertificate,
    KeyType,
    build_dev_pki,
    cert_pem,
    generate_cluster_certificate,
    issue_certificate,
    key_pem,
    new_private_key,
)
from certs._load import PrivateKey, check_key_matches, load_certificates, load_private_key
from certs._ocsp import (
    OcspStatus,
    OcspVerdict,
    build_ocsp_request,
    check_ocsp_response,
    ocsp_responder_url,
)
from certs._policy import PkiPolicy, SharedModePolicy, VerifiedPeer, match_server_name

__all__ = [
    "CLUSTER_COMMON_NAME",
    "DEFAULT_CLUSTER_CERT_DAYS",
    "CertificateError",
    "DevPki",
    "IssuedCertificate",
    "KeyType",
    "OcspStatus",
    "OcspVerdict",
    "PkiPolicy",
    "PrivateKey",
    "SharedModePolicy",
    "VerificationError",
    "VerifiedPeer",
    "build_dev_pki",
    "build_ocsp_request",
    "cert_pem",
    "check_ca_root",
    "check_key_matches",
    "check_ocsp_response",
    "check_validity",
    "describe",
    "expires_within",
    "fingerprint_sha256",
    "generate_cluster_certificate",
    "issue_certificate",
    "key_pem",
    "load_certificates",
    "load_private_key",
    "match_server_name",
    "new_private_key",
    "ocsp_responder_url",
]
