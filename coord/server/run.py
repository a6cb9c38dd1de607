"""Servers as the program: what ``coord serve`` (and ``coord ensemble``) do below argument parsing.

- Before starting, check that every address can be listened on, and say in one line which
  one cannot and why (:func:`cannot_listen`).
- Serve until SIGINT or SIGTERM (:func:`run_server`), printing ``coord: serving on ...``
  once the server listens.
- When the server cannot start, or stops on an error, say why in one line on stderr
  (:func:`explain`): the data directory that is not writable, the address in use. An
  error nobody foresaw is re-raised, so its traceback is seen (it is a bug).

:func:`run_server` takes the :class:`~coord.server.Server` type to build and extra signals
to handle: the test ensemble's server processes (:mod:`coord.testing.serve`) are this
same program with its fault hooks added (SIGUSR1 isolates the server, SIGUSR2 heals it).
``coord serve`` adds nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import trio

from coord.config import Address, ServerConfig, format_address
from coord.errors import CoordError, StorageError
from coord.recovery import RecoveryError
from coord.server.shell import Server, open_server

log = logging.getLogger("coord")

Named = list[tuple[str, Address, str]]
"""Addresses a command listens on, each with what it is (``"client address"``) and a
hint for when it is in use."""

SignalHandler = Callable[[Server], None]
"""What to do with the running server when a signal arrives (it keeps serving)."""

_BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def run_server(
    config: ServerConfig,
    *,
    server_type: type[Server] = Server,
    signal_handlers: Mapping[int, SignalHandler] | None = None,
) -> int:
    """Serve ``config`` in this process until SIGINT or SIGTERM; return the exit status.

    0 after a signal; 1 when the server cannot start or stopped on an error, said in
    one line on stderr. ``signal_handlers`` are run on the server for their signals.

    Raises:
        Whatever stopped the server that :func:`explain` cannot explain (a bug).
    """
    addresses = server_addresses(config)
    problem = cannot_listen(addresses)
    if problem is not None:
        print(f"coord: {problem}", file=sys.stderr)
        return 1
    serving: list[bool] = []
    try:
        trio.run(_serve_until_signalled, config, server_type, dict(signal_handlers or {}), serving)
    except (Exception, BaseExceptionGroup) as error:
        message = explain(error, data_dir=config.data_dir, addresses=addresses, action="start", started=bool(serving))
        if message is None:
            raise
        print(f"coord: {message}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signalled(
    config: ServerConfig,
    server_type: type[Server],
    handlers: dict[int, SignalHandler],
    serving: list[bool],
) -> None:
    handlers = {signal.SIGHUP: Server.reload_tls, **handlers}  # SIGHUP: certificates reloaded, no restart
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, *handlers) as signals:
        async with open_server(config, server_type=server_type) as server:
            print(f"coord: serving on {server.connect_string} (data in {config.data_dir})", flush=True)
            serving.append(True)
            async for signum in signals:
                handler = handlers.get(signum)
                if handler is not None:
                    handler(server)
                    continue
                log.info("received %s; shutting down", signal.Signals(signum).name)
                break


def server_addresses(config: ServerConfig) -> Named:
    """What one server listens on: its client address, and its peer address in an ensemble."""
    if config.ensemble is None:
        return [("client address", (config.listen_host, config.listen_port), "")]
    server_id = config.server_id
    hint = f"is server {server_id} running already?"
    return [
        (f"client address of server {server_id}", (config.listen_host, config.listen_port), hint),
        (f"peer address of server {server_id}", config.ensemble.servers[server_id].peer, hint),
    ]


def bind_error(address: Address) -> OSError | None:
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


def cannot_listen(addresses: Named) -> str | None:
    """Before starting: the first address that cannot be listened on, said in one line."""
    for what, address, hint in addresses:
        if address[1] == 0:
            continue
        error = bind_error(address)
        if error is not None:
            return listen_message(what, address, hint, error.errno, error.strerror)
    return None


def listen_message(what: str, address: Address, hint: str, code: int | None, reason: str | None) -> str:
    """One line: ``address`` (``what`` it is) cannot be listened on, with ``hint`` when it is in use."""
    name = format_address(address)
    if code == errno.EADDRINUSE:
        return f"address {name} ({what}) is already in use" + (f" ({hint})" if hint else "")
    return f"cannot listen on {name} ({what}): {reason or os.strerror(code or 0)}"


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions in ``error``, with trio's (nested) exception groups opened."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def explain(error: BaseException, *, data_dir: Path, addresses: Named, action: str, started: bool) -> str | None:
    """One line saying why the server(s) could not ``action`` (or, once ``started``,
    why they stopped), or None for an error nobody foresaw (a bug, whose traceback
    must be seen)."""
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
            again = bind_error(address) if address[1] else None
            if again is not None and again.errno == leaf.errno:
                return listen_message(what, address, hint, leaf.errno, leaf.strerror)
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


__all__ = [
    "Named",
    "SignalHandler",
    "bind_error",
    "cannot_listen",
    "explain",
    "listen_message",
    "run_server",
    "server_addresses",
]
