"""``coord lock`` and ``coord elect``: run a command while holding a lock, or leadership.

::

    coord lock PATH [--timeout S | --nonblocking] [--grace S] [--session-timeout S]
                    [--identifier ID] [--server HOST:PORT,...] -- CMD ARGS...
    coord elect NAME [--grace S] [--session-timeout S] [--identifier ID]
                     [--server HOST:PORT,...] -- CMD ARGS...

``coord lock`` acquires the fair lock at ``PATH`` (:class:`recipes.Lock`), runs
``CMD``, and releases the lock when ``CMD`` exits. ``coord elect`` campaigns in the
election ``NAME`` (the node ``/elections/NAME``, or ``NAME`` itself if it starts with
``/``), runs ``CMD`` once elected, and steps down when ``CMD`` exits. The servers come
from ``--server``, else ``$COORD_SERVERS``, else ``127.0.0.1:2281``.

``CMD`` gets, besides the environment of ``coord``:

- ``COORD_LOCK_TOKEN`` / ``COORD_LEADER_TOKEN``: the fencing token (the lock or
  leader node's czxid, a decimal integer that only grows from one holder to the next):
  pass it to the resource you protect so it can refuse an older holder's writes.
- ``COORD_LOCK_PATH``, ``COORD_LOCK_NODE`` / ``COORD_ELECTION_PATH``, ``COORD_LEADER_NODE``.
- ``COORD_SERVERS``: the servers used.

If the lock or leadership is lost while ``CMD`` runs (the session expired, or no
write could be confirmed for 3/4 of the session timeout, see :mod:`recipes._guard`),
``CMD`` gets SIGTERM, then SIGKILL if it is still running ``--grace`` seconds later,
and ``coord`` exits with status 76. Keep ``--grace`` under a quarter of the session
timeout (2 s of the default 10 s) so that ``CMD`` is gone before another holder can
be granted the lock; the fencing token covers the rest. SIGINT, SIGTERM and SIGHUP
sent to ``coord`` are passed on to ``CMD`` (and ``coord`` then exits with ``CMD``'s
status); before ``CMD`` started they abort the wait (status 128 + signal number). On
Linux, ``CMD`` also gets SIGTERM if ``coord`` itself dies (``PR_SET_PDEATHSIG``), even
by SIGKILL.

Exit status
    ===  =======================================================================
    N    ``CMD``'s own status (128 + signal number if a signal ended it)
    75   not acquired: ``--timeout`` passed, or the lock is held and
         ``--nonblocking`` was given (EX_TEMPFAIL: try again later)
    76   the lock or leadership was lost while ``CMD`` ran; ``CMD`` was stopped
    69   the service could not be reached, or the session was lost before the lock
         or leadership was obtained (EX_UNAVAILABLE)
    2    bad usage (no ``CMD``, bad option)
    126  ``CMD`` could not be executed; 127 ``CMD`` was not found (as shells do)
    ===  =======================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping

import trio

import client
from coord.cli.args import (
    EXIT_USAGE,
    UsageError,
    add_tls_arguments,
    positive_seconds,
    seconds,
    server_list,
    tls_context,
)
from recipes import LeaderElection, Lock, LockLostError, LockTimeoutError

ELECTIONS_PATH = "/elections"

EXIT_UNAVAILABLE = 69
EXIT_NOT_ACQUIRED = 75
EXIT_LOST = 76
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

COMMANDS = ("lock", "elect")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


def add_subcommands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``lock`` and ``elect`` to the ``coord`` command's subparsers."""

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--server", default=None, help="host:port,... (default: $COORD_SERVERS or 127.0.0.1:2281)")
        add_tls_arguments(sub)
        sub.add_argument("--grace", type=seconds, default=2.0, help="seconds between SIGTERM and SIGKILL (default 2)")
        sub.add_argument(
            "--session-timeout",
            type=positive_seconds,
            default=10.0,
            help="session timeout to ask for, seconds (default 10)",
        )
        sub.add_argument("--identifier", default=None, help="shown to other contenders (default: host:pid)")

    saved_class = commands._parser_class
    commands._parser_class = _CommandParser  # split off "-- CMD ARGS" before argparse sees it
    try:
        _add_parsers(commands, common)
    finally:
        commands._parser_class = saved_class


def _add_parsers(commands: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    lock = commands.add_parser(
        "lock",
        usage="coord lock PATH [--timeout S | --nonblocking] [--grace S] [--session-timeout S] [--identifier ID]"
        " [--server HOST:PORT,...] -- CMD [ARGS...]",
        help="run a command while holding a lock",
        description="Acquire the lock at PATH, run CMD, release it when CMD exits. Exit status: CMD's; "
        "75 not acquired; 76 lock lost while CMD ran (CMD stopped); 69 service unavailable.",
    )
    lock.add_argument("path", help="the lock's node, e.g. /locks/backup")
    wait = lock.add_mutually_exclusive_group()
    wait.add_argument("--timeout", type=seconds, default=None, help="give up (status 75) after this many seconds")
    wait.add_argument("--nonblocking", action="store_true", help="give up (status 75) at once if the lock is held")
    common(lock)

    elect = commands.add_parser(
        "elect",
        usage="coord elect NAME [--grace S] [--session-timeout S] [--identifier ID] [--server HOST:PORT,...]"
        " -- CMD [ARGS...]",
        help="run a command only while this process is the leader",
        description="Campaign in the election NAME (/elections/NAME), run CMD once elected, step down when it "
        "exits. Exit status: CMD's; 76 leadership lost while CMD ran (CMD stopped); 69 service unavailable.",
    )
    elect.add_argument("name", help="the election's name (or its node, if it starts with /)")
    common(elect)


class _CommandParser(argparse.ArgumentParser):
    """A subcommand parser that takes everything after the first ``--`` as the command
    (``args.cmd``), so options may come before or after the positional argument."""

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        arg_strings = list(sys.argv[1:] if args is None else args)
        command: list[str] = []
        if "--" in arg_strings:
            split = arg_strings.index("--")
            arg_strings, command = arg_strings[:split], arg_strings[split + 1 :]
        parsed, extras = super().parse_known_args(arg_strings, namespace)
        parsed.cmd = command
        return parsed, extras


def run(args: argparse.Namespace) -> int:
    """Run ``coord lock`` or ``coord elect`` (``args.command``) and return the exit status."""
    command = list(args.cmd)
    if not command:
        print(f"coord {args.command}: no command given (coord {args.command} ... -- CMD ARGS)", file=sys.stderr)
        return EXIT_USAGE
    try:
        args.servers = server_list(args)
        args.ssl_context = tls_context(args)
    except UsageError as error:
        print(f"coord {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    return trio.run(_main, args, command)


def _say(args: argparse.Namespace, message: str) -> None:
    print(f"coord {args.command}: {message}", file=sys.stderr, flush=True)


async def _main(args: argparse.Namespace, command: list[str]) -> int:
    child = _Child(command, args.grace)
    interrupted: list[int] = []
    status: int | None = None
    with trio.open_signal_receiver(*FORWARDED_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as main_scope:
                nursery.start_soon(_forward_signals, signals, child, main_scope, interrupted)
                try:
                    status = await _hold_and_run(args, child)
                finally:
                    nursery.cancel_scope.cancel()
    if status is None:  # a signal came before the command started
        return 128 + interrupted[0]
    return status


async def _forward_signals(
    signals: AsyncIterator[int], child: _Child, main_scope: trio.CancelScope, interrupted: list[int]
) -> None:
    async for signum in signals:
        if child.forward(signum):
            continue
        interrupted.append(signum)  # still waiting for the lock: give up
        main_scope.cancel()
        return


async def _hold_and_run(args: argparse.Namespace, child: _Child) -> int:
    servers = args.servers
    identifier = args.identifier or f"{socket.gethostname()}:{os.getpid()}"
    try:
        async with client.connect(servers, session_timeout=args.session_timeout, ssl_context=args.ssl_context) as zk:
            if args.command == "lock":
                lock = Lock(zk, args.path, identifier)
                try:
                    async with lock.hold(blocking=not args.nonblocking, timeout=args.timeout):
                        env = {
                            "COORD_LOCK_TOKEN": str(lock.token),
                            "COORD_LOCK_PATH": lock.path,
                            "COORD_LOCK_NODE": str(lock.node),
                        }
                        return await child.run({**os.environ, **env, "COORD_SERVERS": servers})
                except LockTimeoutError as error:
                    _say(args, f"not acquired: {error}")
                    return EXIT_NOT_ACQUIRED
            path = args.name if args.name.startswith("/") else f"{ELECTIONS_PATH}/{args.name}"
            election = LeaderElection(zk, path, identifier)
            async with election.campaign():
                env = {
                    "COORD_LEADER_TOKEN": str(election.token),
                    "COORD_ELECTION_PATH": election.path,
                    "COORD_LEADER_NODE": str(election.node),
                }
                return await child.run({**os.environ, **env, "COORD_SERVERS": servers})
    except LockLostError as error:
        _say(args, f"{error}; {child.describe_stop()}")
        return EXIT_LOST
    except client.SessionExpiredError as error:
        _say(args, f"the session was lost before the {args.command} was obtained: {error}")
        return EXIT_UNAVAILABLE
    except (client.ConnectionLossError, OSError) as error:
        _say(args, f"cannot reach {servers}: {error}")
        return EXIT_UNAVAILABLE
    except client.CoordError as error:
        _say(args, f"{type(error).__name__}: {error}")
        return EXIT_UNAVAILABLE
    except _CannotRunError as error:
        _say(args, str(error))
        return error.status


class _CannotRunError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In the child: get SIGTERM when the process that started it dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class _Child:
    """The command: started, waited for, stopped (SIGTERM, then SIGKILL after ``grace``).

    Started with :class:`subprocess.Popen` from the trio thread itself, not from a
    worker thread as :func:`trio.run_process` does, because ``PR_SET_PDEATHSIG``
    fires when the *thread* that forked the child ends, and trio's worker threads
    end when idle.
    """

    def __init__(self, argv: list[str], grace: float) -> None:
        self.argv = argv
        self.grace = grace
        self.popen: subprocess.Popen[bytes] | None = None
        self.killed = False

    def forward(self, signum: int) -> bool:
        """Pass a signal on to the running command. Returns False if none runs."""
        if self.popen is None or self.popen.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signum)
        return True

    def describe_stop(self) -> str:
        if self.popen is None:
            return "the command had not started"
        how = "SIGKILL" if self.killed else "SIGTERM"
        return f"the command was stopped ({how}; its status {self.popen.returncode})"

    async def run(self, env: Mapping[str, str]) -> int:
        """Run the command to its end; if cancelled, stop it first.

        Returns:
            Its exit status (128 + N if signal N ended it).
        """
        preexec: Callable[[], None] | None = _die_with_parent if sys.platform.startswith("linux") else None
        try:
            self.popen = subprocess.Popen(self.argv, env=dict(env), preexec_fn=preexec)
        except FileNotFoundError as error:
            raise _CannotRunError(f"command not found: {error}", EXIT_NOT_FOUND) from error
        except PermissionError as error:
            raise _CannotRunError(f"cannot execute the command: {error}", EXIT_CANNOT_EXECUTE) from error
        try:
            await self._wait()
        finally:
            if self.popen.poll() is None:
                with trio.CancelScope(shield=True):
                    await self._stop()
        code = self.popen.returncode
        return 128 - code if code < 0 else code

    async def _wait(self) -> None:
        assert self.popen is not None
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            fd = pidfd_open(self.popen.pid)
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                os.close(fd)
        else:  # pragma: no cover - not Linux
            while self.popen.poll() is None:
                await trio.sleep(0.05)
        self.popen.wait()

    async def _stop(self) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.grace):
            await self._wait()
            return
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        await self._wait()


__all__ = [
    "COMMANDS",
    "EXIT_CANNOT_EXECUTE",
    "EXIT_LOST",
    "EXIT_NOT_ACQUIRED",
    "EXIT_NOT_FOUND",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "UsageError",
    "add_subcommands",
    "positive_seconds",
    "run",
    "seconds",
    "server_list",
]
