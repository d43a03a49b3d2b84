"""Fixtures for the TLS adapter and cluster-link tests."""

from __future__ import annotations

import pytest
from tls_helpers import NOW

import certs


@pytest.fixture(scope="session")
def pki() -> certs.DevPki:
    return certs.build_dev_pki(NOW, intermediates=1, cp_names=["cp.test", "127.0.0.1"], dp_count=2)
