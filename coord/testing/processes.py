"""Process ensembles: every server its own OS process.

Each server is ``python -m coord.testing.serve --config FILE`` (``coord serve`` with the
fault hooks of :mod:`coord.testing.faults`) with a generated TOML file (the
``[ensemble]`` table of :mod:`coord.config`). ``kill`` is SIGKILL, ``pause``/``resume``
are SIGSTOP/SIGCONT, ``isolate``/``heal`` are SIGUSR1/SIGUSR2, and the servers really run
in parallel. Roles are learnt over the client port (:mod:`coord.status`), polled in the
background. Each server's output goes to ``server-N.log`` beside its data directory
(:meth:`ServerProcess.log_tail`).

Ports: a server needs its ports before it starts (each must be written into every
server's file), so they are picked free below the kernel's ephemeral range (where no
outgoing connection can take one between the pick and the bind); a start that still
loses the race is retried on new ports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import trio

import coord
from coord.config import Address, format_address
from coord.testing.common import HOST, SERVER_ROLES, STATUS_ERRORS, fetch_status
from coord.testing.faults import HEAL_SIGNAL, ISOLATE_SIGNAL

log = logging.getLogger(__name__)

STATUS_POLL_S = 0.1
"""How often a process ensemble refreshes every server's role in the background."""
PROCESS_START_TIMEOUT_S = 30.0
"""How long a server process may take to listen on its client port."""
PROCESS_STOP_GRACE_S = 5.0
"""How long a process ensemble waits for SIGTERM before it sends SIGKILL."""
KILL_TIMEOUT_S = 30.0
START_ATTEMPTS = 3
"""Tries at starting a process ensemble when a picked port was taken meanwhile."""

# ServerConfig field -> (TOML table, key), for the overrides of a process ensemble.
TOML_KEYS: dict[str, tuple[str, str]] = {
    "max_connections": ("server", "max_connections"),
    "min_session_timeout_ms": ("sessions", "min_timeout_ms"),
    "max_session_timeout_ms": ("sessions", "max_timeout_ms"),
    "snapshot_every_txns": ("storage", "snapshot_every_txns"),
    "snapshot_every_bytes": ("storage", "snapshot_every_bytes"),
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


class ServerProcess:
    """One server of a process ensemble: ``python -m coord.testing.serve --config FILE``.

    Attributes:
        server_id: its id in the ensemble.
        config_path: its generated TOML file.
        data_dir: its LMDB log and snapshots.
        log_path: its stdout and stderr, appended across restarts.
        client_address, peer_address: where clients and peers reach it.
        process: the running process, or None while killed.
        is_paused: stopped with SIGSTOP (see :meth:`Ensemble.pause <coord.testing.Ensemble.pause>`).
        is_isolated: sent SIGUSR1 and not yet SIGUSR2.
        exit_codes: the status of every exit so far (negative: killed by that signal).
        last_status: the last status it answered (None while down or paused).
    """

    def __init__(
        self,
        server_id: int,
        config_path: Path,
        data_dir: Path,
        log_path: Path,
        client: Address,
        peer: Address,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.server_id = server_id
        self.config_path = config_path
        self.data_dir = data_dir
        self.log_path = log_path
        self.client_address = client
        self.peer_address = peer
        self.env = dict(child_environment() if env is None else env)
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
    def is_sidelined(self) -> bool:
        """Running but frozen (paused): not waited for to serve or converge."""
        return self.is_paused

    @property
    def connect_string(self) -> str:
        return format_address(self.client_address)

    @property
    def role(self) -> str:
        """The role it last reported: ``leader``, ``follower``, ``looking``, ``standalone``, or ``down``."""
        if self.process is None:
            return "down"
        return "looking" if self.last_status is None else str(self.last_status.get("role", "looking"))

    def leads(self) -> bool:
        """Whether it last reported leading an established epoch (and is not paused)."""
        return self.is_running and not self.is_paused and self.role in SERVER_ROLES

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "coord.testing.serve", "--config", str(self.config_path)]

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of its output (for failure reports)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<ServerProcess {self.server_id} pid={self.pid} {self.connect_string} {self.role}>"

    # --- status ---------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """What ``coord status`` shows, asked afresh.

        Raises:
            RuntimeError: it is not running. OSError, trio.TooSlowError: it did not answer.
        """
        if not self.is_running:
            raise RuntimeError(f"server {self.server_id} is not running")
        return await fetch_status(self.client_address)

    async def refresh(self) -> None:
        """Ask for its status again; :attr:`last_status` is None if it does not answer."""
        try:
            self.last_status = await fetch_status(self.client_address)
        except STATUS_ERRORS:
            self.last_status = None

    # --- starting and stopping --------------------------------------------------------------

    async def spawn(self, nursery: trio.Nursery) -> None:
        """Start its process (reaped by a task of ``nursery``) and wait until its client port answers.

        Raises:
            RuntimeError: it exited first (the message holds the tail of its log).
        """
        self.exited = trio.Event()
        self.is_paused = False
        self.last_status = None
        with self.log_path.open("ab") as log_file:
            log_file.write(f"--- starting server {self.server_id}: {' '.join(self.command)}\n".encode())
            log_file.flush()
            # The child writes to its own copy of the descriptor; ours can close at once.
            process = await trio.lowlevel.open_process(
                self.command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=self.env
            )
        self.process = process
        nursery.start_soon(self._reap, process)
        with trio.fail_after(PROCESS_START_TIMEOUT_S):
            while True:
                if self.exited.is_set():
                    raise RuntimeError(
                        f"server {self.server_id} exited with {self.exit_codes[-1]} before listening:\n"
                        + self.log_tail(20)
                    )
                try:
                    self.last_status = await fetch_status(self.client_address)
                    return
                except STATUS_ERRORS:
                    await trio.sleep(0.02)  # polling until it listens, bounded by fail_after

    async def _reap(self, process: trio.Process) -> None:
        """Notice a process's exit, whoever caused it (cancelled when the ensemble closes:
        then :func:`stop_all` waits for the processes itself)."""
        code = await process.wait()
        self.exited_with(process)
        if code not in (0, -signal.SIGKILL, -signal.SIGTERM):
            log.warning("server %d exited with %s:\n%s", self.server_id, code, self.log_tail(10))

    async def restart(self, nursery: trio.Nursery) -> ServerProcess:
        """Start the stopped server again; returns once it listens.

        Raises:
            RuntimeError: it is running, or it exited instead of listening.
        """
        if self.is_running:
            raise RuntimeError(f"server {self.server_id} is running")
        await self.spawn(nursery)
        return self

    async def kill(self) -> None:
        """SIGKILL (also when paused); returns once it is gone. Nothing if it is not running."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        self.last_status = None
        with trio.fail_after(KILL_TIMEOUT_S):
            await process.wait()
        self.exited_with(process)

    async def stop(self) -> None:
        """SIGTERM (after SIGCONT if paused), then SIGKILL after a grace period; returns once it is gone."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self.is_paused:
                process.send_signal(signal.SIGCONT)
                self.is_paused = False
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(PROCESS_STOP_GRACE_S):
            await process.wait()
        await self.kill()

    # --- faults -----------------------------------------------------------------------------

    def _running_process(self) -> trio.Process:
        if self.process is None:
            raise RuntimeError(f"server {self.server_id} is not running")
        return self.process

    def pause(self) -> None:
        """SIGSTOP until :meth:`resume`.

        Raises:
            RuntimeError: it is not running.
        """
        process = self._running_process()
        if not self.is_paused:
            process.send_signal(signal.SIGSTOP)
            self.is_paused = True
            self.last_status = None

    def resume(self) -> None:
        """SIGCONT, if it is paused."""
        if self.process is not None and self.is_paused:
            self.process.send_signal(signal.SIGCONT)
        self.is_paused = False

    def isolate(self) -> None:
        """SIGUSR1: the server cuts itself off from its peers and clients until :meth:`heal`.

        Raises:
            RuntimeError: it is not running.
        """
        self._running_process().send_signal(ISOLATE_SIGNAL)
        self.is_isolated = True

    def heal(self) -> None:
        """SIGUSR2, if it was isolated."""
        if self.process is not None and self.is_isolated:
            self.process.send_signal(HEAL_SIGNAL)
            self.is_isolated = False


async def refresh_all(members: list[ServerProcess]) -> None:
    """Refresh the ``last_status`` of every one of ``members`` at once."""
    async with trio.open_nursery() as nursery:
        for member in members:
            nursery.start_soon(member.refresh)


async def poll_roles(members: Mapping[int, ServerProcess]) -> None:
    """Keep every running process's ``last_status`` fresh (for ``Ensemble.leader_id``)."""
    while True:
        await refresh_all([m for m in members.values() if m.is_running and not m.is_paused])
        await trio.sleep(STATUS_POLL_S)


async def stop_all(members: Mapping[int, ServerProcess]) -> None:
    """Stop every server process: SIGCONT, SIGTERM, then SIGKILL after a grace period."""
    async with trio.open_nursery() as nursery:
        for member in members.values():
            if member.process is not None:
                nursery.start_soon(member.stop)


@contextlib.asynccontextmanager
async def open_processes(
    size: int,
    base: Path,
    timing: Mapping[str, Any],
    session_tick_ms: int,
    base_port: int | None,
    overrides: Mapping[str, Any],
) -> AsyncIterator[tuple[trio.Nursery, dict[int, ServerProcess]]]:
    """Start ``size`` server processes; yield the nursery that reaps them and the members.

    The caller wraps them in an :class:`~coord.testing.Ensemble`; leaving the block stops
    every process (SIGTERM, then SIGKILL).

    Raises:
        TypeError: an override has no TOML key.
    """
    unknown = sorted(set(overrides) - set(TOML_KEYS))
    if unknown:
        raise TypeError(f"with processes=True these cannot be set (no TOML key): {', '.join(unknown)}")
    base.mkdir(parents=True, exist_ok=True)
    ids = list(range(1, size + 1))
    env = child_environment()
    async with trio.open_nursery() as nursery:
        members: dict[int, ServerProcess] = {}
        try:
            for attempt in range(1, START_ATTEMPTS + 1):
                if base_port:
                    clients = {i: (HOST, base_port + i - 1) for i in ids}
                    peers = {i: (HOST, base_port + 999 + i) for i in ids}
                else:
                    ports = pick_free_ports(2 * size)
                    clients = {i: (HOST, ports[i - 1]) for i in ids}
                    peers = {i: (HOST, ports[size + i - 1]) for i in ids}
                members = {}
                for server_id in ids:
                    data_dir = base / f"server-{server_id}"
                    config_path = base / f"server-{server_id}.toml"
                    config_path.write_text(
                        config_toml(server_id, data_dir, clients, peers, timing, session_tick_ms, overrides)
                    )
                    members[server_id] = ServerProcess(
                        server_id,
                        config_path,
                        data_dir,
                        base / f"server-{server_id}.log",
                        clients[server_id],
                        peers[server_id],
                        env=env,
                    )
                try:
                    async with trio.open_nursery() as starting:
                        for member in members.values():
                            starting.start_soon(member.spawn, nursery)
                    break
                except BaseExceptionGroup as group:
                    await stop_all(members)
                    logs = "\n".join(member.log_tail(5) for member in members.values())
                    if base_port or attempt == START_ATTEMPTS or "in use" not in logs:
                        raise
                    log.info("a picked port was taken meanwhile; retrying on new ports (%s)", group)
            nursery.start_soon(poll_roles, members)
            yield nursery, members
        finally:
            with trio.CancelScope(shield=True):
                await stop_all(members)
            nursery.cancel_scope.cancel()


def config_toml(
    server_id: int,
    data_dir: Path,
    clients: Mapping[int, Address],
    peers: Mapping[int, Address],
    timing: Mapping[str, Any],
    session_tick_ms: int,
    overrides: Mapping[str, Any],
) -> str:
    """The configuration file of one server of a process ensemble."""
    tables: dict[str, dict[str, Any]] = {
        "server": {"id": server_id, "data_dir": str(data_dir), "tick_ms": session_tick_ms},
        "sessions": {"min_timeout_ms": 2 * session_tick_ms, "max_timeout_ms": 600 * session_tick_ms},
        "storage": {"log_map_bytes": 256 << 20},
        "ensemble": {key: str(value) if isinstance(value, Path) else value for key, value in timing.items()},
    }
    for name, value in overrides.items():
        if name in TOML_KEYS:
            table, key = TOML_KEYS[name]
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


def pick_free_ports(count: int) -> list[int]:
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


def child_environment() -> dict[str, str]:
    """The environment of a server process: ours, with this copy of coord importable first."""
    env = dict(os.environ)
    root = str(Path(coord.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


__all__ = [
    "PROCESS_START_TIMEOUT_S",
    "PROCESS_STOP_GRACE_S",
    "STATUS_POLL_S",
    "TOML_KEYS",
    "ServerProcess",
    "child_environment",
    "config_toml",
    "open_processes",
    "pick_free_ports",
    "poll_roles",
    "refresh_all",
    "stop_all",
]
