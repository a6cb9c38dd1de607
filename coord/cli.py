"""The ``coord`` command: run a server, and poke at an ensemble like zkCli.

::

    coord serve [--config FILE.toml] [--data-dir DIR] [--listen HOST:PORT]
    coord ensemble [--size 3] [--data-dir DIR] [--base-port P]
    coord status [--server HOST:PORT,...]
    coord get PATH | stat PATH | ls PATH | create PATH [DATA] | set PATH DATA | rm PATH | watch PATH

Client commands take ``--server host:port,...`` or the ``COORD_SERVERS``
environment variable (default ``127.0.0.1:2281``); every entry needs its port. They
give up at once when every server refuses the connection (nothing listens), and
otherwise after ``--timeout`` seconds. Exit status: 0 on success, 1 when the service
answered with an error (e.g. no such node) or a server cannot start, 2 for bad usage
or bad configuration, 3 when no server could be reached.

Errors are one line on stderr starting with ``coord:``, naming what is wrong (the
configuration key, the data directory, the address in use); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from client._connection import parse_hosts
from coord import lockcli, protocol
from coord.config import Address, ConfigError, ServerConfig, format_address, load_config
from coord.errors import ConnectionLossError, CoordError, StorageError

DEFAULT_SERVERS = "127.0.0.1:2281"
EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
ENSEMBLE_SIZE_MAX = 9
PEER_PORT_OFFSET = 999
"""``coord ensemble``: server N's client port is base + N - 1, its peer port base + 999 + N."""


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
        "--base-port",
        type=int,
        default=2281,
        help="client ports from here, peer ports from here + 1000 (0: any free ports; default %(default)s)",
    )

    def client_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--server", default=None, help="host:port,... (default: $COORD_SERVERS or %(default)s)")
        sub.add_argument(
            "--timeout", type=lockcli.positive_seconds, default=10.0, help="seconds to wait for the service"
        )
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
    """The checked server list (see :func:`coord.lockcli.server_list`)."""
    return lockcli.server_list(args)


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
        if args.command in lockcli.COMMANDS:
            return lockcli.run(args)
        args.servers = _servers(args)
        if args.command == "status":
            return trio.run(_status, args)
        return trio.run(_client_command, args)
    except ConfigError as error:
        print(f"coord: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except lockcli.UsageError as error:
        print(f"coord: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


# --- serve ----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    if not __debug__:
        from coord.server import OPTIMIZED_REFUSAL

        print(f"coord: {OPTIMIZED_REFUSAL}", file=sys.stderr)
        return 1
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["server.data_dir"] = args.data_dir
    if args.listen is not None:
        overrides["server.listen"] = args.listen
    config = load_config(args.config, overrides=overrides)
    addresses = _server_addresses(config)
    problem = _cannot_listen(addresses)
    if problem is not None:
        print(f"coord: {problem}", file=sys.stderr)
        return 1
    serving: list[bool] = []
    try:
        trio.run(_run_server, config, serving)
    except (Exception, BaseExceptionGroup) as error:
        message = _explain(error, data_dir=config.data_dir, addresses=addresses, action="start", started=bool(serving))
        if message is None:
            raise
        print(f"coord: {message}", file=sys.stderr)
        return 1
    return 0


_Named = list[tuple[str, Address, str]]
"""Addresses a command listens on, each with what it is (``"client address"``) and a
hint for when it is in use."""


def _server_addresses(config: ServerConfig) -> _Named:
    if config.ensemble is None:
        return [("client address", (config.listen_host, config.listen_port), "")]
    server_id = config.server_id
    hint = f"is server {server_id} running already?"
    return [
        (f"client address of server {server_id}", (config.listen_host, config.listen_port), hint),
        (f"peer address of server {server_id}", config.ensemble.servers[server_id].peer, hint),
    ]


_BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _bind_error(address: Address) -> OSError | None:
    """Why ``address`` cannot be listened on right now (None: it can, or it cannot be
    checked, e.g. the host does not resolve). Binds the way trio does (SO_REUSEADDR,
    IPv6 only for IPv6), then lets go at once."""
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None
    for family, kind, proto, _, sockaddr in infos:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as error:
                if error.errno in _BIND_ERRORS:
                    return error
    return None


def _cannot_listen(addresses: _Named) -> str | None:
    """Before starting: the first address that cannot be listened on, said in one line."""
    for what, address, hint in addresses:
        if address[1] == 0:
            continue
        error = _bind_error(address)
        if error is not None:
            return _listen_message(what, address, hint, error.errno, error.strerror)
    return None


def _listen_message(what: str, address: Address, hint: str, code: int | None, reason: str | None) -> str:
    name = format_address(address)
    if code == errno.EADDRINUSE:
        return f"address {name} ({what}) is already in use" + (f" ({hint})" if hint else "")
    return f"cannot listen on {name} ({what}): {reason or os.strerror(code or 0)}"


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions in ``error``, with trio's (nested) exception groups opened."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _explain(error: BaseException, *, data_dir: Path, addresses: _Named, action: str, started: bool) -> str | None:
    """One line saying why the server(s) could not ``action`` (or, once ``started``,
    why they stopped), or None for an error nobody foresaw (a bug, whose traceback
    must be seen)."""
    from coord.recovery import RecoveryError

    leaves = _leaves(error)
    if not leaves or not all(isinstance(leaf, OSError | CoordError | RecoveryError) for leaf in leaves):
        return None
    leaf = leaves[0]
    if isinstance(leaf, OSError) and leaf.filename is not None and leaf.errno in _NOT_WRITABLE:
        return f"data directory {data_dir} is not writable ({leaf.strerror}: {leaf.filename})"
    if isinstance(leaf, StorageError) and _read_only(leaf.__cause__):
        return f"data directory {data_dir} is not writable ({leaf.__cause__})"
    if isinstance(leaf, OSError) and leaf.filename is None and leaf.errno in _BIND_ERRORS:
        # Checked before starting, so something took the address meanwhile.
        for what, address, hint in addresses:
            again = _bind_error(address) if address[1] else None
            if again is not None and again.errno == leaf.errno:
                return _listen_message(what, address, hint, leaf.errno, leaf.strerror)
        names = " or ".join(format_address(address) for _, address, _ in addresses)
        return f"cannot listen on {names}: {leaf.strerror or leaf}"
    return f"stopped: {leaf}" if started else f"cannot {action}: {leaf}"


def _read_only(cause: BaseException | None) -> bool:
    """Whether LMDB failed to open the log because it may not write there."""
    if cause is None:
        return False
    import lmdb

    if isinstance(cause, lmdb.ReadonlyError):  # LMDB's name for EACCES
        return True
    text = str(cause)
    return any(os.strerror(code) in text for code in _NOT_WRITABLE)


FAULT_HOOKS_ENV = "COORD_FAULT_HOOKS"
"""Set to 1 (tests only) to let SIGUSR1 isolate the server from its peers and clients
and SIGUSR2 heal it: how :mod:`coord.testing` cuts off a server process."""


async def _run_server(config: Any, serving: list[bool]) -> None:
    from coord.server import open_server

    fault_hooks = os.environ.get(FAULT_HOOKS_ENV) == "1"
    handled = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR1, signal.SIGUSR2] if fault_hooks else [])
    with trio.open_signal_receiver(*handled) as signals:
        async with open_server(config) as server:
            print(f"coord: serving on {server.connect_string} (data in {config.data_dir})", flush=True)
            serving.append(True)
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
    from coord.testing import HOST

    addresses: _Named = []
    if args.base_port:
        for server_id in range(1, args.size + 1):
            client_port, peer_port = args.base_port + server_id - 1, args.base_port + PEER_PORT_OFFSET + server_id
            addresses.append((f"client address of server {server_id}", (HOST, client_port), ""))
            addresses.append((f"peer address of server {server_id}", (HOST, peer_port), ""))
    problem = _cannot_listen(addresses)
    if problem is not None:
        print(f"coord: {problem}", file=sys.stderr)
        return 1
    serving: list[bool] = []
    try:
        trio.run(_run_ensemble, args, serving)
    except (Exception, BaseExceptionGroup) as error:
        message = _explain(
            error, data_dir=args.data_dir, addresses=addresses, action="start the ensemble", started=bool(serving)
        )
        if message is None:
            raise
        print(f"coord: {message}", file=sys.stderr)
        return 1
    return 0


async def _run_ensemble(args: argparse.Namespace, serving: list[bool]) -> None:
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
            serving.append(True)
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
    for address in parse_hosts(args.servers, default_port=None):
        name = format_address(address)
        try:
            with trio.fail_after(args.timeout):
                status = await fetch_status(name)
        except (OSError, trio.TooSlowError, protocol.ProtocolError) as error:
            failures.append(f"{name}: {error or type(error).__name__}")
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


async def fetch_status(address: str) -> dict[str, Any]:
    """Ask one server for its status over the client port (no session is opened).

    Raises:
        BadArgumentsError: ``address`` is not ``HOST:PORT`` (or ``[IPV6]:PORT``).
    """
    ((host, port),) = parse_hosts(address, default_port=None)
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
            # fail_fast: when nothing listens, say so at once rather than after --timeout
            async with client.connect(args.servers, session_timeout=max(args.timeout, 2.0), fail_fast=True) as zk:
                return await _run_command(zk, args)
    except trio.TooSlowError:
        print(f"coord: no answer from {args.servers} within {args.timeout:g}s", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ConnectionLossError as error:
        print(f"coord: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CoordError as error:
        print(f"coord: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_API_ERROR
    except OSError as error:
        print(f"coord: cannot reach {args.servers}: {error}", file=sys.stderr)
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
