"""What the ``coord`` subcommands share: exit statuses, the server list, argument types."""

from __future__ import annotations

import argparse
import math
import os

import client
from client._connection import parse_hosts

DEFAULT_SERVERS = "127.0.0.1:2281"
EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class UsageError(Exception):
    """Bad usage that the argument parser cannot see (exit status 2); the message says what."""


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a finite, positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text!r}")
    return value


def server_list(args: argparse.Namespace) -> str:
    """The server list: ``--server``, else ``$COORD_SERVERS`` (if set and not empty),
    else the default; every entry must be ``HOST:PORT``.

    Raises:
        UsageError: the list is empty, has an empty entry, or an entry without a port or
            with a port out of range; the message names where the list came from.
    """
    if args.server is not None:
        source, text = "--server", str(args.server)
    elif os.environ.get("COORD_SERVERS"):
        source, text = "$COORD_SERVERS", os.environ["COORD_SERVERS"]
    else:
        return DEFAULT_SERVERS
    try:
        parse_hosts(text, default_port=None)
    except client.BadArgumentsError as error:
        raise UsageError(f"{source}: {error}") from None
    return text


__all__ = [
    "DEFAULT_SERVERS",
    "EXIT_API_ERROR",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "UsageError",
    "positive_seconds",
    "seconds",
    "server_list",
]
