"""Helpers shared by the settings tests."""

from __future__ import annotations

import attrs
import pytest

from gateway import ConfigError
from gateway.settings import Settings, load_settings


@attrs.frozen(kw_only=True)
class ClusterFiles:
    cert: str  # shared-mode certificate (path)
    key: str
    pki_ca: str  # PKI root (path)
    pki_cert: str  # DP leaf issued by pki_ca (path)
    pki_key: str
    cert_base64: str
    key_inline: str  # the shared key as inline PEM
    other_key: str  # a key that does not match ``cert`` (path)


def load(**overrides: str) -> Settings:
    return load_settings(env={}, overrides=overrides)


def errors(**overrides: str) -> list[str]:
    """The error lines of loading ``overrides`` (fails the test if they load)."""
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, overrides=overrides)
    return [str(e) for e in info.value.errors]
