"""The zkCli-like commands of ``coord``: ``status``, ``get``, ``stat``, ``ls``, ``create``,
``set``, ``rm`` and ``watch``.

``coord status`` asks each server of the list over its client port, without a session
(:mod:`coord.status`), and prints the first answer. The others open a session with the
client library, make one call, print its result and close the session.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trio

import client
from client._connection import parse_hosts
from coord import protocol
from coord.cli.args import EXIT_API_ERROR, EXIT_OK, EXIT_UNREACHABLE, stream_opener
from coord.config import format_address
from coord.errors import ConnectionLossError, CoordError
from coord.status import request_status

# --- status -----------------------------------------------------------------------------


async def status(args: argparse.Namespace) -> int:
    """``coord status``: the first server of ``args.servers`` that answers, or why none did."""
    failures = []
    for address in parse_hosts(args.servers, default_port=None):
        name = format_address(address)
        try:
            with trio.fail_after(args.timeout):
                answer = await request_status(address, open_stream=stream_opener(args))
        except (OSError, trio.TooSlowError, protocol.ProtocolError, CoordError) as error:
            failures.append(f"{name}: {error or type(error).__name__}")
            continue
        if args.json:
            print(json.dumps(answer, indent=2, sort_keys=True))
        else:
            for key in ("address", "server_id", "role", "zxid", "sessions", "connections", "znodes", "watches"):
                value = answer.get(key)
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
    return await request_status((host, port))


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


async def client_command(args: argparse.Namespace) -> int:
    """``coord get``, ``stat``, ``ls``, ``create``, ``set``, ``rm``, ``watch``: one call on a new session."""
    try:
        with trio.fail_after(args.timeout):
            # fail_fast: when nothing listens, say so at once rather than after --timeout
            async with client.connect(
                args.servers, session_timeout=max(args.timeout, 2.0), fail_fast=True, ssl_context=args.ssl_context
            ) as zk:
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


async def _run_command(zk: client.Client, args: argparse.Namespace) -> int:
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
