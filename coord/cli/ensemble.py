"""``coord ensemble``: a local ensemble on loopback, for development.

It is the test ensemble of :mod:`coord.testing` (every server in this process), with
slower, production-like timing, and fixed ports unless ``--base-port 0``. Like
``coord serve`` it checks its addresses before starting and says in one line why it
could not start (:mod:`coord.server.run`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import trio

from coord.cli.args import EXIT_USAGE
from coord.server.run import Named, cannot_listen, explain
from coord.testing import HOST, Ensemble, open_ensemble

ENSEMBLE_SIZE_MAX = 9
PEER_PORT_OFFSET = 999
"""``coord ensemble``: server N's client port is base + N - 1, its peer port base + 999 + N."""


def ensemble(args: argparse.Namespace) -> int:
    """``coord ensemble``: run ``--size`` servers on loopback in this process until SIGINT or SIGTERM."""
    if not 1 <= args.size <= ENSEMBLE_SIZE_MAX:
        print(f"coord: --size must be between 1 and {ENSEMBLE_SIZE_MAX}", file=sys.stderr)
        return EXIT_USAGE
    highest = 65535 - PEER_PORT_OFFSET - args.size  # the last server's peer port is 65535
    if args.base_port != 0 and not 1 <= args.base_port <= highest:
        print(
            f"coord: --base-port must be in 1..{highest} for {args.size} servers (client ports from it, peer ports"
            f" from it + {PEER_PORT_OFFSET + 1}), or 0 for any free ports; got {args.base_port}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    addresses: Named = []
    if args.base_port:
        for server_id in range(1, args.size + 1):
            client_port, peer_port = args.base_port + server_id - 1, args.base_port + PEER_PORT_OFFSET + server_id
            addresses.append((f"client address of server {server_id}", (HOST, client_port), ""))
            addresses.append((f"peer address of server {server_id}", (HOST, peer_port), ""))
    problem = cannot_listen(addresses)
    if problem is not None:
        print(f"coord: {problem}", file=sys.stderr)
        return 1
    serving: list[bool] = []
    try:
        trio.run(_run_ensemble, args, serving)
    except (Exception, BaseExceptionGroup) as error:
        message = explain(
            error, data_dir=args.data_dir, addresses=addresses, action="start the ensemble", started=bool(serving)
        )
        if message is None:
            raise
        print(f"coord: {message}", file=sys.stderr)
        return 1
    return 0


async def _run_ensemble(args: argparse.Namespace, serving: list[bool]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            open_ensemble(
                args.size,
                data_dir=args.data_dir.resolve(),
                base_port=args.base_port,
                tick_ms=100,
                init_limit_ticks=20,
                sync_limit_ticks=5,
                session_tick_ms=1000,
            ) as running,
            trio.open_nursery() as nursery,
        ):
            print(f"coord: {args.size}-server ensemble, data in {args.data_dir}", flush=True)
            print(f"coord: connection string {running.connect_string}", flush=True)
            serving.append(True)
            nursery.start_soon(_print_roles, running)
            async for signum in signals:
                logging.getLogger("coord").info("received %s; shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


async def _print_roles(running: Ensemble) -> None:
    """Print each server's role whenever it changes."""
    shown: dict[int, str] = {}
    while True:
        for server_id, server in running.servers.items():
            role = server.role if server is not None else "down"
            if shown.get(server_id) != role:
                shown[server_id] = role
                address = server.connect_string if server is not None else "-"
                print(f"coord: server {server_id} ({address}) is {role}", flush=True)
        await trio.sleep(0.1)
