"""Start and stop throwaway coord servers (subprocesses) for the benchmarks.

Standalone (:func:`run_coord`): the server runs exactly as a user would start it, with the
server's defaults (fsync on)::

    .venv/bin/coord serve --data-dir TMP/data --listen 127.0.0.1:PORT

in its own process, so it does not share the benchmark client's interpreter, GIL or trio
loop — the same footing as the ZooKeeper JVM. Its output goes to ``TMP/server.log``
(shown if the start fails); TMP is deleted when the server stops.

Ensemble (:func:`run_coord_ensemble`): N such processes, each started as
``coord serve --config TMP/server-ID.toml`` from one generated TOML file per server (same
``[ensemble]`` table, its own ``server.id`` and ``data_dir``), on free loopback ports, each
logging to ``TMP/server-ID.log``. Ready once one server reports ``leader`` and every other
``follower`` (``coord status``). Servers can be SIGKILLed and restarted on the same ports and
data. Everything is stopped and TMP deleted on leaving the ``with`` block.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._process import (
    LOOPBACK,
    free_loopback_port,
    free_loopback_ports,
    is_listening,
    log_tail,
    stop_process,
    stop_processes,
)


class CoordNotAvailableError(RuntimeError):
    """The ``coord`` executable is missing or has no working ``serve`` command yet."""


class CoordStartError(RuntimeError):
    """The server process did not come up; the message carries the tail of its log."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordServer:
    """A running throwaway coord server.

    Attributes:
        host: Loopback address it listens on.
        port: Client port.
        work_dir: Temp directory holding the data dir and the server log (deleted on stop).
        pid: Process id of the server.
    """

    host: str
    port: int
    work_dir: Path
    pid: int

    @property
    def connect_string(self) -> str:
        """``host:port``, as ``client.connect`` wants it."""
        return f"{self.host}:{self.port}"


def find_coord() -> str:
    """Locate the ``coord`` executable and check that ``coord serve --help`` works.

    Looks next to the running interpreter first (``.venv/bin/coord`` when run with the venv's
    python), then on PATH; ``COORD_BIN`` overrides both.

    Returns:
        Path of the executable.

    Raises:
        CoordNotAvailableError: Not installed, or ``serve`` is not there yet.
    """
    candidates = [os.environ.get("COORD_BIN"), str(Path(sys.executable).parent / "coord"), shutil.which("coord")]
    executable = next((path for path in candidates if path and Path(path).is_file()), None)
    if executable is None:
        raise CoordNotAvailableError("no `coord` executable (run `make run` or `pip install -e .` first)")
    try:
        check = subprocess.run(
            [executable, "serve", "--help"], capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as error:
        raise CoordNotAvailableError(f"`{executable} serve --help` did not finish in 30s") from error
    if check.returncode != 0:
        output = (check.stderr or check.stdout).decode(errors="replace").strip().splitlines()[-5:]
        raise CoordNotAvailableError(f"`{executable} serve --help` failed: " + " | ".join(output))
    return executable


def _wait_listening(process: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """Poll until the port accepts connections (True) or the process exits (False)."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if is_listening(port):
            return True
        time.sleep(0.05)
    raise CoordStartError(f"coord on port {port} not listening in time")


def _start_once(executable: str, work_dir: Path, startup_timeout: float) -> tuple[subprocess.Popen[bytes], CoordServer]:
    """Start one server in ``work_dir``; on failure stop it and raise CoordStartError."""
    port = free_loopback_port()
    log_path = work_dir / "server.log"
    command = [executable, "serve", "--data-dir", str(work_dir / "data"), "--listen", f"{LOOPBACK}:{port}"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=work_dir
        )
    try:
        if not _wait_listening(process, port, time.monotonic() + startup_timeout):
            raise CoordStartError(f"`{' '.join(command)}` exited with code {process.returncode}")
    except BaseException as error:
        _stop(process)
        if isinstance(error, CoordStartError):
            raise CoordStartError(f"{error}\n{log_tail(log_path)}") from None
        raise
    return process, CoordServer(host=LOOPBACK, port=port, work_dir=work_dir, pid=process.pid)


def _stop(process: subprocess.Popen[bytes]) -> None:
    # SIGINT first: trio turns it into KeyboardInterrupt and the server shuts down through its
    # cancel scopes (closing LMDB cleanly); then SIGTERM, then SIGKILL.
    stop_process(process, signals=(signal.SIGINT, signal.SIGTERM), timeout=5.0)


@contextlib.contextmanager
def run_coord(*, startup_timeout: float = 30.0, attempts: int = 3) -> Iterator[CoordServer]:
    """Run a standalone coord server on a free loopback port for the duration of the ``with`` block.

    On leaving the block — normally, on an exception or on Ctrl-C — the server is stopped and
    its temp directory deleted.

    Args:
        startup_timeout: Seconds to wait for one start attempt to accept connections.
        attempts: Start attempts, each on a new port.

    Yields:
        The running server.

    Raises:
        CoordNotAvailableError: No usable ``coord`` executable.
        CoordStartError: No attempt came up; carries the tail of the last server log.
    """
    executable = find_coord()
    failures: list[str] = []
    for _attempt in range(attempts):
        work_dir = Path(tempfile.mkdtemp(prefix="coord-bench-coord-"))
        try:
            process, server = _start_once(executable, work_dir, startup_timeout)
        except CoordStartError as error:
            failures.append(str(error))
            shutil.rmtree(work_dir, ignore_errors=True)
            continue
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        try:
            yield server
        finally:
            _stop(process)
            shutil.rmtree(work_dir, ignore_errors=True)
        return
    raise CoordStartError(f"coord did not start after {attempts} attempts; last: {failures[-1]}")


# --------------------------------------------------------------------------- ensemble

ENSEMBLE_TIMING: dict[str, int] = {"tick_ms": 100, "init_limit_ticks": 20, "sync_limit_ticks": 5}
"""The ``[ensemble]`` timing of the generated config (the values ``coord ensemble`` uses)."""


def coord_status(address: str, *, timeout: float = 1.0) -> dict[str, Any]:
    """Ask one coord server for its status (what ``coord status --json`` prints), blocking.

    The same exchange as :func:`coord.status.request_status`, over a plain socket, so it can be called
    from threads and from code that is not (or is already) inside ``trio.run``.

    Args:
        address: ``host:port`` of the server's client port.
        timeout: Bound on connecting and on the whole reply, seconds.

    Returns:
        The status dict (``role`` is ``leader``, ``follower``, ``looking`` or ``standalone``).

    Raises:
        OSError: Unreachable, or no complete reply in time.
        coord.protocol.ProtocolError: A malformed reply.
    """
    from coord import protocol

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(protocol.encode_frame(protocol.StatusRequest().to_wire()))
        reader = protocol.FrameReader(protocol.frame_bytes_max())
        while True:
            for body in reader:
                status = protocol.decode_body(body)
                if not isinstance(status, dict):
                    raise protocol.ProtocolError("bad status reply")
                return status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no status reply from {address} within {timeout}s")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"{address} closed the connection before replying")
            reader.feed(data)


@dataclass(slots=True, kw_only=True)
class CoordMember:
    """One server of a :class:`CoordEnsemble`.

    Attributes:
        server_id: Its ``server.id``.
        client_port: Client port on 127.0.0.1.
        peer_port: Zab peer port on 127.0.0.1.
        config_path: Its TOML file.
        data_dir: Its data directory (kept across :meth:`CoordEnsemble.restart`).
        log_path: Its stdout+stderr (appended to across restarts).
        process: The running process, or None while killed.
        exit_codes: Exit status of every earlier process of this member (``-9`` after a SIGKILL).
    """

    server_id: int
    client_port: int
    peer_port: int
    config_path: Path
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def client_address(self) -> str:
        """``127.0.0.1:PORT`` of its client port."""
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, None while it is killed."""
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """True while its process exists and has not exited."""
        return self.process is not None and self.process.poll() is None


class CoordEnsemble:
    """A running N-server coord ensemble of subprocesses. Made by :func:`run_coord_ensemble`."""

    def __init__(self, executable: str, work_dir: Path, members: dict[int, CoordMember]) -> None:
        self._executable = executable
        self.work_dir = work_dir
        """Temp directory with every config, data dir and log (deleted on exit)."""
        self.members = members
        """Server id -> member, in id order."""

    @property
    def connect_string(self) -> str:
        """``host:port,...`` of every server's client port (what ``client.connect`` takes)."""
        return ",".join(member.client_address for member in self.members.values())

    @property
    def server_ids(self) -> list[int]:
        """Every server id, ascending."""
        return list(self.members)

    def pid(self, server_id: int) -> int | None:
        """Process id of a server, None while it is killed."""
        return self.members[server_id].pid

    def client_address(self, server_id: int) -> str:
        """``127.0.0.1:PORT`` of a server's client port."""
        return self.members[server_id].client_address

    def status(self, server_id: int, *, timeout: float = 1.0) -> dict[str, Any] | None:
        """A server's status dict, or None if it is not running or does not answer in ``timeout``."""
        member = self.members[server_id]
        if not member.running:
            return None
        try:
            return coord_status(member.client_address, timeout=timeout)
        except Exception:  # unreachable, slow or garbled: "no status" either way
            return None

    def roles(self, *, timeout: float = 1.0) -> dict[int, str]:
        """Server id -> ``role`` from its status; ``down`` if killed, ``unreachable`` if it does not answer."""
        roles = {}
        for server_id, member in self.members.items():
            if not member.running:
                roles[server_id] = "down"
                continue
            status = self.status(server_id, timeout=timeout)
            roles[server_id] = str(status.get("role")) if status else "unreachable"
        return roles

    def leader_id(self, *, timeout: float = 1.0) -> int | None:
        """The id of the running server whose status says ``leader`` (None if there is none)."""
        for server_id, role in self.roles(timeout=timeout).items():
            if role == "leader":
                return server_id
        return None

    def wait_for_quorum(self, *, timeout: float = 30.0) -> int:
        """Wait until one running server is ``leader`` and every other running one ``follower``.

        Returns:
            The leader's id.

        Raises:
            CoordStartError: Not so within ``timeout``, or a server process exited (with the log tails).
        """
        deadline = time.monotonic() + timeout
        roles: dict[int, str] = {}
        while time.monotonic() < deadline:
            for member in self.members.values():
                if member.process is not None and member.process.poll() is not None:
                    raise CoordStartError(
                        f"coord server {member.server_id} exited with code {member.process.returncode}\n"
                        f"{self.log_tails()}"
                    )
            roles = self.roles(timeout=0.5)
            running = {server_id: role for server_id, role in roles.items() if role != "down"}
            leaders = [server_id for server_id, role in running.items() if role == "leader"]
            if len(leaders) == 1 and all(role == "follower" for sid, role in running.items() if sid != leaders[0]):
                return leaders[0]
            time.sleep(0.05)
        raise CoordStartError(
            f"no leader with all others following within {timeout}s (roles {roles})\n{self.log_tails()}"
        )

    def kill(self, server_id: int) -> float:
        """SIGKILL a server and reap it.

        Returns:
            ``time.monotonic()`` just before the signal was sent.
        """
        member = self.members[server_id]
        process = member.process
        if process is None:
            raise RuntimeError(f"coord server {server_id} is not running")
        killed_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        member.exit_codes.append(process.wait())
        member.process = None
        return killed_at

    def restart(self, server_id: int, *, timeout: float = 30.0) -> None:
        """Start a killed (or exited) server again, same config, ports and data; wait until it listens.

        Raises:
            CoordStartError: It exited or did not listen within ``timeout``.
        """
        member = self.members[server_id]
        if member.running:
            raise RuntimeError(f"coord server {server_id} is running")
        if member.process is not None:
            member.exit_codes.append(member.process.wait())
            member.process = None
        self._launch(member)
        assert member.process is not None
        if not _wait_listening(member.process, member.client_port, time.monotonic() + timeout):
            raise CoordStartError(
                f"coord server {server_id} exited with code {member.process.returncode} on restart\n"
                f"{log_tail(member.log_path)}"
            )

    def log_tails(self, *, lines: int = 30) -> str:
        """The last ``lines`` of every server's log, for error messages."""
        return log_tail(*(member.log_path for member in self.members.values()), lines=lines)

    def _launch(self, member: CoordMember) -> None:
        command = [self._executable, "serve", "--config", str(member.config_path)]
        with member.log_path.open("ab") as log:
            member.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir
            )

    def _start_all(self) -> None:
        for member in self.members.values():
            self._launch(member)

    def _stop_all(self) -> None:
        processes = [member.process for member in self.members.values() if member.process is not None]
        stop_processes(processes, signals=(signal.SIGINT, signal.SIGTERM), timeout=5.0)
        for member in self.members.values():
            if member.process is not None:
                member.exit_codes.append(member.process.returncode)
                member.process = None


def ensemble_config(server_id: int, data_dir: Path, members: dict[int, tuple[int, int]]) -> str:
    """The TOML config of one ensemble server.

    Args:
        server_id: This server's id.
        data_dir: This server's data directory.
        members: Every server id -> ``(peer_port, client_port)`` on 127.0.0.1.
    """
    lines = [
        "[server]",
        f"id = {server_id}",
        f'data_dir = "{data_dir}"',
        "",
        "[ensemble]",
        *(f"{key} = {value}" for key, value in ENSEMBLE_TIMING.items()),
        "",
        "[ensemble.servers]",
        *(
            f'{sid} = {{ peer = "{LOOPBACK}:{peer}", client = "{LOOPBACK}:{client}" }}'
            for sid, (peer, client) in sorted(members.items())
        ),
        "",
    ]
    return "\n".join(lines)


def _prepare(work_dir: Path, size: int) -> dict[int, CoordMember]:
    """Pick 2 x ``size`` free ports and write one config per server into ``work_dir``."""
    ports = free_loopback_ports(2 * size)
    addresses = {server_id: (ports[2 * server_id - 2], ports[2 * server_id - 1]) for server_id in range(1, size + 1)}
    members = {}
    for server_id, (peer_port, client_port) in addresses.items():
        data_dir = work_dir / f"server-{server_id}"
        config_path = work_dir / f"server-{server_id}.toml"
        config_path.write_text(ensemble_config(server_id, data_dir, addresses))
        members[server_id] = CoordMember(
            server_id=server_id,
            client_port=client_port,
            peer_port=peer_port,
            config_path=config_path,
            data_dir=data_dir,
            log_path=work_dir / f"server-{server_id}.log",
        )
    return members


@contextlib.contextmanager
def run_coord_ensemble(size: int = 3, *, startup_timeout: float = 60.0, attempts: int = 3) -> Iterator[CoordEnsemble]:
    """Run an N-server coord ensemble on free loopback ports for the duration of the ``with`` block.

    Each start attempt gets a fresh temp directory and fresh ports. The block is entered once one
    server reports ``leader`` and all the others ``follower``. On leaving it — normally, on an
    exception or on Ctrl-C — every server is stopped (SIGINT, SIGTERM, then SIGKILL) and the
    directory deleted.

    Args:
        size: Number of servers (ids 1..size).
        startup_timeout: Seconds to wait for one attempt to elect a leader with everyone following.
        attempts: Start attempts (a port may be taken between picking and binding it).

    Yields:
        The running ensemble.

    Raises:
        CoordNotAvailableError: No usable ``coord`` executable.
        CoordStartError: No attempt came up; carries the tails of the last attempt's server logs.
    """
    if size < 1:
        raise ValueError("an ensemble needs at least one server")
    executable = find_coord()
    failures: list[str] = []
    for _attempt in range(attempts):
        work_dir = Path(tempfile.mkdtemp(prefix="coord-bench-ensemble-"))
        ensemble: CoordEnsemble | None = None
        try:
            ensemble = CoordEnsemble(executable, work_dir, _prepare(work_dir, size))
            ensemble._start_all()
            try:
                ensemble.wait_for_quorum(timeout=startup_timeout)
            except CoordStartError as error:
                failures.append(str(error))
                continue
            yield ensemble
            return
        finally:
            if ensemble is not None:
                ensemble._stop_all()
            shutil.rmtree(work_dir, ignore_errors=True)
    raise CoordStartError(f"coord ensemble did not start after {attempts} attempts; last: {failures[-1]}")


def main() -> None:
    """Start a 3-server ensemble, print the roles, kill the leader, wait for a new one: a smoke test."""
    with run_coord_ensemble(3) as ensemble:
        print(f"coord ensemble at {ensemble.connect_string} in {ensemble.work_dir}")
        for server_id, member in ensemble.members.items():
            print(f"  server {server_id}: pid {member.pid}, client {member.client_address}, peer {member.peer_port}")
        leader = ensemble.leader_id()
        print(f"roles {ensemble.roles()}; killing leader {leader}")
        assert leader is not None
        killed_at = ensemble.kill(leader)
        new_leader = ensemble.wait_for_quorum(timeout=30.0)
        print(f"new leader {new_leader} after {time.monotonic() - killed_at:.3f}s; roles {ensemble.roles()}")
        ensemble.restart(leader)
        ensemble.wait_for_quorum(timeout=30.0)
        print(f"restarted {leader}; roles {ensemble.roles()}")


if __name__ == "__main__":
    main()
