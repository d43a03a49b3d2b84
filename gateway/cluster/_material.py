"""The node's cluster certificate material, its expiry warnings, and rotation without restart.

Theory of operation: ``ClusterMaterial.current`` is the ``ClusterTLS`` that new cluster
connections use. ``reload()`` reads ``cluster_cert``, ``cluster_cert_key`` and
``cluster_ca_cert`` again, checks them exactly as at start (loadable, key matches, currently
valid, CA is a root in PKI mode) and, only if all is well, replaces ``current`` in one
assignment: new sessions use the new material, existing sessions keep the contexts they were
made with until they reconnect. Bad material is refused with a logged reason and the old
material stays in use.

Reloads are triggered by SIGHUP and by a file watch (the modification times of file-backed
settings, polled every ``poll_interval`` seconds), and are available to code as
``reload()`` (the control plane's Admin API exposes it as
``POST /clustering/certificates/reload``; the status API of any node as
``POST /status/certificates/reload``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import trio

import certs
from gateway._errors import ConfigError
from gateway._state import NodeState
from gateway.cluster._tls import ClusterTLS
from gateway.settings import Settings

log = logging.getLogger("gateway.cluster")


def load_cluster_tls(settings: Settings, *, now: datetime | None = None) -> ClusterTLS:
    """Load and check the cluster material named by ``settings``; errors as ``ConfigError``.

    The one loader for start and reload: the node refuses to start, and a reload is refused,
    for the same reasons (missing, unreadable, key mismatch, not a root CA in PKI mode,
    outside its validity window).
    """
    if not settings.cluster_cert or not settings.cluster_cert_key:
        raise ConfigError(
            "cluster certificate and key must be provided to use Hybrid mode", key="cluster_cert"
        )
    try:
        tls = ClusterTLS.load(
            mode=settings.cluster_mtls,
            cluster_cert=settings.cluster_cert,
            cluster_cert_key=settings.cluster_cert_key,
            cluster_ca_cert=settings.cluster_ca_cert,
            server_name=settings.cluster_server_name,
        )
    except (certs.CertificateError, ValueError, OSError) as exc:
        raise ConfigError(str(exc), key="cluster_cert") from exc
    # A node whose own certificate is outside its validity window would only be refused
    # by every peer: stop at start with the reason instead of dialling in a loop.
    try:
        certs.check_validity(tls.leaf, now or datetime.now(UTC))
    except certs.VerificationError as exc:
        raise ConfigError(f"cluster_cert: {exc.reason}", key="cluster_cert") from exc
    return tls


@attrs.frozen(kw_only=True)
class ReloadOutcome:
    """What ``POST .../certificates/reload`` answers."""

    reloaded: bool
    generation: int
    error: str | None
    expiry_timestamp: int


class ClusterMaterial:
    def __init__(
        self,
        settings: Settings,
        state: NodeState | None = None,
        *,
        loader: Callable[[Settings], ClusterTLS] = load_cluster_tls,
    ) -> None:
        self.settings = settings
        self.state = state
        self._loader = loader
        self.current: ClusterTLS = loader(settings)
        self.generation = 1
        self.last_reload_error: str | None = None
        #: Called with the new material after each successful reload (e.g. re-key a cache).
        self.on_reload: list[Callable[[ClusterTLS], None]] = []
        self._mtimes = self._file_mtimes()
        self.check_expiry()

    # -- rotation -------------------------------------------------------------------------
    def reload(self) -> bool:
        """Load the material again; install it if valid. True when new material is in use."""
        try:
            fresh = self._loader(self.settings)
        except (
            ConfigError,
            certs.CertificateError,
            certs.VerificationError,
            ValueError,
            OSError,
        ) as exc:
            self.last_reload_error = str(exc)
            log.error("cluster certificate reload refused, keeping the current one: %s", exc)
            return False
        self._mtimes = self._file_mtimes()
        if _same(fresh, self.current):
            log.info("cluster certificate reload: material unchanged")
            self.last_reload_error = None
            return False
        self.current = fresh
        self.generation += 1
        self.last_reload_error = None
        log.info(
            "cluster certificate reloaded (generation %d, %s, expires %s): new connections "
            "use it, existing ones keep theirs until they reconnect",
            self.generation,
            certs.describe(fresh.leaf),
            fresh.expires_at.isoformat(),
        )
        self.check_expiry()
        for callback in self.on_reload:
            try:
                callback(fresh)
            except Exception:
                log.exception("after the cluster certificate reload")
        return True

    def reload_report(self) -> dict[str, Any]:
        """``reload()`` for the HTTP endpoints: ``{"reloaded", "generation", "error",
        "expiry_timestamp"}`` (the expiry of the material in use afterwards)."""
        reloaded = self.reload()
        return attrs.asdict(
            ReloadOutcome(
                reloaded=reloaded,
                generation=self.generation,
                error=self.last_reload_error,
                expiry_timestamp=int(self.current.expires_at.timestamp()),
            )
        )

    def _sources(self) -> list[Path]:
        paths = []
        for value in (
            self.settings.cluster_cert,
            self.settings.cluster_cert_key,
            self.settings.cluster_ca_cert,
        ):
            if value and "-----BEGIN" not in value and "\n" not in value:
                path = Path(value)
                if path.is_file():
                    paths.append(path)
        return paths

    def _file_mtimes(self) -> dict[Path, float]:
        out = {}
        for path in self._sources():
            try:
                out[path] = path.stat().st_mtime
            except OSError:
                continue
        return out

    def files_changed(self) -> bool:
        return self._file_mtimes() != self._mtimes

    async def watch(
        self,
        *,
        poll_interval: float = 5.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Reload on SIGHUP and when a certificate file changes; warn of expiry daily."""
        async with trio.open_nursery() as nursery:
            if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
                nursery.start_soon(self._on_sighup)
            task_status.started()
            last_expiry_check = trio.current_time()
            while True:
                await trio.sleep(poll_interval)
                if self.files_changed():
                    log.info("cluster certificate files changed on disk: reloading")
                    self.reload()
                if trio.current_time() - last_expiry_check > 3600:
                    last_expiry_check = trio.current_time()
                    self.check_expiry()

    async def _on_sighup(self) -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                log.info("SIGHUP received (pid %d): reloading the cluster certificate", os.getpid())
                self.reload()

    # -- expiry ---------------------------------------------------------------------------
    def check_expiry(self, now: datetime | None = None) -> bool:
        """Warn when our certificate expires within ``cluster_cert_expiry_warning`` days."""
        at = now or datetime.now(UTC)
        window = timedelta(days=self.settings.cluster_cert_expiry_warning)
        soon = certs.expires_within(self.current.leaf, at, window)
        if self.state is not None:
            self.state.cluster_cert_expiry = self.current.expires_at.timestamp()
            self.state.cluster_cert_expiring_soon = soon
        if soon:
            log.warning(
                "the cluster certificate expires on %s (within %d days): rotate it "
                "(replace the files and send SIGHUP, no restart needed)",
                self.current.expires_at.isoformat(),
                self.settings.cluster_cert_expiry_warning,
            )
        return soon


def _same(a: ClusterTLS, b: ClusterTLS) -> bool:
    return (
        a.mode == b.mode
        and a.cert_chain == b.cert_chain
        and a.ca_root == b.ca_root
        and a.server_name == b.server_name
        and certs.key_pem(a.key) == certs.key_pem(b.key)
    )
