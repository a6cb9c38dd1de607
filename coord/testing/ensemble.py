"""The :class:`Ensemble` facade and :func:`open_ensemble`.

An :class:`Ensemble` holds one member per server, either all
:class:`~coord.testing.inprocess.InProcessMember` (the default) or all
:class:`~coord.testing.processes.ServerProcess` (``processes=True``), and gives both the
same controls: roles, status, kill/stop/restart, isolate/heal, expire_session, restore.
Pause and resume are for processes only. What the two kinds do differently lives in
their modules; this one chooses and waits.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import trio

from coord.config import Address, format_address
from coord.testing.common import SERVER_ROLES, STATUS_ERRORS, SessionTarget
from coord.testing.faults import FaultableServer
from coord.testing.inprocess import InProcessMember, open_in_process
from coord.testing.processes import ServerProcess, open_processes, refresh_all
from coord.testing.sessions import close_session

Member = InProcessMember | ServerProcess
RunningServer = FaultableServer | ServerProcess
"""A running server of an ensemble: in-process the server itself, else its process."""


class Ensemble:
    """A running embedded ensemble, in-process or one process per server. Made by :func:`open_ensemble`.

    Servers are numbered 1..size. Methods that name a server take its id.
    """

    def __init__(self, nursery: trio.Nursery, members: Mapping[int, Member], *, base_dir: Path | None = None) -> None:
        self._nursery = nursery
        self._members: dict[int, Member] = dict(members)
        self.processes = any(isinstance(member, ServerProcess) for member in members.values())
        """True when every server is an OS process (``open_ensemble(processes=True)``)."""
        self.base_dir = base_dir
        """The directory holding every server's data directory (and logs and configs)."""

    # --- addresses and handles --------------------------------------------------------

    @property
    def connect_string(self) -> str:
        """``host:port,...`` of every server's client port (what ``client.connect`` takes)."""
        return ",".join(format_address(member.client_address) for member in self._members.values())

    @property
    def server_ids(self) -> list[int]:
        return list(self._members)

    @property
    def servers(self) -> dict[int, RunningServer | None]:
        """Server id -> the running server, None while killed.

        In-process: the :class:`~coord.server.Server` (a
        :class:`~coord.testing.faults.FaultableServer`). Processes: its :class:`ServerProcess`.
        """
        return {server_id: _running(member) for server_id, member in self._members.items()}

    def server(self, server_id: int) -> RunningServer:
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
        return self._members[server_id].is_running

    # --- roles ------------------------------------------------------------------------

    def leader_id(self) -> int | None:
        """The id of a running server that leads an established epoch, if any.

        An isolated server is left out (it may still believe it leads until it notices
        it lost its quorum). With processes this is what the background poll last saw
        (up to ~0.1 s old).
        """
        for server_id, member in self._members.items():
            if member.leads():
                return server_id
        return None

    def leader(self) -> RunningServer | None:
        """The leading server (``Server`` or ``ServerProcess``), or None."""
        server_id = self.leader_id()
        return None if server_id is None else self.servers[server_id]

    async def status(self, server_id: int) -> dict[str, Any]:
        """What ``coord status`` shows for one server (role, zxid, sessions, znodes...).

        Raises:
            RuntimeError: it is not running. OSError, trio.TooSlowError: it did not answer.
        """
        return await self._members[server_id].status()

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
        in_process = [m for m in self._members.values() if isinstance(m, InProcessMember)]
        if in_process:
            leader = self.leader_id()
            serving = all(m.server.is_serving for m in in_process if m.server is not None and not m.is_sidelined)
            return leader if leader is not None and serving else None
        members = [m for m in self._processes() if m.is_running and not m.is_paused]
        await refresh_all(members)
        leaders = [m.server_id for m in members if m.role in SERVER_ROLES]
        if len(leaders) != 1:
            return None
        for member in members:
            status = member.last_status
            if status is None or status.get("role") not in (*SERVER_ROLES, "follower"):
                return None
            if status.get("role") == "follower" and status.get("leader") != leaders[0]:
                return None
        return leaders[0]

    async def wait_converged(self, timeout: float = 30.0) -> int:
        """Wait until every running server has applied the same zxid; return it.

        Useful after :meth:`heal`/:meth:`restart` before comparing the servers' trees.
        Isolated (in-process) and paused servers are not waited for.
        """
        with trio.fail_after(timeout):
            while True:
                zxids: set[int | None] = set()
                for member in self._members.values():
                    if not member.is_running or member.is_sidelined:
                        continue
                    try:
                        zxids.add(int((await member.status())["zxid"]))
                    except STATUS_ERRORS:
                        zxids.add(None)
                if len(zxids) == 1:
                    (zxid,) = zxids
                    if zxid is not None:
                        return zxid
                await trio.sleep(0.02)  # polling a condition, bounded by fail_after

    # --- faults -----------------------------------------------------------------------

    async def kill(self, server_id: int) -> None:
        """Stop a server at once (as ``kill -9``): no goodbye to clients or peers.

        In-process the server's task is cancelled; a process gets SIGKILL (also when
        paused). Returns once it is gone. Killing a stopped server does nothing.
        """
        await self._members[server_id].kill()

    async def stop(self, server_id: int) -> None:
        """Stop a server the polite way (SIGTERM for a process, SIGKILL after a grace
        period); in-process this is :meth:`kill`. Returns once it is gone."""
        await self._members[server_id].stop()

    async def restart(self, server_id: int) -> RunningServer:
        """Start a stopped server again, on its ports and its data directory.

        Returns once it listens (it serves once it has joined a leader: see
        :meth:`wait_for_leader`). In-process returns the new :class:`~coord.server.Server`,
        with processes its :class:`ServerProcess`.

        Raises:
            RuntimeError: it is running, or (processes) it exited instead of listening.
        """
        return await self._members[server_id].restart(self._nursery)

    def pause(self, server_id: int) -> None:
        """Freeze a server process (SIGSTOP) until :meth:`resume`: its sockets stay open
        but nothing answers, as in a long GC pause or a hung VM. Processes only."""
        self.process(server_id).pause()

    def resume(self, server_id: int) -> None:
        """Let a paused server process run again (SIGCONT)."""
        self.process(server_id).resume()

    def isolate(self, server_id: int) -> None:
        """Cut a server off from its peers and its clients until :meth:`heal`.

        Through the server's fault hooks (:mod:`coord.testing.faults`; a process gets
        SIGUSR1): its peer links close and stay closed, its client connections are
        dropped and new ones refused. It keeps running (a leader steps down when it
        cannot hear a quorum, as in a real partition).

        Raises:
            RuntimeError: it is not running.
        """
        self._members[server_id].isolate()

    def heal(self) -> None:
        """Undo every :meth:`isolate`."""
        for member in self._members.values():
            member.heal()

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
        password: bytes | None
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
            assert isinstance(leader, FaultableServer)
            await leader.expire_session(session_id)
            return
        if password is None:
            raise ValueError("a process ensemble needs the client or its client_id (session id and password)")
        addresses = [m.client_address for m in self._processes() if m.is_running and not m.is_paused]
        await close_session(addresses, session_id, password)

    async def restore(self, timeout: float = 60.0) -> int:
        """Undo every fault: resume paused servers, heal isolated ones, restart killed
        ones; then wait for a leader. Returns the leader's id."""
        with trio.fail_after(timeout):
            for member in self._processes():
                if member.is_paused:
                    member.resume()
            self.heal()
            for server_id in self.server_ids:
                if not self.is_running(server_id):
                    await self.restart(server_id)
            return await self.wait_for_leader(timeout)

    def _processes(self) -> list[ServerProcess]:
        return [member for member in self._members.values() if isinstance(member, ServerProcess)]


def _running(member: Member) -> RunningServer | None:
    if isinstance(member, ServerProcess):
        return member if member.is_running else None
    return member.server


PEER_SECRET_FILE = "peer.secret"


def write_peer_secret(path: Path) -> Path:
    """A new random peer secret (32 bytes, hex) in ``path``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_hex(32) + "\n")
    return path


@contextlib.asynccontextmanager
async def open_ensemble(
    size: int = 3,
    *,
    processes: bool = False,
    data_dir: Path | None = None,
    tick_ms: int = 50,
    init_limit_ticks: int = 40,
    sync_limit_ticks: int = 6,
    snap_chunk_bytes: int = 1 << 20,
    session_tick_ms: int = 100,
    base_port: int | None = None,
    peer_secret: bool = True,
    **overrides: Any,
) -> AsyncIterator[Ensemble]:
    """Start ``size`` real servers and yield the :class:`Ensemble` (not yet waited for a leader).

    Args:
        size: the number of servers (1 gives an ensemble of one, whose server leads).
        processes: run each server as its own process (``coord serve --config``, with
            fault hooks) instead of in this trio loop.
        data_dir: where their data directories go (default: a temporary directory,
            removed when the block ends).
        tick_ms, init_limit_ticks, sync_limit_ticks: ZAB timing (fast, for tests).
        snap_chunk_bytes: a SNAP to a lagging follower streams in chunks this large.
        session_tick_ms: the session tick; sessions may time out from 2 ticks up.
        base_port: fixed ports instead of ephemeral ones: clients on ``base_port``,
            ``base_port + 1``, ...; peers on ``base_port + 1000``, ... (``coord ensemble``).
        peer_secret: the servers authenticate each other with a fresh random secret
            (``peer.secret`` in the ensemble's directory, as ``[ensemble] secret_file``),
            as a real ensemble should; False runs them unauthenticated.
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
    timing: dict[str, Any] = {
        "tick_ms": tick_ms,
        "init_limit_ticks": init_limit_ticks,
        "sync_limit_ticks": sync_limit_ticks,
        "snap_chunk_bytes": snap_chunk_bytes,
    }
    if peer_secret:
        timing["secret_file"] = write_peer_secret(base / PEER_SECRET_FILE)
    try:
        if processes:
            async with open_processes(size, base, timing, session_tick_ms, base_port, overrides) as (nursery, members):
                yield Ensemble(nursery, members, base_dir=base)
        else:
            async with open_in_process(size, base, timing, session_tick_ms, base_port, overrides) as (
                nursery,
                in_process,
            ):
                yield Ensemble(nursery, in_process, base_dir=base)
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


__all__ = ["Ensemble", "Member", "RunningServer", "open_ensemble"]
