"""The ``coord`` command: run a server, and poke at an ensemble like zkCli.

::

    coord serve [--config FILE.toml] [--data-dir DIR] [--listen HOST:PORT]
    coord ensemble [--size 3] [--data-dir DIR] [--base-port P]
    coord status [--server HOST:PORT,...]
    coord get PATH | stat PATH | ls PATH | create PATH [DATA] | set PATH DATA | rm PATH | watch PATH

Client commands take ``--server host:port,...`` or the ``COORD_SERVERS``
environment variable (default ``127.0.0.1:2281``). Exit status: 0 on success,
1 when the service answered with an error (e.g. no such node), 2 for bad usage
or bad configuration, 3 when no server could be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from coord import lockcli, protocol
from coord.config import ConfigError, load_config
from coord.errors import CoordError

DEFAULT_SERVERS = "127.0.0.1:2281"
EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coord", description="coord: a coordination service on trio")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one server (standalone)")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--data-dir", help="data directory (overrides server.data_dir)")
    serve.add_argument("--listen", help="HOST:PORT for clients (overrides server.listen)")

    ensemble = commands.add_parser("ensemble", help="run a local ensemble on loopback (development)")
    ensemble.add_argument("--size", type=int, default=3, help="number of servers (default %(default)s)")
    ensemble.add_argument("--data-dir", type=Path, default=Path("coord-data"), help="data directory (kept across runs)")
    ensemble.add_argument(
        "--base-port", type=int, default=2281, help="client ports from here, peer ports from here + 1000"
    )

    def client_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--server", default=None, help="host:port,... (default: $COORD_SERVERS or %(default)s)")
        sub.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the service")
        return sub

    status = client_command("status", "show a server's role, zxid, sessions, znodes, watches")
    status.add_argument("--json", action="store_true", help="print JSON")
    for name, help_text in [
        ("get", "print a node's data"),
        ("stat", "print a node's stat"),
        ("ls", "list a node's children"),
        ("rm", "delete a node"),
        ("watch", "wait for the next change of a node and print it"),
    ]:
        sub = client_command(name, help_text)
        sub.add_argument("path")
        if name == "rm":
            sub.add_argument("-r", "--recursive", action="store_true", help="delete the subtree")
            sub.add_argument("--version", type=int, default=-1)
        if name == "watch":
            sub.add_argument("--children", action="store_true", help="watch the children instead of the data")
    create = client_command("create", "create a node")
    create.add_argument("path")
    create.add_argument("data", nargs="?", default="")
    create.add_argument("-e", "--ephemeral", action="store_true")
    create.add_argument("-s", "--sequence", action="store_true")
    create.add_argument("-p", "--makepath", action="store_true", help="create missing parents")
    set_ = client_command("set", "set a node's data")
    set_.add_argument("path")
    set_.add_argument("data")
    set_.add_argument("--version", type=int, default=-1)
    lockcli.add_subcommands(commands)
    return parser


def _servers(args: argparse.Namespace) -> str:
    return args.server or os.environ.get("COORD_SERVERS") or DEFAULT_SERVERS


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet = args.command not in ("serve", "ensemble")  # client commands print only their answers
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "ensemble":
            return _ensemble(args)
        if args.command == "status":
            return trio.run(_status, args)
        if args.command in lockcli.COMMANDS:
            return lockcli.run(args)
        return trio.run(_client_command, args)
    except ConfigError as error:
        print(f"coord: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


# --- serve ----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["server.data_dir"] = args.data_dir
    if args.listen is not None:
        overrides["server.listen"] = args.listen
    config = load_config(args.config, overrides=overrides)
    from coord.recovery import RecoveryError

    try:
        trio.run(_run_server, config)
    except RecoveryError as error:
        print(f"coord: cannot start: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"coord: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


FAULT_HOOKS_ENV = "COORD_FAULT_HOOKS"
"""Set to 1 (tests only) to let SIGUSR1 isolate the server from its peers and clients
and SIGUSR2 heal it: how :mod:`coord.testing` cuts off a server process."""


async def _run_server(config: Any) -> None:
    from coord.server import open_server

    fault_hooks = os.environ.get(FAULT_HOOKS_ENV) == "1"
    handled = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR1, signal.SIGUSR2] if fault_hooks else [])
    with trio.open_signal_receiver(*handled) as signals:
        async with open_server(config) as server:
            print(f"coord: serving on {server.connect_string} (data in {config.data_dir})", flush=True)
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    logging.getLogger("coord").warning("fault hook: isolating this server")
                    server.isolate()
                    continue
                if signum == signal.SIGUSR2:
                    logging.getLogger("coord").warning("fault hook: healing this server")
                    server.heal()
                    continue
                logging.getLogger("coord").info("received %s; shutting down", signal.Signals(signum).name)
                break


# --- ensemble ---------------------------------------------------------------------------


def _ensemble(args: argparse.Namespace) -> int:
    if not 1 <= args.size <= 9:
        print("coord: --size must be between 1 and 9", file=sys.stderr)
        return EXIT_USAGE
    try:
        trio.run(_run_ensemble, args)
    except OSError as error:
        print(f"coord: cannot start the ensemble: {error}", file=sys.stderr)
        return 1
    return 0


async def _run_ensemble(args: argparse.Namespace) -> None:
    from coord.testing import open_ensemble

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
            ) as ensemble,
            trio.open_nursery() as nursery,
        ):
            print(f"coord: {args.size}-server ensemble, data in {args.data_dir}", flush=True)
            print(f"coord: connection string {ensemble.connect_string}", flush=True)
            nursery.start_soon(_print_roles, ensemble)
            async for signum in signals:
                logging.getLogger("coord").info("received %s; shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


async def _print_roles(ensemble: Any) -> None:
    """Print each server's role whenever it changes."""
    shown: dict[int, str] = {}
    while True:
        for server_id, server in ensemble.servers.items():
            role = server.role if server is not None else "down"
            if shown.get(server_id) != role:
                shown[server_id] = role
                address = server.connect_string if server is not None else "-"
                print(f"coord: server {server_id} ({address}) is {role}", flush=True)
        await trio.sleep(0.1)


# --- status -----------------------------------------------------------------------------


async def _status(args: argparse.Namespace) -> int:
    failures = []
    for address in _servers(args).split(","):
        try:
            with trio.fail_after(args.timeout):
                status = await fetch_status(address.strip())
        except (OSError, trio.TooSlowError, protocol.ProtocolError) as error:
            failures.append(f"{address}: {error or type(error).__name__}")
            continue
        if args.json:
            print(json.dumps(status, indent=2, sort_keys=True))
        else:
            for key in ("address", "server_id", "role", "zxid", "sessions", "connections", "znodes", "watches"):
                value = status.get(key)
                print(f"{key:12} {value:#x}" if key == "zxid" else f"{key:12} {value}")
        return EXIT_OK
    for failure in failures:
        print(f"coord: {failure}", file=sys.stderr)
    return EXIT_UNREACHABLE


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def fetch_status(address: str) -> dict[str, Any]:
    """Ask one server for its status over the client port (no session is opened)."""
    host, port = _split_address(address)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(protocol.encode_frame(protocol.StatusRequest().to_wire()))
        reader = protocol.FrameReader(protocol.frame_bytes_max())
        while True:
            for body in reader:
                status = protocol.decode_body(body)
                if not isinstance(status, dict):
                    raise protocol.ProtocolError("bad status reply")
                return status
            data = await stream.receive_some(65536)
            if not data:
                raise protocol.ProtocolError("the server closed the connection")
            reader.feed(data)


# --- zkCli-like commands ----------------------------------------------------------------


def _format_stat(stat: protocol.Stat) -> str:
    fields = [
        "czxid",
        "mzxid",
        "pzxid",
        "ctime",
        "mtime",
        "version",
        "cversion",
        "aversion",
        "ephemeral_owner",
        "data_length",
        "num_children",
    ]
    lines = []
    for name in fields:
        value = getattr(stat, name)
        if name.endswith("zxid") or name == "ephemeral_owner":
            lines.append(f"{name} = {value:#x}")
        else:
            lines.append(f"{name} = {value}")
    return "\n".join(lines)


def _print_data(data: bytes) -> None:
    try:
        print(data.decode())
    except UnicodeDecodeError:
        print(repr(data))


async def _client_command(args: argparse.Namespace) -> int:
    import client

    try:
        with trio.fail_after(args.timeout):
            async with client.connect(_servers(args), session_timeout=max(args.timeout, 2.0)) as zk:
                return await _run_command(zk, args)
    except trio.TooSlowError:
        print(f"coord: no answer from {_servers(args)} within {args.timeout}s", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CoordError as error:
        print(f"coord: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_API_ERROR
    except OSError as error:
        print(f"coord: cannot reach {_servers(args)}: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE


async def _run_command(zk: Any, args: argparse.Namespace) -> int:
    import client

    match args.command:
        case "get":
            data, _stat = await zk.get(args.path)
            _print_data(data)
        case "stat":
            stat = await zk.exists(args.path)
            if stat is None:
                raise client.NoNodeError(args.path)
            print(_format_stat(stat))
        case "ls":
            for name in await zk.get_children(args.path):
                print(name)
        case "create":
            print(
                await zk.create(
                    args.path,
                    args.data.encode(),
                    ephemeral=args.ephemeral,
                    sequence=args.sequence,
                    makepath=args.makepath,
                )
            )
        case "set":
            stat = await zk.set(args.path, args.data.encode(), version=args.version)
            print(f"version = {stat.version}")
        case "rm":
            await zk.delete(args.path, version=args.version, recursive=args.recursive)
        case "watch":
            watch = client.Watch()
            if args.children:
                await zk.get_children(args.path, watch=watch)
            else:
                await zk.exists(args.path, watch=watch)
            with trio.move_on_at(trio.current_time() + 1e9):  # the outer --timeout bounds it
                event = await watch.wait()
                print(f"{event.type.name} {event.path}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
