"""An embedded ensemble for tests: real servers on loopback ephemeral ports, temp data dirs.

::

    async with open_ensemble(3) as ensemble:            # in this process (the default)
        await ensemble.wait_for_leader()
        async with client.connect(ensemble.connect_string) as zk:
            ...
        await ensemble.kill(ensemble.leader_id())       # as kill -9
        await ensemble.wait_for_leader()

    async with open_ensemble(3, processes=True) as ensemble:   # one OS process per server
        ensemble.pause(2)                                        # SIGSTOP ... SIGCONT
        ensemble.resume(2)

    with EnsembleThread(size=3) as ensemble:            # from code that is not trio
        connect_to(ensemble.connect_string)
        ensemble.kill(ensemble.wait_for_leader())

Two ways to run the servers
    In-process (default): every server is the real one (:func:`coord.server.open_server`)
    as a task of the caller's trio loop, with real sockets on 127.0.0.1, real LMDB files
    and real ZAB between them. ``kill`` cancels the server's task: nothing more reaches
    its disk, as with ``kill -9`` (every acknowledged write was already fsynced), and its
    sockets close at once. Fast to start, and the test can reach into each
    :class:`~coord.server.Server` (``ensemble.server(1).tree``); ``isolate`` and
    ``expire_session(session_id)`` use the server's fault hooks.

    Processes (``processes=True``): every server is ``python -m coord.cli serve --config
    FILE`` with a generated TOML file (the ``[ensemble]`` table of :mod:`coord.config`).
    ``kill`` is SIGKILL, ``pause``/``resume`` are SIGSTOP/SIGCONT, and the servers really
    run in parallel. Roles are learnt over the client port (:func:`coord.cli.fetch_status`),
    polled in the background, so :meth:`Ensemble.leader_id` may lag a change by ~0.1 s;
    :meth:`Ensemble.wait_for_leader` always asks afresh. Each server's output goes to
    ``server-N.log`` beside its data directory (:meth:`ServerProcess.log_tail`).

    ``isolate``/``heal`` of a process send it SIGUSR1/SIGUSR2, which a server started
    with ``COORD_FAULT_HOOKS=1`` in its environment (as these are) turns into the same
    fault hook: its peer links close and its clients are dropped until healed.
    ``expire_session`` works in both modes when given the
    client (or its ``client_id``): a process ensemble closes the session from a second
    connection that presents its credentials (what Curator's ``KillSession`` does), which
    removes its ephemerals and makes the client's next reconnect see the expiry.

Controls, both modes: ``kill``/``stop``/``restart``, ``wait_for_leader`` (a leader and
every running server serving), ``wait_converged`` (every server at the same zxid),
``status(i)`` (what ``coord status`` shows), ``expire_session`` and ``restore`` (undo
every fault: resume, heal, restart, then wait for a leader). A 3-server ensemble is
ready (leader elected, all serving) in about 0.2 s in-process and 1.5-2.5 s as
processes (mostly interpreter start-up).

Ports: in-process servers bind port 0 and keep the ports they got across restarts.
Process servers need their ports before they start (each must be written into every
server's file), so they get free ports picked below the kernel's ephemeral range (where
no outgoing connection can take one between the pick and the bind); a start that still
loses the race is retried on new ports.

Temporary data directories are removed when the block ends unless ``data_dir`` is given.

:class:`EnsembleThread` runs an ensemble on its own trio loop in a background thread, for
code that is not trio: a plain pytest or unittest test, or an asyncio program.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import outcome
import trio

import coord
from coord import protocol
from coord.config import EnsembleConfig, EnsembleMember, ServerConfig, format_address
from coord.server import Server, open_server

log = logging.getLogger(__name__)

Address = tuple[str, int]
T = TypeVar("T")

HOST = "127.0.0.1"
STATUS_POLL_S = 0.1
"""How often a process ensemble refreshes every server's role in the background."""
STATUS_TIMEOUT_S = 1.0
"""How long one status request may take (a paused server never answers)."""
PROCESS_START_TIMEOUT_S = 30.0
"""How long a server process may take to listen on its client port."""
PROCESS_STOP_GRACE_S = 5.0
"""How long a process ensemble waits for SIGTERM before it sends SIGKILL."""
START_ATTEMPTS = 3
"""Tries at starting a process ensemble when a picked port was taken meanwhile."""

_SERVER_ROLES = ("leader", "standalone")
_STATUS_ERRORS = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    protocol.ProtocolError,
)
"""What asking a server that is down, starting, stopping or paused may raise."""

# ServerConfig field -> (TOML table, key), for the overrides of a process ensemble.
_TOML_KEYS: dict[str, tuple[str, str]] = {
    "max_connections": ("server", "max_connections"),
    "min_session_timeout_ms": ("sessions", "min_timeout_ms"),
    "max_session_timeout_ms": ("sessions", "max_timeout_ms"),
    "snapshot_every_txns": ("storage", "snapshot_every_txns"),
    "snapshots_retained": ("storage", "snapshots_retained"),
    "log_map_bytes": ("storage", "log_map_bytes"),
    "data_bytes_max": ("limits", "data_bytes_max"),
    "txn_bytes_max": ("limits", "txn_bytes_max"),
    "path_bytes_max": ("limits", "path_bytes_max"),
    "path_depth_max": ("limits", "path_depth_max"),
    "connection_outstanding_max": ("limits", "connection_outstanding_max"),
    "connection_inflight_bytes_max": ("limits", "connection_inflight_bytes_max"),
    "connection_outbox_bytes_max": ("limits", "connection_outbox_bytes_max"),
    "outbox_bytes_total_max": ("limits", "outbox_bytes_total_max"),
    "connection_stall_ms": ("limits", "connection_stall_ms"),
}


class HasClientId(Protocol):
    """Anything with kazoo's ``client_id``: ``(session_id, password)`` (a ``client.Client``)."""

    @property
    def client_id(self) -> tuple[int, bytes]: ...


SessionTarget = int | tuple[int, bytes] | HasClientId
"""What :meth:`Ensemble.expire_session` takes: a session id (in-process only), a
``(session_id, password)`` pair, or a client."""


class _Member:
    """One in-process server: its configuration and, while it runs, its task."""

    def __init__(self, server_id: int, config: ServerConfig) -> None:
        self.server_id = server_id
        self.config = config
        self.server: Server | None = None
        self.scope: trio.CancelScope | None = None
        self.stopped = trio.Event()

    @property
    def client_address(self) -> Address:
        return self.config.listen_host, self.config.listen_port

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir


class ServerProcess:
    """One server of a process ensemble: ``python -m coord.cli serve --config FILE``.

    Attributes:
        server_id: its id in the ensemble.
        config_path: its generated TOML file.
        data_dir: its LMDB log and snapshots.
        log_path: its stdout and stderr, appended across restarts.
        client_address, peer_address: where clients and peers reach it.
        process: the running process, or None while killed.
        is_paused: stopped with SIGSTOP (see :meth:`Ensemble.pause`).
        exit_codes: the status of every exit so far (negative: killed by that signal).
        last_status: the last status it answered (None while down or paused).
    """

    def __init__(
        self, server_id: int, config_path: Path, data_dir: Path, log_path: Path, client: Address, peer: Address
    ) -> None:
        self.server_id = server_id
        self.config_path = config_path
        self.data_dir = data_dir
        self.log_path = log_path
        self.client_address = client
        self.peer_address = peer
        self.process: trio.Process | None = None
        self.is_paused = False
        self.is_isolated = False
        self.exit_codes: list[int] = []
        self.last_status: dict[str, Any] | None = None
        self.exited = trio.Event()

    def exited_with(self, process: trio.Process) -> None:
        """Record that ``process`` (this server's current or an earlier one) is gone. Idempotent."""
        assert process.returncode is not None
        if self.process is process:
            self.exit_codes.append(process.returncode)
            self.process = None
            self.last_status = None
            self.is_paused = False
            self.exited.set()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def is_running(self) -> bool:
        return self.process is not None

    @property
    def connect_string(self) -> str:
        return format_address(self.client_address)

    @property
    def role(self) -> str:
        """The role it last reported: ``leader``, ``follower``, ``looking``, ``standalone``, or ``down``."""
        if self.process is None:
            return "down"
        return "looking" if self.last_status is None else str(self.last_status.get("role", "looking"))

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "coord.cli", "serve", "--config", str(self.config_path)]

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of its output (for failure reports)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<ServerProcess {self.server_id} pid={self.pid} {self.connect_string} {self.role}>"


class Ensemble:
    """A running embedded ensemble, in-process or one process per server. Made by :func:`open_ensemble`.

    Servers are numbered 1..size. Methods that name a server take its id.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        members: Mapping[int, _Member | ServerProcess],
        *,
        base_dir: Path | None = None,
    ) -> None:
        self._nursery = nursery
        self._members: dict[int, Any] = dict(members)
        self.processes = any(isinstance(member, ServerProcess) for member in members.values())
        """True when every server is an OS process (``open_ensemble(processes=True)``)."""
        self.base_dir = base_dir
        """The directory holding every server's data directory (and logs and configs)."""
        self._env = _child_environment()

    # --- addresses and handles --------------------------------------------------------

    @property
    def connect_string(self) -> str:
        """``host:port,...`` of every server's client port (what ``client.connect`` takes)."""
        return ",".join(format_address(member.client_address) for member in self._members.values())

    @property
    def server_ids(self) -> list[int]:
        return list(self._members)

    @property
    def servers(self) -> dict[int, Any]:
        """Server id -> the running server, None while killed.

        In-process: the :class:`~coord.server.Server`. Processes: its :class:`ServerProcess`.
        """
        if self.processes:
            return {server_id: (member if member.is_running else None) for server_id, member in self._members.items()}
        return {server_id: member.server for server_id, member in self._members.items()}

    def server(self, server_id: int) -> Any:
        """The running server ``server_id`` (a :class:`~coord.server.Server`, or a
        :class:`ServerProcess` with ``processes=True``).

        Raises:
            RuntimeError: it is not running.
        """
        server = self.servers[server_id]
        if server is None:
            raise RuntimeError(f"server {server_id} is not running")
        return server

    def process(self, server_id: int) -> ServerProcess:
        """The :class:`ServerProcess` of ``server_id``, running or not (processes only)."""
        member = self._members[server_id]
        if not isinstance(member, ServerProcess):
            raise RuntimeError("this ensemble runs in-process; open it with processes=True")
        return member

    def address(self, server_id: int) -> Address:
        """``(host, port)`` of a server's client port (stable across restarts)."""
        return self._members[server_id].client_address

    def connect_string_of(self, server_id: int) -> str:
        """The connection string of one server alone."""
        return format_address(self.address(server_id))

    def data_dir(self, server_id: int) -> Path:
        """A server's data directory (its ``log/`` and ``snapshots/``)."""
        return self._members[server_id].data_dir

    def server_id_at(self, address: tuple[str, int]) -> int:
        """The id of the server whose client port is ``address`` (e.g. ``zk.server_address``)."""
        for server_id, member in self._members.items():
            if member.client_address == tuple(address):
                return server_id
        raise KeyError(f"no server listens on {address}")

    def is_running(self, server_id: int) -> bool:
        member = self._members[server_id]
        return member.is_running if isinstance(member, ServerProcess) else member.server is not None

    # --- roles ------------------------------------------------------------------------

    def leader_id(self) -> int | None:
        """The id of a running server that leads an established epoch, if any.

        An isolated server is left out (it may still believe it leads until it notices
        it lost its quorum). With processes this is what the background poll last saw
        (up to ~0.1 s old).
        """
        for server_id, member in self._members.items():
            if isinstance(member, ServerProcess):
                if member.is_running and not member.is_paused and member.role in _SERVER_ROLES:
                    return server_id
            elif member.server is not None and member.server.role in _SERVER_ROLES and not member.server.is_isolated:
                return server_id
        return None

    def leader(self) -> Any:
        """The leading server (``Server`` or ``ServerProcess``), or None."""
        server_id = self.leader_id()
        return None if server_id is None else self.servers[server_id]

    async def status(self, server_id: int) -> dict[str, Any]:
        """What ``coord status`` shows for one server (role, zxid, sessions, znodes...).

        Raises:
            RuntimeError: it is not running. OSError, trio.TooSlowError: it did not answer.
        """
        member = self._members[server_id]
        if isinstance(member, ServerProcess):
            if not member.is_running:
                raise RuntimeError(f"server {server_id} is not running")
            with trio.fail_after(STATUS_TIMEOUT_S):
                return await _fetch_status(member.client_address)
        return self.server(server_id).status()

    async def wait_for_leader(self, timeout: float = 30.0) -> int:
        """Wait until a leader is established and every running server serves; return its id.

        Servers that are isolated (in-process) or paused (processes) are not waited for.

        Raises:
            trio.TooSlowError: not within ``timeout`` seconds.
        """
        with trio.fail_after(timeout):
            while True:
                leader = await self._settled_leader()
                if leader is not None:
                    return leader
                await trio.sleep(0.01)  # polling a condition, bounded by fail_after

    async def _settled_leader(self) -> int | None:
        if not self.processes:
            running = [m.server for m in self._members.values() if m.server is not None]
            leader = self.leader_id()
            if leader is not None and all(server.is_serving for server in running if not server.is_isolated):
                return leader
            return None
        members = [m for m in self._members.values() if m.is_running and not m.is_paused]
        await self._refresh(members)
        leaders = [m.server_id for m in members if m.role in _SERVER_ROLES]
        if len(leaders) != 1:
            return None
        for member in members:
            status = member.last_status
            if status is None or status.get("role") not in (*_SERVER_ROLES, "follower"):
                return None
            if status.get("role") == "follower" and status.get("leader") != leaders[0]:
                return None
        return leaders[0]

    async def wait_converged(self, timeout: float = 30.0) -> int:
        """Wait until every running server has applied the same zxid; return it.

        Useful after :meth:`heal`/:meth:`restart` before comparing the servers' trees.
        Isolated and paused servers are not waited for.
        """
        with trio.fail_after(timeout):
            while True:
                zxids = set()
                for server_id in self.server_ids:
                    member = self._members[server_id]
                    if not self.is_running(server_id) or getattr(member, "is_paused", False):
                        continue
                    if not self.processes and member.server.is_isolated:
                        continue
                    try:
                        zxids.add((await self.status(server_id))["zxid"])
                    except _STATUS_ERRORS:
                        zxids.add(None)
                if len(zxids) == 1 and None not in zxids:
                    return int(zxids.pop())
                await trio.sleep(0.02)  # polling a condition, bounded by fail_after

    async def _refresh(self, members: list[ServerProcess]) -> None:
        async def one(member: ServerProcess) -> None:
            try:
                with trio.fail_after(STATUS_TIMEOUT_S):
                    member.last_status = await _fetch_status(member.client_address)
            except _STATUS_ERRORS:
                member.last_status = None

        async with trio.open_nursery() as nursery:
            for member in members:
                nursery.start_soon(one, member)

    async def _poll_roles(self) -> None:
        """Keep every process's ``last_status`` fresh, for :meth:`leader_id`."""
        while True:
            await self._refresh([m for m in self._members.values() if m.is_running and not m.is_paused])
            await trio.sleep(STATUS_POLL_S)

    # --- faults -----------------------------------------------------------------------

    async def kill(self, server_id: int) -> None:
        """Stop a server at once (as ``kill -9``): no goodbye to clients or peers.

        In-process the server's task is cancelled; a process gets SIGKILL (also when
        paused). Returns once it is gone. Killing a stopped server does nothing.
        """
        member = self._members[server_id]
        if isinstance(member, ServerProcess):
            process = member.process
            if process is None:
                return
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            member.last_status = None
            with trio.fail_after(30):
                await process.wait()
            member.exited_with(process)
            return
        if member.scope is None:
            return
        member.scope.cancel()
        with trio.fail_after(30):
            await member.stopped.wait()

    async def stop(self, server_id: int) -> None:
        """Stop a server the polite way (SIGTERM for a process, SIGKILL after a grace
        period); in-process this is :meth:`kill`. Returns once it is gone."""
        member = self._members[server_id]
        if not isinstance(member, ServerProcess):
            await self.kill(server_id)
            return
        process = member.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if member.is_paused:
                process.send_signal(signal.SIGCONT)
                member.is_paused = False
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(PROCESS_STOP_GRACE_S):
            await process.wait()
        await self.kill(server_id)

    async def restart(self, server_id: int) -> Any:
        """Start a stopped server again, on its ports and its data directory.

        Returns once it listens (it serves once it has joined a leader: see
        :meth:`wait_for_leader`). In-process returns the new :class:`~coord.server.Server`,
        with processes its :class:`ServerProcess`.

        Raises:
            RuntimeError: it is running, or (processes) it exited instead of listening.
        """
        member = self._members[server_id]
        if isinstance(member, ServerProcess):
            if member.is_running:
                raise RuntimeError(f"server {server_id} is running")
            await self._spawn(member)
            return member
        if member.server is not None:
            raise RuntimeError(f"server {server_id} is running")
        host, port = member.client_address
        client_listener = (await trio.open_tcp_listeners(port, host=host))[0]
        ensemble = member.config.ensemble
        assert ensemble is not None
        host, port = ensemble.servers[server_id].peer
        peer_listener = (await trio.open_tcp_listeners(port, host=host))[0]
        return await self._start(member, client_listener, peer_listener)

    def pause(self, server_id: int) -> None:
        """Freeze a server process (SIGSTOP) until :meth:`resume`: its sockets stay open
        but nothing answers, as in a long GC pause or a hung VM. Processes only."""
        member = self.process(server_id)
        if member.process is None:
            raise RuntimeError(f"server {server_id} is not running")
        if not member.is_paused:
            member.process.send_signal(signal.SIGSTOP)
            member.is_paused = True
            member.last_status = None

    def resume(self, server_id: int) -> None:
        """Let a paused server process run again (SIGCONT)."""
        member = self.process(server_id)
        if member.process is not None and member.is_paused:
            member.process.send_signal(signal.SIGCONT)
        member.is_paused = False

    def isolate(self, server_id: int) -> None:
        """Cut a server off from its peers and its clients until :meth:`heal` (in-process only).

        Through the transport's fault hook: its peer links close and stay closed, its
        client connections are dropped and new ones refused. It keeps running (a leader
        steps down when it cannot hear a quorum, as in a real partition).
        """
        if self.processes:
            # The server process was started with COORD_FAULT_HOOKS=1: SIGUSR1 isolates it.
            member = self.process(server_id)
            if member.process is None:
                raise RuntimeError(f"server {server_id} is not running")
            member.process.send_signal(signal.SIGUSR1)
            member.is_isolated = True
            return
        self.server(server_id).isolate()

    def heal(self) -> None:
        """Undo every :meth:`isolate`."""
        for member in self._members.values():
            if isinstance(member, _Member) and member.server is not None:
                member.server.heal()
            elif isinstance(member, ServerProcess) and member.process is not None and member.is_isolated:
                member.process.send_signal(signal.SIGUSR2)
                member.is_isolated = False

    async def expire_session(self, session: SessionTarget) -> None:
        """End a session now, as if it had timed out: its ephemerals go, its client sees
        ``SessionExpiredError`` (and state LOST) on its next reconnect or request.

        Args:
            session: a client (or its ``client_id``), or a bare session id (in-process
                only). In-process the leader expires it through its fault hook. With
                processes, a second connection presents the session's credentials (the
                server moves the session to it and drops the client's connection) and
                closes it.

        Raises:
            RuntimeError: no leader (in-process), or no server would take the session.
            ValueError: a bare session id given to a process ensemble.
        """
        if isinstance(session, int):
            session_id, password = session, None
        elif isinstance(session, tuple):
            session_id, password = session
        else:
            session_id, password = session.client_id
        if not self.processes:
            leader = self.leader()
            if leader is None:
                raise RuntimeError("no leader")
            await leader.expire_session(session_id)
            return
        if password is None:
            raise ValueError("a process ensemble needs the client or its client_id (session id and password)")
        addresses = [m.client_address for m in self._members.values() if m.is_running and not m.is_paused]
        await close_session(addresses, session_id, password)

    async def restore(self, timeout: float = 60.0) -> int:
        """Undo every fault: resume paused servers, heal isolated ones, restart killed
        ones; then wait for a leader. Returns the leader's id."""
        with trio.fail_after(timeout):
            for server_id, member in self._members.items():
                if isinstance(member, ServerProcess) and member.is_paused:
                    self.resume(server_id)
            self.heal()
            for server_id in self.server_ids:
                if not self.is_running(server_id):
                    await self.restart(server_id)
            return await self.wait_for_leader(timeout)

    # --- starting servers ---------------------------------------------------------------

    async def _start(
        self, member: _Member, client_listener: trio.SocketListener, peer_listener: trio.SocketListener
    ) -> Server:
        member.stopped = trio.Event()
        server: Server = await self._nursery.start(self._run, member, client_listener, peer_listener)
        return server

    async def _run(
        self,
        member: _Member,
        client_listener: trio.SocketListener,
        peer_listener: trio.SocketListener,
        *,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with trio.CancelScope() as scope:
                member.scope = scope
                async with open_server(
                    member.config, client_listener=client_listener, peer_listener=peer_listener
                ) as server:
                    member.server = server
                    task_status.started(server)
                    await trio.sleep_forever()
        finally:
            member.server = None
            member.scope = None
            member.stopped.set()

    async def _spawn(self, member: ServerProcess) -> None:
        """Start ``member``'s process and wait until its client port answers.

        Raises:
            RuntimeError: it exited first (the message holds the tail of its log).
        """
        member.exited = trio.Event()
        member.is_paused = False
        member.last_status = None
        with member.log_path.open("ab") as log_file:
            log_file.write(f"--- starting server {member.server_id}: {' '.join(member.command)}\n".encode())
            log_file.flush()
            # The child writes to its own copy of the descriptor; ours can close at once.
            process = await trio.lowlevel.open_process(
                member.command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=self._env
            )
        member.process = process
        self._nursery.start_soon(self._reap, member, process)
        with trio.fail_after(PROCESS_START_TIMEOUT_S):
            while True:
                if member.exited.is_set():
                    raise RuntimeError(
                        f"server {member.server_id} exited with {member.exit_codes[-1]} before listening:\n"
                        + member.log_tail(20)
                    )
                try:
                    with trio.fail_after(STATUS_TIMEOUT_S):
                        member.last_status = await _fetch_status(member.client_address)
                    return
                except _STATUS_ERRORS:
                    await trio.sleep(0.02)  # polling until it listens, bounded by fail_after

    async def _reap(self, member: ServerProcess, process: trio.Process) -> None:
        """Notice a process's exit, whoever caused it (cancelled when the ensemble closes:
        then :meth:`_stop_all` waits for the processes itself)."""
        code = await process.wait()
        member.exited_with(process)
        if code not in (0, -signal.SIGKILL, -signal.SIGTERM):
            log.warning("server %d exited with %s:\n%s", member.server_id, code, member.log_tail(10))

    async def _stop_all(self) -> None:
        """Stop every server process: SIGCONT, SIGTERM, then SIGKILL after a grace period."""
        async with trio.open_nursery() as nursery:
            for server_id, member in self._members.items():
                if isinstance(member, ServerProcess) and member.process is not None:
                    nursery.start_soon(self.stop, server_id)


# --- session expiry through a second connection -------------------------------------------


async def close_session(addresses: list[Address], session_id: int, password: bytes) -> None:
    """Close a session from a new connection that presents its credentials.

    The server binds the session to this connection (dropping the owner's), then
    commits a close: ephemerals go, and the owner learns on reconnect that the session
    expired. A session already gone counts as done.

    Raises:
        RuntimeError: no server in ``addresses`` would take the session.
    """
    failures: list[str] = []
    for address in addresses:
        try:
            with trio.fail_after(10):
                if await _close_session_at(address, session_id, password):
                    return
        except _STATUS_ERRORS as error:
            failures.append(f"{format_address(address)}: {error!r}")
            continue
        return
    raise RuntimeError(f"could not close session {session_id:#x}: " + "; ".join(failures))


async def _close_session_at(address: Address, session_id: int, password: bytes) -> bool:
    """True once the session is closed (or was gone); raises OSError-like errors to try elsewhere."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        handshake = protocol.ConnectRequest(session_id=session_id, password=password, timeout_ms=10_000)
        await stream.send_all(protocol.encode_frame(handshake.to_wire()))
        reader = protocol.FrameReader(protocol.frame_bytes_max())
        answer = protocol.decode_handshake_reply(await _read_item(stream, reader))
        if isinstance(answer, tuple):
            code, message = answer
            from coord.errors import SessionExpiredError

            if code == SessionExpiredError.code:
                return True
            raise protocol.ProtocolError(f"refused ({code}): {message}")
        await stream.send_all(protocol.encode_frame(protocol.encode_request(1, protocol.CloseSessionRequest())))
        while True:
            xid, _zxid, err, _result = protocol.decode_reply(await _read_item(stream, reader))
            if xid == 1:
                if err:
                    raise protocol.ProtocolError(f"close answered error {err}")
                return True


async def _read_item(stream: trio.SocketStream, reader: protocol.FrameReader) -> Any:
    while True:
        for body in reader:
            return protocol.decode_body(body)
        data = await stream.receive_some(65536)
        if not data:
            raise protocol.ProtocolError("the server closed the connection")
        reader.feed(data)


async def _fetch_status(address: Address) -> dict[str, Any]:
    from coord.cli import fetch_status

    return await fetch_status(format_address(address))


# --- opening an ensemble ----------------------------------------------------------------


async def _bind(host: str, port: int = 0) -> trio.SocketListener:
    return (await trio.open_tcp_listeners(port, host=host))[0]


@contextlib.asynccontextmanager
async def open_ensemble(
    size: int = 3,
    *,
    processes: bool = False,
    data_dir: Path | None = None,
    tick_ms: int = 50,
    init_limit_ticks: int = 40,
    sync_limit_ticks: int = 6,
    session_tick_ms: int = 100,
    base_port: int | None = None,
    **overrides: Any,
) -> AsyncIterator[Ensemble]:
    """Start ``size`` real servers and yield the :class:`Ensemble` (not yet waited for a leader).

    Args:
        size: the number of servers (1 gives an ensemble of one, whose server leads).
        processes: run each server as its own process (``coord serve --config``)
            instead of in this trio loop.
        data_dir: where their data directories go (default: a temporary directory,
            removed when the block ends).
        tick_ms, init_limit_ticks, sync_limit_ticks: ZAB timing (fast, for tests).
        session_tick_ms: the session tick; sessions may time out from 2 ticks up.
        base_port: fixed ports instead of ephemeral ones: clients on ``base_port``,
            ``base_port + 1``, ...; peers on ``base_port + 1000``, ... (``coord ensemble``).
        overrides: further :class:`~coord.config.ServerConfig` fields for every server
            (with processes, only those a TOML file can set, e.g. ``snapshot_every_txns``).

    Raises:
        ValueError: ``base_port`` would put a port beyond 65535 (the last server's peer
            port is ``base_port + 999 + size``).

    Cancellation: leaving the block (or cancelling it) stops every server; processes
    get SIGTERM, then SIGKILL after a grace period.
    """
    highest = 65535 - 999 - size
    if base_port and not 1 <= base_port <= highest:
        raise ValueError(f"base_port must be in 1..{highest} for {size} servers (or 0 or None), got {base_port}")
    temporary = data_dir is None
    base = Path(tempfile.mkdtemp(prefix="coord-ensemble-")) if data_dir is None else Path(data_dir)
    timing = {"tick_ms": tick_ms, "init_limit_ticks": init_limit_ticks, "sync_limit_ticks": sync_limit_ticks}
    opener = _open_processes if processes else _open_in_process
    try:
        async with opener(size, base, timing, session_tick_ms, base_port, overrides) as ensemble:
            yield ensemble
    except BaseExceptionGroup as group:
        # The servers' nursery wraps whatever ended the block; a lone exception (the
        # caller's failed assertion, a fail_after) is given back as it was raised.
        if len(group.exceptions) != 1:
            raise
        _reraise(group.exceptions[0])
    finally:
        if temporary:
            shutil.rmtree(base, ignore_errors=True)


def _reraise(error: BaseException) -> NoReturn:
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error, context


def _server_config(
    server_id: int, base: Path, ensemble: EnsembleConfig, session_tick_ms: int, overrides: Mapping[str, Any]
) -> ServerConfig:
    client = ensemble.servers[server_id].client
    config = ServerConfig(
        data_dir=base / f"server-{server_id}",
        log_map_bytes=256 << 20,
        listen_host=client[0],
        listen_port=client[1],
        server_id=server_id,
        tick_ms=session_tick_ms,
        min_session_timeout_ms=2 * session_tick_ms,
        max_session_timeout_ms=600 * session_tick_ms,
        ensemble=ensemble,
        fault_hooks=True,
    )
    return replace(config, **overrides)


@contextlib.asynccontextmanager
async def _open_in_process(
    size: int,
    base: Path,
    timing: dict[str, int],
    session_tick_ms: int,
    base_port: int | None,
    overrides: Mapping[str, Any],
) -> AsyncIterator[Ensemble]:
    ids = range(1, size + 1)
    client_listeners = {i: await _bind(HOST, base_port + i - 1 if base_port else 0) for i in ids}
    peer_listeners = {i: await _bind(HOST, base_port + 999 + i if base_port else 0) for i in ids}
    addresses = {
        server_id: EnsembleMember(
            peer=_address(peer_listeners[server_id]), client=_address(client_listeners[server_id])
        )
        for server_id in ids
    }
    ensemble_config = EnsembleConfig(servers=addresses, **timing)
    members = {
        server_id: _Member(server_id, _server_config(server_id, base, ensemble_config, session_tick_ms, overrides))
        for server_id in ids
    }
    async with trio.open_nursery() as nursery:
        ensemble = Ensemble(nursery, members, base_dir=base)
        for server_id, member in members.items():
            await ensemble._start(member, client_listeners[server_id], peer_listeners[server_id])
        try:
            yield ensemble
        finally:
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _open_processes(
    size: int,
    base: Path,
    timing: dict[str, int],
    session_tick_ms: int,
    base_port: int | None,
    overrides: Mapping[str, Any],
) -> AsyncIterator[Ensemble]:
    unknown = sorted(set(overrides) - set(_TOML_KEYS) - {"fault_hooks"})
    if unknown:
        raise TypeError(f"with processes=True these cannot be set (no TOML key): {', '.join(unknown)}")
    base.mkdir(parents=True, exist_ok=True)
    ids = list(range(1, size + 1))
    async with trio.open_nursery() as nursery:
        ensemble: Ensemble | None = None
        try:
            for attempt in range(1, START_ATTEMPTS + 1):
                if base_port:
                    clients = {i: (HOST, base_port + i - 1) for i in ids}
                    peers = {i: (HOST, base_port + 999 + i) for i in ids}
                else:
                    ports = _pick_free_ports(2 * size)
                    clients = {i: (HOST, ports[i - 1]) for i in ids}
                    peers = {i: (HOST, ports[size + i - 1]) for i in ids}
                members = {}
                for server_id in ids:
                    data_dir = base / f"server-{server_id}"
                    config_path = base / f"server-{server_id}.toml"
                    config_path.write_text(
                        _toml(server_id, data_dir, clients, peers, timing, session_tick_ms, overrides)
                    )
                    members[server_id] = ServerProcess(
                        server_id,
                        config_path,
                        data_dir,
                        base / f"server-{server_id}.log",
                        clients[server_id],
                        peers[server_id],
                    )
                ensemble = Ensemble(nursery, members, base_dir=base)
                try:
                    async with trio.open_nursery() as starting:
                        for member in members.values():
                            starting.start_soon(ensemble._spawn, member)
                    break
                except BaseExceptionGroup as group:
                    await ensemble._stop_all()
                    logs = "\n".join(member.log_tail(5) for member in members.values())
                    if base_port or attempt == START_ATTEMPTS or "in use" not in logs:
                        raise
                    log.info("a picked port was taken meanwhile; retrying on new ports (%s)", group)
            assert ensemble is not None
            nursery.start_soon(ensemble._poll_roles)
            yield ensemble
        finally:
            with trio.CancelScope(shield=True):
                if ensemble is not None:
                    await ensemble._stop_all()
            nursery.cancel_scope.cancel()


def _toml(
    server_id: int,
    data_dir: Path,
    clients: Mapping[int, Address],
    peers: Mapping[int, Address],
    timing: Mapping[str, int],
    session_tick_ms: int,
    overrides: Mapping[str, Any],
) -> str:
    """The configuration file of one server of a process ensemble."""
    tables: dict[str, dict[str, Any]] = {
        "server": {"id": server_id, "data_dir": str(data_dir), "tick_ms": session_tick_ms},
        "sessions": {"min_timeout_ms": 2 * session_tick_ms, "max_timeout_ms": 600 * session_tick_ms},
        "storage": {"log_map_bytes": 256 << 20},
        "ensemble": dict(timing),
    }
    for name, value in overrides.items():
        if name in _TOML_KEYS:
            table, key = _TOML_KEYS[name]
            tables.setdefault(table, {})[key] = value
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        # json.dumps writes TOML-compatible integers and basic strings
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    lines.append("[ensemble.servers]")
    for member_id in sorted(clients):
        peer, client = format_address(peers[member_id]), format_address(clients[member_id])
        lines.append(f'{member_id} = {{ peer = "{peer}", client = "{client}" }}')
    return "\n".join(lines) + "\n"


def _pick_free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free now, below the kernel's ephemeral range.

    Outgoing connections take their local ports from the ephemeral range, so a port
    below it cannot be taken by one between this pick and the server's bind (another
    program binding it explicitly still can: the caller retries on new ports).
    """
    low = 20000
    high = 32767
    with contextlib.suppress(OSError, ValueError):
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        if ephemeral_low > low + 2000:
            high = ephemeral_low - 1
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randint(low, high)
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _child_environment() -> dict[str, str]:
    """The environment of a server process: ours, with this copy of coord importable first."""
    env = dict(os.environ)
    root = str(Path(coord.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["COORD_FAULT_HOOKS"] = "1"  # SIGUSR1 / SIGUSR2 isolate / heal (see coord.cli)
    return env


def _address(listener: trio.SocketListener) -> Address:
    host, port = listener.socket.getsockname()[:2]
    return host, port


# --- a synchronous handle ---------------------------------------------------------------


class EnsembleThread:
    """An ensemble on its own trio loop in a background thread, driven by blocking calls.

    ::

        with EnsembleThread(size=3) as ensemble:      # returns once a leader serves
            run_my_code_against(ensemble.connect_string)
            ensemble.kill(ensemble.leader_id())
            ensemble.wait_for_leader()

    For code that is not trio: a plain pytest or unittest test, or an asyncio program
    (call the blocking methods through ``asyncio.to_thread``). Takes the arguments of
    :func:`open_ensemble`. Every method runs in the ensemble's loop and blocks until it
    is done there; :meth:`run` and :meth:`run_sync` reach the :class:`Ensemble` itself.

    Why a thread: the servers are trio tasks and need a trio loop that keeps running
    while the caller's own code (a sync test, or an asyncio loop) holds the main thread.
    ``trio.to_thread`` only works from inside a trio run, and a loop cannot share a
    thread with another, so the one place coord starts a bare thread is here: it owns
    one ``trio.run`` for the ensemble's lifetime, and every call crosses into it through
    ``trio.from_thread`` (thread-safe by design). The servers' own disk work still runs
    through ``trio.to_thread`` inside that loop. (The other way out, a subprocess per
    server, is ``processes=True``, which still needs a loop to supervise them.)
    """

    def __init__(self, size: int = 3, *, start_timeout: float = 60.0, **options: Any) -> None:
        self._size = size
        self._options = options
        self._start_timeout = start_timeout
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ensemble: Ensemble | None = None
        self._error: BaseException | None = None
        self.connect_string = ""
        """``host:port,...`` of every server (stable across kills and restarts)."""
        self.server_ids: list[int] = []

    # --- lifetime ---------------------------------------------------------------------

    def start(self) -> EnsembleThread:
        """Start the servers and wait until a leader serves (at most ``start_timeout`` s).

        Raises:
            Whatever starting the ensemble raised, or TimeoutError.
        """
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._main, name="coord-ensemble", daemon=True)
        self._thread.start()
        if not self._started.wait(self._start_timeout + 30):
            raise TimeoutError("the ensemble thread did not start")
        if self._error is not None:
            self._thread.join(30)
            raise self._error
        return self

    def close(self) -> None:
        """Stop every server and the thread. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        thread.join(PROCESS_STOP_GRACE_S * 2 + 30)
        self._thread = None
        self._ensemble = None
        self._token = None
        if thread.is_alive():
            raise RuntimeError("the ensemble thread did not stop")

    def __enter__(self) -> EnsembleThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as error:  # handed to the thread that called start()
            self._error = error
        finally:
            self._started.set()

    async def _serve(self) -> None:
        async with open_ensemble(self._size, **self._options) as ensemble:
            await ensemble.wait_for_leader(self._start_timeout)
            self._ensemble = ensemble
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self.connect_string = ensemble.connect_string
            self.server_ids = ensemble.server_ids
            self._started.set()
            await self._stop.wait()

    # --- reaching the loop ------------------------------------------------------------

    def run(self, async_fn: Callable[[Ensemble], Awaitable[T]]) -> T:
        """Run ``await async_fn(ensemble)`` in the ensemble's loop and return its result.

        Blocks until it is done, so not from a trio loop's thread (trio refuses): trio
        code uses :meth:`async_handle`, whose methods wait in a worker thread.
        """
        ensemble, token = self._loop()
        return trio.from_thread.run(async_fn, ensemble, trio_token=token)

    def run_sync(self, fn: Callable[[Ensemble], T]) -> T:
        """Run ``fn(ensemble)`` in the ensemble's loop and return its result.

        Safe from any thread, a trio loop's included (``trio.from_thread`` refuses
        those): it blocks the caller only for as long as ``fn`` runs, so keep ``fn`` quick.
        """
        ensemble, token = self._loop()
        if threading.current_thread() is self._thread:
            return fn(ensemble)
        done = threading.Event()
        result: list[outcome.Outcome[T]] = []

        def call() -> None:
            try:
                result.append(outcome.capture(fn, ensemble))
            finally:
                done.set()

        token.run_sync_soon(call)
        if not done.wait(60):
            raise TimeoutError("the ensemble's loop did not answer within 60 s")
        return result[0].unwrap()

    def _loop(self) -> tuple[Ensemble, trio.lowlevel.TrioToken]:
        if self._ensemble is None or self._token is None:
            raise RuntimeError("the ensemble is not running (use `with EnsembleThread(...) as ensemble:`)")
        return self._ensemble, self._token

    # --- the Ensemble's methods, blocking ---------------------------------------------

    @property
    def processes(self) -> bool:
        return bool(self._options.get("processes", False))

    def leader_id(self) -> int | None:
        return self.run_sync(lambda ensemble: ensemble.leader_id())

    def wait_for_leader(self, timeout: float = 30.0) -> int:
        return self.run(lambda ensemble: ensemble.wait_for_leader(timeout))

    def wait_converged(self, timeout: float = 30.0) -> int:
        return self.run(lambda ensemble: ensemble.wait_converged(timeout))

    def kill(self, server_id: int) -> None:
        self.run(lambda ensemble: ensemble.kill(server_id))

    def stop(self, server_id: int) -> None:
        self.run(lambda ensemble: ensemble.stop(server_id))

    def restart(self, server_id: int) -> None:
        """Start a stopped server again; returns once it listens (see :meth:`wait_for_leader`)."""
        self.run(lambda ensemble: _discard(ensemble.restart(server_id)))

    def pause(self, server_id: int) -> None:
        self.run_sync(lambda ensemble: ensemble.pause(server_id))

    def resume(self, server_id: int) -> None:
        self.run_sync(lambda ensemble: ensemble.resume(server_id))

    def isolate(self, server_id: int) -> None:
        self.run_sync(lambda ensemble: ensemble.isolate(server_id))

    def heal(self) -> None:
        self.run_sync(lambda ensemble: ensemble.heal())

    def expire_session(self, session: SessionTarget) -> None:
        """As :meth:`Ensemble.expire_session`; with a client of another loop, pass its ``client_id``."""
        if not isinstance(session, int | tuple):
            session = session.client_id  # read here: the client belongs to the caller's loop
        self.run(lambda ensemble: ensemble.expire_session(session))

    def restore(self, timeout: float = 60.0) -> int:
        return self.run(lambda ensemble: ensemble.restore(timeout))

    def status(self, server_id: int) -> dict[str, Any]:
        return self.run(lambda ensemble: ensemble.status(server_id))

    def is_running(self, server_id: int) -> bool:
        return self.run_sync(lambda ensemble: ensemble.is_running(server_id))

    def data_dir(self, server_id: int) -> Path:
        return self.run_sync(lambda ensemble: ensemble.data_dir(server_id))

    def connect_string_of(self, server_id: int) -> str:
        return self.run_sync(lambda ensemble: ensemble.connect_string_of(server_id))

    def server_id_at(self, address: tuple[str, int]) -> int:
        return self.run_sync(lambda ensemble: ensemble.server_id_at(address))

    def async_handle(self) -> SharedEnsemble:
        """The async face of this ensemble, for trio code running on another loop."""
        return SharedEnsemble(self)


async def _discard(awaitable: Awaitable[Any]) -> None:
    await awaitable


class SharedEnsemble:
    """An :class:`EnsembleThread` seen from trio code on another loop: the methods of
    :class:`Ensemble`, awaited (each one waits in a worker thread for the ensemble's loop).

    The pytest plugin hands this out when the ensemble is shared between tests
    (``coord_ensemble_scope`` wider than ``function``): trio fixtures live in one test's
    loop, so a shared ensemble must run in a loop of its own.
    """

    def __init__(self, thread: EnsembleThread) -> None:
        self.thread = thread

    @property
    def connect_string(self) -> str:
        return self.thread.connect_string

    @property
    def server_ids(self) -> list[int]:
        return self.thread.server_ids

    @property
    def processes(self) -> bool:
        return self.thread.processes

    def leader_id(self) -> int | None:
        return self.thread.leader_id()

    def connect_string_of(self, server_id: int) -> str:
        return self.thread.connect_string_of(server_id)

    def server_id_at(self, address: tuple[str, int]) -> int:
        return self.thread.server_id_at(address)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args))

    async def wait_for_leader(self, timeout: float = 30.0) -> int:
        return await self._call(self.thread.wait_for_leader, timeout)

    async def wait_converged(self, timeout: float = 30.0) -> int:
        return await self._call(self.thread.wait_converged, timeout)

    async def kill(self, server_id: int) -> None:
        await self._call(self.thread.kill, server_id)

    async def stop(self, server_id: int) -> None:
        await self._call(self.thread.stop, server_id)

    async def restart(self, server_id: int) -> None:
        await self._call(self.thread.restart, server_id)

    def pause(self, server_id: int) -> None:
        self.thread.pause(server_id)

    def resume(self, server_id: int) -> None:
        self.thread.resume(server_id)

    def isolate(self, server_id: int) -> None:
        self.thread.isolate(server_id)

    def heal(self) -> None:
        self.thread.heal()

    async def expire_session(self, session: SessionTarget) -> None:
        if not isinstance(session, int | tuple):
            session = session.client_id
        await self._call(self.thread.expire_session, session)

    async def restore(self, timeout: float = 60.0) -> int:
        return await self._call(self.thread.restore, timeout)

    async def status(self, server_id: int) -> dict[str, Any]:
        return await self._call(self.thread.status, server_id)


__all__ = [
    "Ensemble",
    "EnsembleThread",
    "ServerProcess",
    "SessionTarget",
    "SharedEnsemble",
    "close_session",
    "open_ensemble",
]
