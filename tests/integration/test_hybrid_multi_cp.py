"""Several control planes on one PostgreSQL database, real processes.

A write on any control plane reaches a data plane connected to another one, and a data plane
with several ``cluster_control_plane`` addresses moves to the next when its control plane
dies, keeping its configuration all along.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ProcessGroup, Upstream, http, poll
from test_hybrid_walkthrough import PROPAGATION_DEADLINE

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test", "connect_timeout": 3}


@pytest.fixture
def pg_database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(**PG, autocommit=True)
    except psycopg.Error as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is required when CI=true: {exc}")
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is unreachable: {exc}")
    name = f"gw_hybrid_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_control_planes_one_database(
    pg_database: str,  # first: dropped only after every process stopped
    tmp_path: Path,
    processes: ProcessGroup,
    upstream: Upstream,
    shared_certs: tuple[Path, Path],
) -> None:
    database: dict[str, Any] = {
        "database": "postgres",
        "pg_host": "127.0.0.1",
        "pg_port": 5432,
        "pg_user": "postgres",
        "pg_database": pg_database,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    sets = [a for k, v in database.items() for a in ("--set", f"{k}={v}")]
    subprocess.run(
        [sys.executable, "-m", "gateway", "migrations", "bootstrap", *sets],
        cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    cp_settings = {
        "role": "control_plane",
        "admin_listen": "127.0.0.1:0",
        "cluster_listen": "127.0.0.1:0",
        "cluster_telemetry_listen": "off",
        "cluster_cert": shared_certs[0],
        "cluster_cert_key": shared_certs[1],
        **database,
    }
    cp1 = processes.node("cp1", cp_settings, wait=False)
    cp2 = processes.node("cp2", cp_settings, wait=False)
    cp1.wait_started()
    cp2.wait_started()
    dp = processes.node(
        "dp",
        {
            "role": "data_plane",
            "database": "off",
            "proxy_listen": "127.0.0.1:0",
            "status_listen": "127.0.0.1:0",
            "cluster_control_plane": f"127.0.0.1:{cp1.port('cluster')},"
            f"127.0.0.1:{cp2.port('cluster')}",
            "cluster_cert": shared_certs[0],
            "cluster_cert_key": shared_certs[1],
            "cluster_reconnect_backoff_min": 0.1,
            "cluster_reconnect_backoff_max": 0.5,
        },
    )

    def row(cp_admin: str) -> dict[str, Any] | None:
        rows = http("GET", cp_admin + "/clustering/data-planes").json()["data"]
        return rows[0] if rows and rows[0]["connected"] else None

    # Both control planes show the row (one table); cp1 holds the session.
    assert poll(lambda: row(cp2.url("admin")))["cp_node_id"] == cp1.node_id

    # A write on cp2 reaches the data plane connected to cp1 within the deadline.
    assert (
        http("POST", cp2.url("admin", "/services"), form={"name": "m", "url": upstream.url}).status
        == 201
    )
    started = time.monotonic()
    assert (
        http("POST", cp2.url("admin", "/services/m/routes"), form={"paths[]": "/multi"}).status
        == 201
    )
    poll(
        lambda: http("GET", dp.url("proxy", "/multi")).status == 200,
        timeout=PROPAGATION_DEADLINE,
        interval=0.01,
        message="cp2's write served by the DP on cp1",
    )
    assert time.monotonic() - started < PROPAGATION_DEADLINE

    # cp1 dies: the data plane moves to cp2, serving all along.
    cp1.kill()
    assert http("GET", dp.url("proxy", "/multi")).status == 200

    def moved() -> dict[str, Any] | None:
        found = row(cp2.url("admin"))
        return found if found and found["cp_node_id"] == cp2.node_id else None

    moved_row = poll(moved, message="the DP reconnected to cp2")
    assert (
        moved_row["config_hash"]
        == http("GET", cp2.url("admin", "/status")).json()["configuration_hash"]
    )
    assert http("GET", dp.url("proxy", "/multi")).status == 200
