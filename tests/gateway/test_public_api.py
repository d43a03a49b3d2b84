"""The embedding API is importable from ``gateway`` (lazily, so the CLI stays cheap)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gateway


def test_exports_resolve() -> None:
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None, name
    from gateway.cluster._control_plane import serve_control_plane
    from gateway.cluster._data_plane import serve_data_plane

    assert gateway.serve_control_plane is serve_control_plane
    assert gateway.serve_data_plane is serve_data_plane


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError):
        _ = gateway.no_such_thing  # type: ignore[attr-defined]


def test_import_gateway_does_not_load_the_node() -> None:
    code = "import gateway, sys; print('gateway._node' in sys.modules, 'psycopg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
