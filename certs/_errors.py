from __future__ import annotations


class CertificateError(Exception):
    """Certificate or key material that cannot be used (unreadable, malformed, mismatched)."""


class VerificationError(Exception):
    """A peer certificate (chain) was refused; ``reason`` says why, for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
