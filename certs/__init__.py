"""Pure certificate policy and tooling for the cluster link.

Loading PEM material, the shared and PKI verification rules, OCSP request building and
response checking, and certificate generation. No sockets, no clocks: validation times
are arguments.
"""

from certs._errors import CertificateError, VerificationError

__all__ = ["CertificateError", "VerificationError"]
