"""The ``coord`` command: run a server, and poke at an ensemble like zkCli.

::

    coord serve [--config FILE.toml] [--data-dir DIR] [--listen HOST:PORT]
    coord ensemble [--size 3] [--data-dir DIR] [--base-port P]
    coord status [--server HOST:PORT,...]
    coord backup [--server HOST:PORT,...] FILE
    coord restore FILE --data-dir DIR
    coord get PATH | stat PATH | ls PATH | create PATH [DATA] | set PATH DATA | rm PATH | watch PATH

Client commands take ``--server host:port,...`` or the ``COORD_SERVERS``
environment variable (default ``127.0.0.1:2281``); every entry needs its port. They
give up at once when every server refuses the connection (nothing listens), and
otherwise after ``--timeout`` seconds. Exit status: 0 on success, 1 when the service
answered with an error (e.g. no such node) or a server cannot start, 2 for bad usage
or bad configuration, 3 when no server could be reached.

Errors are one line on stderr starting with ``coord:``, naming what is wrong (the
configuration key, the data directory, the address in use); a traceback means a bug.

The commands live in :mod:`coord.cli.serve`, :mod:`coord.cli.ensemble`,
:mod:`coord.cli.commands` (status and the zkCli-like ones), :mod:`coord.cli.lock`
(``lock`` and ``elect``) and :mod:`coord.cli.backup` (``backup`` and ``restore``); this
module parses the arguments and dispatches. The server and storage commands are
imported only when run, so the client commands start quickly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from coord.cli import lock
from coord.cli.args import (
    DEFAULT_SERVERS,
    EXIT_API_ERROR,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
    add_tls_arguments,
    positive_seconds,
    server_list,
    tls_context,
)
from coord.cli.commands import client_command, fetch_status, status
from coord.config import ConfigError


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
        sub.add_argument("--timeout", type=positive_seconds, default=10.0, help="seconds to wait for the service")
        add_tls_arguments(sub)
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
    backup = client_command("backup", "write a consistent snapshot of a running server's tree to FILE")
    backup.add_argument("file", help="the backup file to write (replaced only once complete)")
    restore = commands.add_parser("restore", help="make a new server's data directory from a backup FILE")
    restore.add_argument("file", help="a file written by coord backup")
    restore.add_argument("--data-dir", required=True, help="the data directory to create (absent or empty)")
    lock.add_subcommands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet = args.command not in ("serve", "ensemble")  # client commands print only their answers
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            from coord.cli.serve import serve

            return serve(args)
        if args.command == "ensemble":
            from coord.cli.ensemble import ensemble

            return ensemble(args)
        if args.command == "restore":
            from coord.cli.backup import restore

            return restore(args)
        if args.command in lock.COMMANDS:
            return lock.run(args)
        args.servers = server_list(args)
        args.ssl_context = tls_context(args)
        if args.command == "status":
            return trio.run(status, args)
        if args.command == "backup":
            from coord.cli.backup import backup

            return trio.run(backup, args)
        return trio.run(client_command, args)
    except ConfigError as error:
        print(f"coord: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as error:
        print(f"coord: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


__all__ = [
    "DEFAULT_SERVERS",
    "EXIT_API_ERROR",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "fetch_status",
    "main",
]
