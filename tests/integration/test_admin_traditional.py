"""A user's first steps on a traditional node, with ``curl`` against real processes.

"A node starts on SQLite with no other setup; curl can create a service, a route, a
consumer with a key, a plugin (key-auth on the route: 401 without key, 200 with); export
(``python -m gateway config db_export``) and re-import (``db_import``) the config." The same
on PostgreSQL, in a fresh database per run (skipped when the server is unreachable, unless
``CI=true``).

The service proxies to the node's own Admin API (``/status``), so no upstream server is
needed. Nodes are started by tests/integration/helpers.py (ephemeral ports read back from
``<prefix>/listeners.json``, logs printed when a test fails); every wait polls with a
deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from helpers import GatewayProcess, ProcessGroup, poll

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
DEADLINE = 15.0
PG = {"host": HOST, "port": 5432, "user": "postgres", "dbname": "test", "connect_timeout": 3}

if shutil.which("curl") is None:  # pragma: no cover - the image has curl
    pytest.skip("these tests drive the Admin API with curl", allow_module_level=True)


def gateway(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A ``python -m gateway`` command, as a user runs it (no ``GATEWAY_*`` from outside)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


class Curl:
    """``curl`` as a user types it; returns (status, parsed JSON or text)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def __call__(self, *args: str, path: str = "/") -> tuple[int, Any]:
        done = subprocess.run(
            ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args, self.base + path],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, (args, path, done.stderr)
        body, _, status = done.stdout.rpartition("\n")
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = body
        return int(status), parsed


class Node:
    """A ``python -m gateway start`` process (tests/integration/helpers.py) on ephemeral
    ports, with curl pointed at its Admin API and its proxy."""

    def __init__(self, processes: ProcessGroup, name: str, settings: Sequence[str] = ()) -> None:
        values = {
            "admin_listen": f"{HOST}:0",
            "proxy_listen": f"{HOST}:0",
            "status_listen": "off",
            **dict(item.split("=", 1) for item in settings),
        }
        self.process: GatewayProcess = processes.node(name, values)
        self.prefix = self.process.prefix
        self.admin_url = self.process.url("admin")
        self.admin = Curl(self.admin_url)
        self.proxy = Curl(self.process.url("proxy"))

    def stop(self) -> None:
        self.process.stop()


def wait_for(what: str, probe: Callable[[], bool]) -> None:
    poll(lambda: probe() or None, timeout=DEADLINE, message=what)


def first_steps(node: Node) -> None:
    """What the getting-started tutorial does, checked step by step."""
    admin = node.admin
    status, service = admin(
        "-d", "name=echo", "-d", f"url={node.admin_url}/status", path="/services"
    )
    assert status == 201, service
    status, route = admin(
        "-d", "name=echo-route", "-d", "paths[]=/echo", path="/services/echo/routes"
    )
    assert status == 201, route
    assert route["service"] == {"id": service["id"]}
    status, consumer = admin("-d", "username=alice", path="/consumers")
    assert status == 201, consumer
    status, key = admin("-d", "key=alice-secret", path="/consumers/alice/key-auth")
    assert (status, key["key"]) == (201, "alice-secret")
    status, plugin = admin("-d", "name=key-auth", path="/routes/echo-route/plugins")
    assert status == 201, plugin
    assert plugin["route"] == {"id": route["id"]}

    # The proxy picks the change up on its own; wait for key-auth to be in force.
    wait_for("key-auth in force", lambda: node.proxy(path="/echo")[0] == 401)
    status, body = node.proxy("-H", "apikey: alice-secret", path="/echo")
    assert status == 200
    assert body["database"] == {"reachable": True}  # the Admin API's /status, proxied
    status, _ = node.proxy("-H", "apikey: wrong", path="/echo")
    assert status == 401


def bad_input_changes_nothing(node: Node, tmp: Path) -> None:
    admin = node.admin
    _, before = admin(path="/config?format=json")
    cases = [
        (["-H", "content-type: application/json", "--data-binary", "{oops"], "/services", 400),
        (["-H", "content-type: text/plain", "-d", "host=x"], "/services", 415),
        (["-d", "host=x", "-d", "port=eighty"], "/services", 400),
        (["-d", "name=echo", "-d", "host=x"], "/services", 409),
        (["-X", "DELETE"], "/services/echo", 400),  # it still has a route
        (["-X", "PATCH", "-d", "port=1"], "/services/nope", 404),
        (["-X", "DELETE"], "/services", 405),
        ([], "/services?size=0", 400),
        ([], "/services?offset=garbage", 400),
        ([], "/no/such/thing", 404),
    ]
    big = tmp / "big.json"
    big.write_bytes(b'{"host": "' + b"x" * (17 * 1024 * 1024) + b'"}')
    cases.append(
        (["-H", "content-type: application/json", "--data-binary", f"@{big}"], "/services", 413)
    )
    for args, path, expected in cases:
        status, body = admin(*args, path=path)
        assert status == expected, (args, path, status, body)
        assert isinstance(body, dict), body
        assert body.get("message"), body
    _, after = admin(path="/config?format=json")
    assert after == before
    status, info = admin(path="/status")
    assert status == 200
    assert info["database"]["reachable"] is True


def check_admin_basics(node: Node) -> None:
    status, info = node.admin(path="/")
    assert status == 200
    assert info["role"] == "traditional"
    assert "key-auth" in info["plugins"]["available_on_server"]
    assert info["plugins"]["enabled_in_cluster"] == ["key-auth"]
    assert "pg_password" in info["configuration"]
    status, _ = node.admin(path="/schemas/plugins/key-auth")
    assert status == 200
    status, enabled = node.admin(path="/plugins/enabled")
    assert "key-auth" in enabled["enabled_plugins"]
    status, page = node.admin(path="/services/echo/routes?size=1")
    assert (status, [r["name"] for r in page["data"]]) == (200, ["echo-route"])


def export_doc(cwd: Path, settings: Sequence[str], out: Path) -> dict[str, Any]:
    args = [a for s in settings for a in ("--set", s)]
    done = gateway("config", "db_export", str(out), *args, cwd=cwd)
    assert "export successful" in done.stdout
    doc: dict[str, Any] = yaml.safe_load(out.read_text())
    return doc


def without_timestamps(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {
            k: without_timestamps(v)
            for k, v in doc.items()
            if k not in ("created_at", "updated_at")
        }
    if isinstance(doc, list):
        return [without_timestamps(v) for v in doc]
    return doc


# -- SQLite -------------------------------------------------------------------------------------


def test_first_steps_on_sqlite(tmp_path: Path, processes: ProcessGroup) -> None:
    node = Node(processes, "node1")
    try:
        first_steps(node)
        check_admin_basics(node)
        bad_input_changes_nothing(node, tmp_path)
    finally:
        node.stop()
    settings = [f"prefix={tmp_path / 'node1'}"]
    exported = export_doc(tmp_path, settings, tmp_path / "kong.yml")
    assert [s["name"] for s in exported["services"]] == ["echo"]
    assert [c["username"] for c in exported["consumers"]] == ["alice"]

    # Re-import into a brand-new node's database, then use it.
    fresh = [f"prefix={tmp_path / 'node2'}"]
    done = gateway(
        "config",
        "db_import",
        str(tmp_path / "kong.yml"),
        *[a for s in fresh for a in ("--set", s)],
        cwd=tmp_path,
    )
    assert "import successful" in done.stdout
    again = export_doc(tmp_path, fresh, tmp_path / "again.yml")
    assert without_timestamps(again) == without_timestamps(exported)
    node2 = Node(processes, "node2")
    try:
        status, _ = node2.proxy(path="/echo")
        assert status == 401
        status, _ = node2.admin(path="/consumers/alice/key-auth/alice-secret")
        assert status == 200
        # The service still points at the first node's Admin API: point it at this one's.
        status, _ = node2.admin(
            "-X", "PATCH", "-d", f"url={node2.admin_url}/status", path="/services/echo"
        )
        assert status == 200
        wait_for(
            "the key to work",
            lambda: node2.proxy("-H", "apikey: alice-secret", path="/echo")[0] == 200,
        )
    finally:
        node2.stop()


# -- PostgreSQL -----------------------------------------------------------------------------------


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh database for this test, dropped afterwards."""
    try:
        admin = psycopg.connect(**PG, autocommit=True)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL on {HOST}:5432 is required when CI=true: {exc}")
        pytest.skip(f"PostgreSQL on {HOST}:5432 is unreachable: {exc}")
    name = f"gw_admin_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_first_steps_on_postgres(tmp_path: Path, processes: ProcessGroup, pg_database: str) -> None:
    settings = [
        "database=postgres",
        f"pg_host={HOST}",
        "pg_port=5432",
        "pg_user=postgres",
        f"pg_database={pg_database}",
    ]
    set_args = [a for s in settings for a in ("--set", s)]
    gateway("migrations", "bootstrap", *set_args, cwd=tmp_path)
    node = Node(processes, "node", settings)
    try:
        first_steps(node)
        check_admin_basics(node)
        bad_input_changes_nothing(node, tmp_path)
        exported = export_doc(tmp_path, settings, tmp_path / "kong.yml")
        assert [s["name"] for s in exported["services"]] == ["echo"]

        # Re-import: the node's database replaced by the file; the node follows.
        status, _ = node.admin("-X", "DELETE", path="/consumers/alice")
        assert status == 204
        wait_for(
            "the key to be gone",
            lambda: node.proxy("-H", "apikey: alice-secret", path="/echo")[0] == 401,
        )
        done = gateway("config", "db_import", str(tmp_path / "kong.yml"), *set_args, cwd=tmp_path)
        assert "import successful" in done.stdout
        wait_for(
            "the imported key to work",
            lambda: node.proxy("-H", "apikey: alice-secret", path="/echo")[0] == 200,
        )
        again = export_doc(tmp_path, settings, tmp_path / "again.yml")
        assert without_timestamps(again) == without_timestamps(exported)
    finally:
        node.stop()


# -- database = off: POST /config -----------------------------------------------------------------


def dbless_doc(admin_url: str) -> str:
    return yaml.safe_dump(
        {
            "_format_version": "3.0",
            "services": [
                {
                    "name": "echo",
                    "url": f"{admin_url}/status",
                    "routes": [{"name": "echo-route", "paths": ["/echo"]}],
                }
            ],
            "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "alice-secret"}]}],
            "plugins": [{"name": "key-auth", "route": "echo-route"}],
        }
    )


def test_post_config_on_a_node_without_database(tmp_path: Path, processes: ProcessGroup) -> None:
    node = Node(processes, "node", ["database=off"])
    try:
        status, body = node.admin(path="/services")
        assert (status, body["data"]) == (200, [])
        status, _ = node.admin("-d", "name=x", "-d", "host=y", path="/services")
        assert status == 405
        doc = tmp_path / "kong.yml"
        doc.write_text(dbless_doc(node.admin_url))
        yaml_body = ["-H", "content-type: application/yaml", "--data-binary", f"@{doc}"]
        status, loaded = node.admin(*yaml_body, path="/config")
        assert status == 201, loaded
        assert [s["name"] for s in loaded["services"]] == ["echo"]
        wait_for("key-auth in force", lambda: node.proxy(path="/echo")[0] == 401)
        status, _ = node.proxy("-H", "apikey: alice-secret", path="/echo")
        assert status == 200
        _, before = node.admin(path="/config?format=json")

        bad = tmp_path / "bad.yml"
        bad.write_text(dbless_doc(node.admin_url).replace("/echo", "no-slash"))
        status, error = node.admin("-F", f"config=@{bad}", path="/config")
        assert (status, error["code"]) == (400, 14), error
        assert error["flattened_errors"]
        assert node.admin(path="/config?format=json")[1] == before
        status, _ = node.proxy("-H", "apikey: alice-secret", path="/echo")
        assert status == 200

        status, _ = node.admin(*yaml_body, path="/config?check_hash=1")
        assert status == 304
    finally:
        node.stop()
