"""Settings shared by the whole suite."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Property tests must not flake on a loaded 2-core CI machine: no per-example deadline, and
# under CI a fixed example sequence (a new failure is found locally, then pinned by a test).
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")


def pytest_report_header() -> str:
    from gateway._build import hot_path_build

    return f"proxy hot path: {hot_path_build().describe()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    # an in-place mypyc build shadows the sources: testing it after an edit would test
    # the old code
    from gateway._build import hot_path_build

    build = hot_path_build()
    if build.stale:
        pytest.exit(f"proxy hot path {build.describe()}", returncode=2)
