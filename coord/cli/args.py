"""What the ``coord`` subcommands share: exit statuses, the server list, argument types."""

from __future__ import annotations

import argparse
import math
import os
import ssl
from collections.abc import Awaitable, Callable

import client
from client._connection import open_tcp, parse_hosts
from client._tls import tls_opener

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


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls``, ``--tls-ca``, ``--tls-cert``, ``--tls-key``: how a client command speaks TLS."""
    parser.add_argument("--tls", action="store_true", help="speak TLS, trusting the system's CAs")
    parser.add_argument("--tls-ca", metavar="FILE", help="speak TLS, trusting this CA ($COORD_TLS_CA)")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate for TLS ($COORD_TLS_CERT)")
    parser.add_argument("--tls-key", metavar="FILE", help="its private key ($COORD_TLS_KEY)")


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context the flags (or ``$COORD_TLS_*``) ask for; None: plain TCP.

    Raises:
        UsageError: a key without a certificate, or a file that does not load.
    """
    ca = args.tls_ca or os.environ.get("COORD_TLS_CA") or None
    cert = args.tls_cert or os.environ.get("COORD_TLS_CERT") or None
    key = args.tls_key or os.environ.get("COORD_TLS_KEY") or None
    if not (args.tls or ca or cert or key):
        return None
    if key and not cert:
        raise UsageError("--tls-key: needs --tls-cert (the certificate it belongs to)")
    try:
        return client.client_context(ca, cert, key)
    except (OSError, ssl.SSLError) as error:
        what = "--tls-ca" if ca and not cert else "--tls-cert/--tls-ca"
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
        raise UsageError(f"{what}: cannot load the TLS files: {reason}") from None


def stream_opener(args: argparse.Namespace) -> Callable[[str, int], Awaitable[object]]:
    """How the command reaches a server: TCP, or TLS when the flags ask for it."""
    context = getattr(args, "ssl_context", None)
    return tls_opener(context) if context is not None else open_tcp


__all__ = [
    "add_tls_arguments",
    "stream_opener",
    "tls_context",
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
