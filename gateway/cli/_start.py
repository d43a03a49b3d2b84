"""``python -m gateway [start]``: run a node in the foreground until SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import trio

from gateway._errors import ConfigError
from gateway._logging import configure_logging
from gateway.settings import Settings, add_settings_arguments, settings_from_args

log = logging.getLogger("gateway")


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "start",
        help="start a node",
        description="Start a node (traditional, control_plane or data_plane) in the foreground.",
    )
    add_settings_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    configure_logging(settings.log_level, role=settings.role)
    if settings.role != "control_plane":
        # the node proxies: first come, first served (a shorter tail). Imported here: the
        # proxy package is heavy, and the other commands do not need it
        from gateway.proxy import fair_scheduling

        fair_scheduling()
    try:
        trio.run(run_until_signal, settings)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # A start-up ConfigError raised inside the node's nursery (e.g. an expired
        # cluster_cert) arrives wrapped in a group: report it like any other.
        config_errors = group.subgroup(ConfigError)
        if config_errors is None:
            raise
        first: BaseException = config_errors
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(f"Error: {first}", file=sys.stderr)
        return 1
    return 0


async def run_until_signal(settings: Settings) -> None:
    """Run the node; SIGTERM, SIGINT or SIGQUIT stop it gracefully (in-flight requests drain),
    SIGUSR1 reopens its access logs (nginx's ``-s reopen``, after a log rotation)."""
    from gateway._access_log import reopen_access_logs
    from gateway._node import serve_node

    stop = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
    # SIGUSR1 stays caught until the node is gone: a rotation while it drains kills nothing
    with trio.open_signal_receiver(*stop, signal.SIGUSR1) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_node, settings)
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    log.info("received SIGUSR1: reopening the access logs")
                    reopen_access_logs()
                    continue
                log.info("received %s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
