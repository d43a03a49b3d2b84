"""Fixtures for the pure certificate tests: fixed validation times, small PKIs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import certs

# Every pure test validates at fixed times derived from this one.
NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def now() -> datetime:
    return NOW


@pytest.fixture(scope="session")
def pki1() -> certs.DevPki:
    """Root -> one intermediate -> CP (cp.example, 10.0.0.5) and two DPs, with OCSP URL."""
    return certs.build_dev_pki(
        NOW,
        intermediates=1,
        cp_names=["cp.example", "10.0.0.5"],
        dp_count=2,
        ocsp_url="http://127.0.0.1:8888/ocsp",
    )
