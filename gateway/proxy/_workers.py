"""Several worker processes serving the same proxy listeners (``worker_processes`` > 1).

Theory of operation
-------------------

The supervisor (``WorkerPool.run``, a Trio task in the node process) binds every
``proxy_listen`` socket once and starts N children (``python -m gateway.proxy._workers``).
Each child inherits the listening sockets (``pass_fds``; numbers in ``GATEWAY_PROXY_FDS``)
and all children accept from the same kernel queues, so restarting one drops nothing.

Each child also gets one end of a Unix socketpair (``GATEWAY_PROXY_CONTROL_FD``): the
control channel. Frames are ``kind (1 byte) | length (4) | version (8) | payload``:

* ``S`` supervisor -> worker, first frame: the pickled ``WorkerSetup`` (proxy options,
  default certificate, drain timeout). Only the supervisor writes to this channel, and it
  runs as the same user, so pickle is acceptable here.
* ``C`` supervisor -> worker: a configuration: zlib-compressed JSON of the config dict
  (contracts.md 1) and its version. The supervisor compresses once per version and sends
  the same bytes to every worker; a restarted worker first gets the latest one. The worker
  compiles it in a thread and swaps it in.
* ``R`` supervisor -> worker, after the setup, the latest config and the marks in force: go.
  A worker accepts connections only from then on, so a restarted worker never answers with
  an empty configuration (a 404 for every route) while it compiles the running one.
* ``A`` worker -> supervisor: the version now running (``WorkerPool.applied``).
* ``H`` worker -> supervisor: every 2 s, when the config has upstreams (and once more when
  it no longer has any), and right after each new config, the worker's view of upstream
  health (JSON, ``upstream_health``); the status API shows one entry per worker
  (``WorkerPool.upstream_health``), the Admin API merges them.
* ``M`` supervisor -> worker: a manual mark (Admin API ``PUT .../targets/{t}/healthy`` or
  ``unhealthy``): JSON ``{"upstream", "target", "healthy"}``, version = the mark's sequence
  number. The worker sets the target's health in its balancers and answers with an ``M``
  frame of the same number carrying its health report, so ``WorkerPool.mark_target``
  returns once every worker routes by the mark.

Manual marks outlive a worker, as in Kong (health lives in shared memory there, which a
respawned nginx worker reads): the supervisor keeps the latest mark of each target and sends
it to a restarted worker after its config. A mark is forgotten once a worker's report made
after applying it shows the target otherwise (an active check brought it back, a config
dropped the target or its health checks), as a respawned Kong worker would read the changed
shared state. Nothing survives the node: a restart starts every target healthy.

Frames to a worker go out under its slot's ``send_lock`` (a worker's first frame must be
``S``); inside a worker, one lock serializes its ``A``, ``H`` and ``M`` frames.

Each child also inherits the load board (``GATEWAY_PROXY_BOARD=fd:count``, a shared-memory
``LoadBoard``, gateway/proxy/_balance.py): every worker keeps its open connection count and
request count there, accepts only while it is not ahead of the least-loaded worker (so a
burst of connections is spread evenly), and the supervisor reads it for the status API
(``WorkerPool.server_stats``). The supervisor clears a worker's slot when it exits.

A worker exits gracefully (stops accepting, drains within the deadline) on SIGTERM,
SIGQUIT, SIGINT or EOF on the control channel (the supervisor died). The supervisor restarts a
worker that exits while the pool runs (backoff 0.1 s doubling to 5 s, reset after 10 s of
uptime). On cancellation -- or SIGTERM/SIGQUIT when ``handle_signals`` -- it closes its own
copies of the listening sockets (the port refuses connections once every worker has closed its
copy too, while they drain), sends SIGTERM to every worker, waits ``drain_timeout`` + 2 s,
then SIGKILLs what is left. SIGUSR1 in the node process (``reopen_access_logs``) is forwarded
to every worker, which reopens its proxy access log (nginx's master does the same for
``-s reopen``). A worker ignores it from the start of ``_worker_main`` to its receiver and
while it drains; one sent while its interpreter still starts kills it (it is restarted, and
had no log open).

With ``worker_processes = 1`` none of this runs: the node calls ``serve_proxy`` directly.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import trio

from gateway._access_log import on_reopen, reopen_access_logs
from gateway.proxy._balance import LoadBoard
from gateway.proxy._handler import ProxyOptions
from gateway.proxy._serve import ListenSocket, bind_listen_sockets, inherited_sockets, serve_proxy
from gateway.proxy._state import ProxyState, compile_config, upstream_health

__all__ = ["WorkerPool", "WorkerSetup", "encode_config_frame", "serve_workers", "worker_main"]

log = logging.getLogger("gateway.proxy.workers")

_HEADER = struct.Struct(">cIQ")
#: How often a worker reports its view of upstream health to the supervisor.
HEALTH_REPORT_INTERVAL = 2.0
MAX_FRAME = 512 * 1024 * 1024


class WorkerSetup:
    """What a worker needs besides its sockets and configs."""

    def __init__(
        self,
        options: ProxyOptions,
        tls_pairs: list[tuple[str, str]],
        drain_timeout: float,
        settings: Any = None,
    ) -> None:
        self.options = options
        self.tls_pairs = tls_pairs
        self.drain_timeout = drain_timeout
        self.settings = settings


def encode_frame(kind: bytes, version: int, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload), version) + payload


def encode_config_frame(config: Mapping[str, Any], version: int) -> bytes:
    payload = zlib.compress(json.dumps(config, separators=(",", ":")).encode("utf-8"), 6)
    return encode_frame(b"C", version, payload)


async def read_frame(
    stream: trio.abc.ReceiveStream, buf: bytearray
) -> tuple[bytes, int, bytes] | None:
    """One frame from ``stream`` (``buf`` keeps leftovers); None on EOF."""
    while True:
        if len(buf) >= _HEADER.size:
            kind, length, version = _HEADER.unpack_from(buf)
            if length > MAX_FRAME:
                raise ValueError(f"control frame too large: {length}")
            if len(buf) >= _HEADER.size + length:
                payload = bytes(buf[_HEADER.size : _HEADER.size + length])
                del buf[: _HEADER.size + length]
                return kind, version, payload
        data = await stream.receive_some(1 << 20)
        if not data:
            return None
        buf += data


class _Settings:
    """Picklable stand-in for settings inside a worker (only what serve_proxy reads)."""

    def __init__(self, tls_pairs: list[tuple[str, str]]) -> None:
        self.ssl_cert = tuple(c for c, _ in tls_pairs)
        self.ssl_cert_key = tuple(k for _, k in tls_pairs)


class _Mark(NamedTuple):
    """A manual health mark the supervisor keeps for restarted workers."""

    upstream: str
    target: str
    healthy: bool
    seq: int
    frame: bytes


#: the health labels a mark keeps (DNS_ERROR: unhealthy, and its last probe failed to resolve)
_MARK_LABELS = {True: ("HEALTHY",), False: ("UNHEALTHY", "DNS_ERROR")}


def _target_label(report: list[dict[str, Any]], upstream: str, target: str) -> str | None:
    for up in report:
        if up.get("name") == upstream:
            for item in up.get("targets") or ():
                if item.get("target") == target:
                    label = item.get("health")
                    return label if isinstance(label, str) else None
    return None


def _health_report(payload: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(payload)
    except ValueError:
        return []
    return doc if isinstance(doc, list) else []


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.pid: int | None = None
        self.control: trio.SocketStream | None = None
        self.applied = 0
        #: the sequence number of the last manual mark this worker applied
        self.marked = 0
        self.send_lock = trio.Lock()
        #: the worker's last upstream health report (``upstream_health`` documents)
        self.health: list[dict[str, Any]] = []


class WorkerPool:
    """The supervisor of N worker processes sharing the proxy listeners."""

    def __init__(
        self,
        settings: Any,
        *,
        workers: int | None = None,
        options: ProxyOptions | None = None,
        drain_timeout: float = 10.0,
        sockets: list[ListenSocket] | None = None,
    ) -> None:
        count = (
            workers if workers is not None else int(getattr(settings, "worker_processes", 0) or 0)
        )
        if count <= 0:
            from gateway.settings._values import available_cpus

            count = available_cpus()
        self.count = count
        self.options = options if options is not None else ProxyOptions.from_settings(settings)
        certs = getattr(settings, "ssl_cert", ()) or ()
        keys = getattr(settings, "ssl_cert_key", ()) or ()
        self.setup = WorkerSetup(self.options, list(zip(certs, keys, strict=False)), drain_timeout)
        self.drain_timeout = drain_timeout
        self.sockets = sockets if sockets is not None else bind_listen_sockets(settings)
        self.slots = [_Slot(i) for i in range(self.count)]
        self.board = LoadBoard.create(self.count)
        self.restarts = 0
        self._frame: bytes | None = None
        self._version = 0
        self._stopping = False
        self._acked = trio.Event()
        self._marks: dict[tuple[str, str], _Mark] = {}
        self._mark_seq = 0

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(str(s.sock.getsockname()[0]), int(s.sock.getsockname()[1])) for s in self.sockets]

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.slots if s.pid is not None]

    def applied(self) -> list[int]:
        return [s.applied for s in self.slots]

    def upstream_health(self) -> list[dict[str, Any]]:
        """What each worker last reported of upstream health (``pid`` and ``upstreams``)."""
        return [
            {"worker": slot.index, "pid": slot.pid, "upstreams": slot.health}
            for slot in self.slots
            if slot.pid is not None
        ]

    def server_stats(self) -> dict[str, Any]:
        """The status API's ``server`` counters, summed over the workers, and per worker."""
        board = self.board
        workers = [
            {
                "worker": slot.index,
                "pid": slot.pid,
                "connections_active": max(board.connections(slot.index), 0),
                "total_requests": board.requests(slot.index),
            }
            for slot in ([] if board.closed else self.slots)
        ]
        return {
            "connections_active": sum(w["connections_active"] for w in workers),
            "total_requests": sum(w["total_requests"] for w in workers),
            "workers": workers,
        }

    async def wait_applied(self, version: int) -> None:
        """Return once every worker runs ``version`` (or a later one)."""
        while any(s.applied < version for s in self.slots):
            await self._acked.wait()

    async def publish(self, config: Mapping[str, Any], version: int) -> None:
        """Send a config to every running worker (and to every worker started later)."""
        frame = await trio.to_thread.run_sync(encode_config_frame, config, version)
        self._frame, self._version = frame, version
        for slot in self.slots:
            await self._send(slot, frame)

    async def mark_target(
        self, upstream: str, target: str, healthy: bool, *, timeout: float = 10.0
    ) -> None:
        """Set ``target``'s health in every worker's balancer of ``upstream`` (and in workers
        started later, see the module docstring); returns once every running worker has
        applied it, or after ``timeout``. ``target`` is spelled as the balancers do
        (``host:port``)."""
        self._mark_seq += 1
        seq = self._mark_seq
        body = {"upstream": upstream, "target": target, "healthy": healthy}
        frame = encode_frame(b"M", seq, json.dumps(body, separators=(",", ":")).encode())
        key = (upstream, target)
        self._marks[key] = _Mark(upstream, target, healthy, seq, frame)
        for slot in self.slots:
            await self._send(slot, frame)
        with trio.move_on_after(timeout):
            while any(s.control is not None and s.marked < seq for s in self.slots):
                mark = self._marks.get(key)
                if mark is None or mark.seq != seq:
                    return  # overridden meanwhile: a restarted worker will not get it
                await self._acked.wait()

    def _forget_overridden_marks(self, slot: _Slot) -> None:
        """Drop the marks that ``slot``'s latest report, made after it applied them, no
        longer shows (they must not be replayed to a worker started later)."""
        for key, mark in list(self._marks.items()):
            if mark.seq <= slot.marked and (
                _target_label(slot.health, mark.upstream, mark.target)
                not in _MARK_LABELS[mark.healthy]
            ):
                del self._marks[key]

    def _signal_ack(self) -> None:
        self._acked.set()
        self._acked = trio.Event()

    async def _send(self, slot: _Slot, frame: bytes) -> None:
        control = slot.control
        if control is None:
            return
        async with slot.send_lock:
            try:
                await control.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the worker is gone; its restart gets the latest config

    async def run(
        self,
        *,
        handle_signals: bool = False,
        task_status: trio.TaskStatus[WorkerPool] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            # SIGUSR1 in this process (reopen_access_logs) reaches the workers' access logs
            with on_reopen(self._forward_reopen):
                async with trio.open_nursery() as nursery:
                    for slot in self.slots:
                        await nursery.start(self._run_slot, slot)
                    if handle_signals:
                        nursery.start_soon(self._signals, nursery.cancel_scope)
                    task_status.started(self)
                    try:
                        await trio.sleep_forever()
                    finally:
                        self._stopping = True
                        # Now, not once the workers are gone: while they drain, a connection
                        # the kernel queued on our copy would wait for nobody, then be reset.
                        self._close_listeners()
        finally:
            self._close_listeners()
            self.board.close()

    def _close_listeners(self) -> None:
        for listen in self.sockets:
            listen.sock.close()

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGQUIT) as signals:
            async for _ in signals:
                log.info("signal received: draining workers")
                scope.cancel()
                return

    def _forward_reopen(self) -> None:
        """Send SIGUSR1 to every running worker: each reopens its own proxy access log."""
        for slot in self.slots:
            if slot.pid is not None:
                try:
                    os.kill(slot.pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass  # exited meanwhile; its successor opens the log anew

    async def _deliver_cancel(self, process: trio.Process) -> None:
        process.terminate()
        with trio.move_on_after(self.drain_timeout + 2):
            await process.wait()
            return
        log.warning("worker %d did not drain in time: killing it", process.pid)
        process.kill()

    async def _run_slot(self, slot: _Slot, task_status: trio.TaskStatus[None]) -> None:
        backoff = 0.1
        started = False
        while True:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fds = [s.sock.fileno() for s in self.sockets]
            fds.append(self.board.fd)
            env = dict(os.environ)
            env["GATEWAY_PROXY_BOARD"] = self.board.env_value()
            env["GATEWAY_PROXY_FDS"] = ",".join(
                f"{s.sock.fileno()}:{'ssl' if s.ssl else 'plain'}" for s in self.sockets
            )
            env["GATEWAY_PROXY_CONTROL_FD"] = str(child.fileno())
            env["GATEWAY_PROXY_WORKER"] = str(slot.index)
            control = trio.SocketStream(trio.socket.from_stdlib_socket(parent))
            began = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    process: trio.Process = await nursery.start(
                        _run_process,
                        [sys.executable, "-m", "gateway.proxy._worker_main"],
                        env,
                        [*fds, child.fileno()],
                        self._deliver_cancel,
                    )
                    child.close()
                    slot.pid = process.pid
                    slot.control = control
                    # Setup first, then the latest config, then the marks in force; under the
                    # lock, so that a config or mark published meanwhile follows them.
                    async with slot.send_lock:
                        await control.send_all(encode_frame(b"S", 0, pickle.dumps(self.setup)))
                        if self._frame is not None:
                            await control.send_all(self._frame)
                        for mark in sorted(self._marks.values(), key=lambda m: m.seq):
                            await control.send_all(mark.frame)
                        await control.send_all(encode_frame(b"R", 0, b""))
                    nursery.start_soon(self._read_acks, slot, control)
                    if not started:
                        started = True
                        task_status.started()
                    await process.wait()
                    nursery.cancel_scope.cancel()
                code = process.returncode
            finally:
                slot.pid = None
                slot.control = None
                slot.marked = 0
                slot.health = []  # that process's view is gone; its successor reports its own
                self.board.clear(slot.index)
                child.close()
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(control)
            if self._stopping:
                return
            self.restarts += 1
            if trio.current_time() - began > 10:
                backoff = 0.1
            log.warning("worker %d exited (%s); restarting in %.1fs", slot.index, code, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _read_acks(self, slot: _Slot, control: trio.SocketStream) -> None:
        """Read a worker's frames: ``A`` (version applied), ``H`` (upstream health) and
        ``M`` (mark applied, with the health it results in)."""
        buf = bytearray()
        try:
            while True:
                frame = await read_frame(control, buf)
                if frame is None:
                    return
                kind, version, payload = frame
                if kind == b"A":
                    slot.applied = version
                    self._signal_ack()
                elif kind == b"H":
                    slot.health = _health_report(payload)
                    self._forget_overridden_marks(slot)
                elif kind == b"M":
                    slot.marked = max(slot.marked, version)
                    slot.health = _health_report(payload)
                    self._forget_overridden_marks(slot)
                    self._signal_ack()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            return


async def _run_process(
    argv: list[str],
    env: dict[str, str],
    fds: list[int],
    deliver_cancel: Any,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
) -> None:
    await trio.run_process(
        argv,
        env=env,
        pass_fds=fds,
        check=False,
        deliver_cancel=deliver_cancel,
        task_status=task_status,
    )


async def serve_workers(
    settings: Any,
    config: Mapping[str, Any] | None = None,
    *,
    version: int = 1,
    workers: int | None = None,
    options: ProxyOptions | None = None,
    drain_timeout: float = 10.0,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[WorkerPool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a ``WorkerPool`` until cancelled; ``task_status.started`` gets the pool
    (``pool.publish(config, version)`` pushes later configs to every worker)."""
    pool = WorkerPool(settings, workers=workers, options=options, drain_timeout=drain_timeout)
    if config is not None:
        pool._frame = await trio.to_thread.run_sync(encode_config_frame, config, version)
        pool._version = version
    await pool.run(handle_signals=handle_signals, task_status=task_status)


# -- the worker side ------------------------------------------------------------------------


async def worker_main() -> None:
    """Entry point of a worker process (``python -m gateway.proxy._workers``)."""
    control_fd = int(os.environ["GATEWAY_PROXY_CONTROL_FD"])
    sockets = inherited_sockets() or []
    control = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=control_fd)))
    buf = bytearray()
    first = await read_frame(control, buf)
    if first is None or first[0] != b"S":
        return
    setup: WorkerSetup = pickle.loads(first[2])
    state = ProxyState()
    board = LoadBoard.from_env()
    send_lock = trio.Lock()  # A, H and M frames come from different tasks
    ready = trio.Event()  # the supervisor's R frame: setup, config and marks are in
    reported = False  # whether the last health report had upstreams

    async def send(frame: bytes) -> bool:
        async with send_lock:
            try:
                await control.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        return True

    def health_payload() -> bytes:
        doc = upstream_health(state.current.balancers)
        return json.dumps(doc, separators=(",", ":")).encode()

    async def report_health() -> bool:
        # only with upstreams, and once more when the last one goes (no stale report)
        nonlocal reported
        has_upstreams = len(state.current.balancers) > 0
        if not (has_upstreams or reported):
            return True
        reported = has_upstreams
        return await send(encode_frame(b"H", state.current.version, health_payload()))

    async def apply(version: int, payload: bytes) -> None:
        def build() -> Any:
            config = json.loads(zlib.decompress(payload))
            return compile_config(config, version=version, previous=state.current)

        try:
            compiled = await trio.to_thread.run_sync(build)
        except Exception:
            log.exception("worker: config version %d refused", version)
            return
        state.swap(compiled)
        if await send(encode_frame(b"A", version, b"")):
            await report_health()  # at once: targets added or removed show without delay

    async def mark(seq: int, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            balancer = state.current.balancers.get(doc["upstream"])
            if balancer is not None:
                balancer.set_healthy(str(doc["target"]), bool(doc["healthy"]))
        except (ValueError, KeyError, TypeError):
            log.warning("worker: malformed health mark ignored")
        await send(encode_frame(b"M", seq, health_payload()))

    async with trio.open_nursery() as nursery:

        async def control_loop() -> None:
            try:
                while True:
                    frame = await read_frame(control, buf)
                    if frame is None:
                        break
                    kind, version, payload = frame
                    if kind == b"C":
                        await apply(version, payload)
                    elif kind == b"M":
                        await mark(version, payload)
                    elif kind == b"R":
                        ready.set()  # the frames before it are applied: serve
            except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
                pass
            nursery.cancel_scope.cancel()  # the supervisor is gone: drain and exit

        async def signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGQUIT, signal.SIGINT) as rx:
                async for _ in rx:
                    nursery.cancel_scope.cancel()
                    return

        async def reopen_logs() -> None:
            # SIGUSR1, forwarded by the supervisor: this worker's proxy access log
            with trio.open_signal_receiver(signal.SIGUSR1) as rx:
                async for _ in rx:
                    reopen_access_logs()

        async def report_health_periodically() -> None:
            # Health checks run in each worker; tell the supervisor what this one sees, so
            # the status and Admin APIs can show it (a few hundred bytes every 2 s).
            while True:
                await trio.sleep(HEALTH_REPORT_INTERVAL)
                if not await report_health():
                    return

        nursery.start_soon(signals)
        nursery.start_soon(reopen_logs)
        nursery.start_soon(control_loop)
        nursery.start_soon(report_health_periodically)
        # connections wait in the shared listen queue, where the other workers take them,
        # until this one runs the configuration the pool runs
        await ready.wait()
        await nursery.start(
            lambda task_status: serve_proxy(
                setup.settings or _Settings(setup.tls_pairs),
                state,
                sockets=sockets,
                options=setup.options,
                drain_timeout=setup.drain_timeout,
                board=board,
                task_status=task_status,
            )
        )
