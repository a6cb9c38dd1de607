"""Start and stop a throwaway standalone ZooKeeper 3.8 for the side-by-side benchmark.

Installing it (Debian/Ubuntu)::

    apt-get install zookeeper        # ZooKeeper 3.8 + its jars under /usr/share/java; needs a JRE (java 11+)

Nothing from the package's own service setup is used (no /etc/zookeeper/conf, no
/var/lib/zookeeper, no systemd unit): :func:`run_zookeeper` writes a private ``zoo.cfg``
into a temp directory and runs the server class directly, the way Debian's
``zkServer.sh start-foreground`` would::

    java -Xmx1g -cp CONF:/usr/share/java/zookeeper.jar[:slf4j-log4j12.jar:log4j-1.2.jar] \\
        org.apache.zookeeper.server.quorum.QuorumPeerMain CONF/zoo.cfg

``zookeeper.jar``'s manifest lists its runtime dependencies (netty, jute, slf4j-api, ...)
on its ``Class-Path``, so that one jar is enough; the log4j binding is added when present
only so that the server's log lands in the temp dir (shown if the start fails).

The server is what a user of the package gets by default for durability: ``forceSync=yes``
(fsync of the transaction log before a write is acknowledged), snapshots and txn log on
the same local disk as coord's LMDB, so the comparison with coord (fsync on) is fair.
It listens on 127.0.0.1 only, with the AdminServer (Jetty, port 8080) switched off and only
the ``ruok``/``srvr``/``mntr`` four-letter words enabled.

Paths can be overridden with the environment variables ``ZK_JAR`` and ``JAVA``, and the
heap (``-Xmx``, default ``1g``) with ``ZK_HEAP`` (a 200 MB tree needs more than 1 GB).

:func:`run_zookeeper_ensemble` runs a replicated ensemble the same way: N JVMs, each with its
own ``zoo.cfg``, ``dataDir`` (holding its ``myid``), ``dataLogDir`` and log under one temp dir,
the same settings as above plus ``server.N=127.0.0.1:QUORUM_PORT:ELECTION_PORT`` lines on free
loopback ports and the timing of ZooKeeper's sample config (``tickTime=2000``, ``initLimit=10``,
``syncLimit=5``). It is ready once ``srvr`` shows one leader and every other server following.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench._process import LOOPBACK, free_loopback_port, free_loopback_ports, log_tail, stop_process, stop_processes

DEFAULT_ZK_JAR = Path("/usr/share/java/zookeeper.jar")
"""Where Debian's ``zookeeper`` package puts the server jar."""

_LOG4J_JARS = (Path("/usr/share/java/slf4j-log4j12.jar"), Path("/usr/share/java/log4j-1.2.jar"))
_MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
_INSTALL_HINT = "install it with `apt-get install zookeeper` (Debian/Ubuntu, ZooKeeper 3.8)"


class ZooKeeperNotInstalledError(RuntimeError):
    """java or the ZooKeeper jar is missing; the message says how to install them."""


class ZooKeeperStartError(RuntimeError):
    """The server process did not come up; the message carries the tail of its log."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ZooKeeperServer:
    """A running throwaway ZooKeeper server.

    Attributes:
        host: Loopback address it listens on.
        port: Client port.
        version: Version number reported by the ``srvr`` four-letter word, e.g. ``3.8.0``.
        work_dir: Temp directory holding conf, data, txn log and server log (deleted on stop).
        pid: Process id of the JVM.
    """

    host: str
    port: int
    version: str
    work_dir: Path
    pid: int

    @property
    def connect_string(self) -> str:
        """``host:port``, as kazoo wants it."""
        return f"{self.host}:{self.port}"


def find_zookeeper() -> tuple[str, Path]:
    """Locate java and the ZooKeeper server jar.

    Returns:
        ``(java_executable, zookeeper_jar)``.

    Raises:
        ZooKeeperNotInstalledError: One of them is missing.
    """
    java = os.environ.get("JAVA") or shutil.which("java")
    jar = Path(os.environ.get("ZK_JAR", DEFAULT_ZK_JAR))
    if not java:
        raise ZooKeeperNotInstalledError(f"java not found on PATH; {_INSTALL_HINT}")
    if not jar.is_file():
        raise ZooKeeperNotInstalledError(f"{jar} not found; {_INSTALL_HINT}")
    return java, jar


def four_letter_word(host: str, port: int, word: str, *, timeout: float = 2.0) -> str:
    """Send a ZooKeeper four-letter-word command (``ruok``, ``srvr``, ...) and return the reply.

    Raises:
        OSError: The connection failed or timed out.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(word.encode("ascii"))
        chunks: list[bytes] = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _write_config(work_dir: Path, port: int, extra: list[str] | None = None) -> Path:
    """Write ``conf/zoo.cfg`` and ``conf/log4j.properties`` under ``work_dir``; ``extra`` lines go into zoo.cfg."""
    conf_dir = work_dir / "conf"
    for sub in ("conf", "data", "datalog", "log"):
        (work_dir / sub).mkdir(parents=True, exist_ok=True)
    config = conf_dir / "zoo.cfg"
    config.write_text(
        "\n".join(
            [
                "tickTime=2000",
                f"dataDir={work_dir / 'data'}",
                f"dataLogDir={work_dir / 'datalog'}",
                f"clientPort={port}",
                f"clientPortAddress={LOOPBACK}",
                # ZooKeeper's default, written out because the comparison depends on it:
                # the txn log is fsynced before a write is acknowledged.
                "forceSync=yes",
                "admin.enableServer=false",
                "4lw.commands.whitelist=ruok,srvr,mntr",
                *(extra or []),
                "",
            ]
        )
    )
    (conf_dir / "log4j.properties").write_text(
        "\n".join(
            [
                "log4j.rootLogger=INFO, FILE",
                "log4j.appender.FILE=org.apache.log4j.FileAppender",
                f"log4j.appender.FILE.File={work_dir / 'log' / 'zookeeper.log'}",
                "log4j.appender.FILE.layout=org.apache.log4j.PatternLayout",
                "log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n",
                "",
            ]
        )
    )
    return config


def _command(java: str, jar: Path, work_dir: Path, config: Path) -> list[str]:
    classpath = [str(work_dir / "conf"), str(jar), *(str(extra) for extra in _LOG4J_JARS if extra.is_file())]
    return [
        java,
        f"-Xmx{os.environ.get('ZK_HEAP') or '1g'}",  # upstream zkEnv.sh's default heap (ZK_SERVER_HEAP=1000)
        f"-Dzookeeper.log.dir={work_dir / 'log'}",
        "-cp",
        os.pathsep.join(classpath),
        _MAIN_CLASS,
        str(config),
    ]


def _parse_version(status: str) -> str:
    """The version number from a ``srvr`` reply's first line."""
    line = status.splitlines()[0].removeprefix("Zookeeper version: ")
    # "3.8.0-${mvngit.commit.id}, built on ..." (Debian leaves the git id unexpanded)
    return line.split(",")[0].split("-")[0].strip()


def _parse_mode(status: str) -> str | None:
    """``leader``, ``follower``, ``standalone``, ... from a ``srvr`` reply (None while not serving)."""
    for line in status.splitlines():
        if line.startswith("Mode:"):
            return line.removeprefix("Mode:").strip()
    return None


def _wait_ready(process: subprocess.Popen[bytes], port: int, deadline: float) -> str | None:
    """Poll ``ruok`` and ``srvr`` until the server serves; return its version line, or None if it died."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        with contextlib.suppress(OSError):
            if four_letter_word(LOOPBACK, port, "ruok") == "imok":
                status = four_letter_word(LOOPBACK, port, "srvr")
                # "srvr" says "not currently serving requests" until the database is loaded.
                if "Mode:" in status:
                    return _parse_version(status)
        time.sleep(0.1)
    raise ZooKeeperStartError(f"ZooKeeper on port {port} not ready in time")


def _start_once(
    java: str, jar: Path, work_dir: Path, startup_timeout: float
) -> tuple[subprocess.Popen[bytes], ZooKeeperServer]:
    """Start one JVM in ``work_dir``; on failure stop it and raise ZooKeeperStartError."""
    port = free_loopback_port()
    config = _write_config(work_dir, port)
    with (work_dir / "log" / "stdout.txt").open("wb") as stdout:
        process = subprocess.Popen(
            _command(java, jar, work_dir, config),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
        )
    try:
        version = _wait_ready(process, port, time.monotonic() + startup_timeout)
        if version is None:
            raise ZooKeeperStartError(f"exited with code {process.returncode}")
    except BaseException as error:
        stop_process(process, signals=(signal.SIGTERM,), timeout=10.0)
        if isinstance(error, ZooKeeperStartError):
            raise ZooKeeperStartError(
                f"{error}\n{log_tail(work_dir / 'log' / 'stdout.txt', work_dir / 'log' / 'zookeeper.log')}"
            ) from None
        raise
    return process, ZooKeeperServer(host=LOOPBACK, port=port, version=version, work_dir=work_dir, pid=process.pid)


@contextlib.contextmanager
def run_zookeeper(*, startup_timeout: float = 60.0, attempts: int = 3) -> Iterator[ZooKeeperServer]:
    """Run a standalone ZooKeeper on a free loopback port for the duration of the ``with`` block.

    Each start gets a fresh temp directory (conf, dataDir, dataLogDir, log). On leaving the
    block — normally, on an exception or on Ctrl-C — the JVM is stopped and the directory deleted.

    Args:
        startup_timeout: Seconds to wait for one start attempt to answer ``ruok`` and ``srvr``.
        attempts: Start attempts; a retry uses a new port (another process may have taken the
            one we picked between releasing and ZooKeeper binding it).

    Yields:
        The running server.

    Raises:
        ZooKeeperNotInstalledError: java or the jar is missing.
        ZooKeeperStartError: No attempt came up; carries the tail of the last server log.
    """
    java, jar = find_zookeeper()
    failures: list[str] = []
    for _attempt in range(attempts):
        work_dir = Path(tempfile.mkdtemp(prefix="coord-bench-zk-"))
        try:
            process, server = _start_once(java, jar, work_dir, startup_timeout)
        except ZooKeeperStartError as error:
            failures.append(str(error))
            shutil.rmtree(work_dir, ignore_errors=True)
            continue
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        try:
            yield server
        finally:
            stop_process(process, signals=(signal.SIGTERM,), timeout=10.0)
            shutil.rmtree(work_dir, ignore_errors=True)
        return
    raise ZooKeeperStartError(f"ZooKeeper did not start after {attempts} attempts; last: {failures[-1]}")


# --------------------------------------------------------------------------- ensemble

ENSEMBLE_TIMING: tuple[str, ...] = ("tickTime=2000", "initLimit=10", "syncLimit=5")
"""Timing lines of the generated ensemble ``zoo.cfg`` (those of ZooKeeper's ``zoo_sample.cfg``)."""


@dataclass(slots=True, kw_only=True)
class ZooKeeperMember:
    """One server of a :class:`ZooKeeperEnsemble`.

    Attributes:
        server_id: Its ``myid``.
        client_port: Client port on 127.0.0.1.
        quorum_port: Port followers connect to the leader on (first port of ``server.N``).
        election_port: Leader-election port (second port of ``server.N``).
        work_dir: Its conf, data (with ``myid``), datalog and log directories.
        process: The running JVM, or None while killed.
        exit_codes: Exit status of every earlier JVM of this member (``-9`` after a SIGKILL).
    """

    server_id: int
    client_port: int
    quorum_port: int
    election_port: int
    work_dir: Path
    process: subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def client_address(self) -> str:
        """``127.0.0.1:PORT`` of its client port."""
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running JVM, None while it is killed."""
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """True while its JVM exists and has not exited."""
        return self.process is not None and self.process.poll() is None

    @property
    def log_paths(self) -> tuple[Path, Path]:
        """Its JVM stdout and its log4j log."""
        return self.work_dir / "log" / "stdout.txt", self.work_dir / "log" / "zookeeper.log"


class ZooKeeperEnsemble:
    """A running N-server ZooKeeper ensemble of JVMs. Made by :func:`run_zookeeper_ensemble`."""

    def __init__(self, java: str, jar: Path, work_dir: Path, members: dict[int, ZooKeeperMember]) -> None:
        self._java = java
        self._jar = jar
        self.work_dir = work_dir
        """Temp directory holding every server's directory (deleted on exit)."""
        self.members = members
        """Server id -> member, in id order."""
        self.version = ""
        """Version reported by ``srvr`` once the ensemble is up, e.g. ``3.8.0``."""

    @property
    def host(self) -> str:
        """The loopback address every server listens on."""
        return LOOPBACK

    @property
    def connect_string(self) -> str:
        """``host:port,...`` of every server's client port, as kazoo wants it."""
        return ",".join(member.client_address for member in self.members.values())

    @property
    def server_ids(self) -> list[int]:
        """Every server id, ascending."""
        return list(self.members)

    def pid(self, server_id: int) -> int | None:
        """Process id of a server's JVM, None while it is killed."""
        return self.members[server_id].pid

    def client_address(self, server_id: int) -> str:
        """``127.0.0.1:PORT`` of a server's client port."""
        return self.members[server_id].client_address

    def srvr(self, server_id: int, *, timeout: float = 1.0) -> str | None:
        """A server's ``srvr`` reply, or None if it is not running or does not answer."""
        member = self.members[server_id]
        if not member.running:
            return None
        try:
            return four_letter_word(LOOPBACK, member.client_port, "srvr", timeout=timeout)
        except OSError:
            return None

    def roles(self, *, timeout: float = 1.0) -> dict[int, str]:
        """Server id -> ``Mode`` from ``srvr`` (``leader``, ``follower``); ``down`` if killed,
        ``unreachable`` if it does not answer, ``not serving`` while it has no quorum."""
        roles = {}
        for server_id, member in self.members.items():
            if not member.running:
                roles[server_id] = "down"
                continue
            status = self.srvr(server_id, timeout=timeout)
            roles[server_id] = "unreachable" if status is None else (_parse_mode(status) or "not serving")
        return roles

    def leader_id(self, *, timeout: float = 1.0) -> int | None:
        """The id of the running server whose ``srvr`` says ``Mode: leader`` (None if there is none)."""
        for server_id, role in self.roles(timeout=timeout).items():
            if role == "leader":
                return server_id
        return None

    def wait_for_quorum(self, *, timeout: float = 60.0) -> int:
        """Wait until one running server is the leader and every other running one a follower.

        Returns:
            The leader's id.

        Raises:
            ZooKeeperStartError: Not so within ``timeout``, or a JVM exited (with the log tails).
        """
        deadline = time.monotonic() + timeout
        roles: dict[int, str] = {}
        while time.monotonic() < deadline:
            for member in self.members.values():
                if member.process is not None and member.process.poll() is not None:
                    raise ZooKeeperStartError(
                        f"ZooKeeper server {member.server_id} exited with code {member.process.returncode}\n"
                        f"{self.log_tails()}"
                    )
            roles = self.roles(timeout=0.5)
            running = {server_id: role for server_id, role in roles.items() if role != "down"}
            leaders = [server_id for server_id, role in running.items() if role == "leader"]
            if len(leaders) == 1 and all(role == "follower" for sid, role in running.items() if sid != leaders[0]):
                status = self.srvr(leaders[0])
                if status:
                    self.version = _parse_version(status)
                return leaders[0]
            time.sleep(0.1)
        raise ZooKeeperStartError(
            f"no leader with all others following within {timeout}s (roles {roles})\n{self.log_tails()}"
        )

    def kill(self, server_id: int) -> float:
        """SIGKILL a server's JVM and reap it.

        Returns:
            ``time.monotonic()`` just before the signal was sent.
        """
        member = self.members[server_id]
        process = member.process
        if process is None:
            raise RuntimeError(f"ZooKeeper server {server_id} is not running")
        killed_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        member.exit_codes.append(process.wait())
        member.process = None
        return killed_at

    def restart(self, server_id: int, *, timeout: float = 60.0) -> None:
        """Start a killed (or exited) server again on its ports and data; wait until it answers ``ruok``.

        Raises:
            ZooKeeperStartError: It exited or did not answer within ``timeout``.
        """
        member = self.members[server_id]
        if member.running:
            raise RuntimeError(f"ZooKeeper server {server_id} is running")
        if member.process is not None:
            member.exit_codes.append(member.process.wait())
            member.process = None
        self._launch(member)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert member.process is not None
            if member.process.poll() is not None:
                raise ZooKeeperStartError(
                    f"ZooKeeper server {server_id} exited with code {member.process.returncode} on restart\n"
                    f"{log_tail(*member.log_paths)}"
                )
            with contextlib.suppress(OSError):
                if four_letter_word(LOOPBACK, member.client_port, "ruok", timeout=0.5) == "imok":
                    return
            time.sleep(0.1)
        raise ZooKeeperStartError(f"ZooKeeper server {server_id} not answering {timeout}s after a restart")

    def log_tails(self, *, lines: int = 30) -> str:
        """The last ``lines`` of every server's stdout and log, for error messages."""
        return "\n".join(
            f"=== server {member.server_id} ===\n{log_tail(*member.log_paths, lines=lines)}"
            for member in self.members.values()
        )

    def _launch(self, member: ZooKeeperMember) -> None:
        config = member.work_dir / "conf" / "zoo.cfg"
        stdout_path = member.log_paths[0]
        with stdout_path.open("ab") as stdout:
            member.process = subprocess.Popen(
                _command(self._java, self._jar, member.work_dir, config),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=member.work_dir,
            )

    def _start_all(self) -> None:
        for member in self.members.values():
            self._launch(member)

    def _stop_all(self) -> None:
        processes = [member.process for member in self.members.values() if member.process is not None]
        stop_processes(processes, signals=(signal.SIGTERM,), timeout=10.0)
        for member in self.members.values():
            if member.process is not None:
                member.exit_codes.append(member.process.returncode)
                member.process = None


def _prepare_ensemble(work_dir: Path, size: int) -> dict[int, ZooKeeperMember]:
    """Pick 3 x ``size`` free ports; write each server's zoo.cfg, log4j config and myid."""
    ports = free_loopback_ports(3 * size)
    members = {
        server_id: ZooKeeperMember(
            server_id=server_id,
            client_port=ports[3 * index],
            quorum_port=ports[3 * index + 1],
            election_port=ports[3 * index + 2],
            work_dir=work_dir / f"server-{server_id}",
        )
        for index, server_id in enumerate(range(1, size + 1))
    }
    quorum = [
        f"server.{member.server_id}={LOOPBACK}:{member.quorum_port}:{member.election_port}"
        for member in members.values()
    ]
    for member in members.values():
        _write_config(member.work_dir, member.client_port, [*ENSEMBLE_TIMING, *quorum])
        (member.work_dir / "data" / "myid").write_text(f"{member.server_id}\n")
    return members


@contextlib.contextmanager
def run_zookeeper_ensemble(
    size: int = 3, *, startup_timeout: float = 90.0, attempts: int = 3
) -> Iterator[ZooKeeperEnsemble]:
    """Run an N-server ZooKeeper ensemble on free loopback ports for the duration of the ``with`` block.

    Each start attempt gets a fresh temp directory (one subdirectory per server: conf, data with
    ``myid``, datalog, log) and fresh ports. The block is entered once ``srvr`` shows one leader
    and every other server following. On leaving it — normally, on an exception or on Ctrl-C —
    every JVM is stopped (SIGTERM, then SIGKILL) and the directory deleted.

    Args:
        size: Number of servers (``myid`` 1..size).
        startup_timeout: Seconds to wait for one attempt to elect a leader with everyone following.
        attempts: Start attempts (a port may be taken between picking and binding it).

    Yields:
        The running ensemble.

    Raises:
        ZooKeeperNotInstalledError: java or the jar is missing.
        ZooKeeperStartError: No attempt came up; carries the tails of the last attempt's logs.
    """
    if size < 1:
        raise ValueError("an ensemble needs at least one server")
    java, jar = find_zookeeper()
    failures: list[str] = []
    for _attempt in range(attempts):
        work_dir = Path(tempfile.mkdtemp(prefix="coord-bench-zk-ensemble-"))
        ensemble: ZooKeeperEnsemble | None = None
        try:
            ensemble = ZooKeeperEnsemble(java, jar, work_dir, _prepare_ensemble(work_dir, size))
            ensemble._start_all()
            try:
                ensemble.wait_for_quorum(timeout=startup_timeout)
            except ZooKeeperStartError as error:
                failures.append(str(error))
                continue
            yield ensemble
            return
        finally:
            if ensemble is not None:
                ensemble._stop_all()
            shutil.rmtree(work_dir, ignore_errors=True)
    raise ZooKeeperStartError(f"ZooKeeper ensemble did not start after {attempts} attempts; last: {failures[-1]}")


def main(argv: list[str] | None = None) -> None:
    """Smoke test of this module: start a standalone server (or, with ``--ensemble N``, an N-server
    ensemble, then kill its leader and wait for a new one), print what runs, stop it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.zk_server", description=main.__doc__)
    parser.add_argument("--ensemble", type=int, default=0, metavar="N", help="run an N-server ensemble")
    args = parser.parse_args(argv)
    if args.ensemble:
        with run_zookeeper_ensemble(args.ensemble) as ensemble:
            print(f"ZooKeeper {ensemble.version} ensemble at {ensemble.connect_string} in {ensemble.work_dir}")
            for server_id, member in ensemble.members.items():
                print(f"  server {server_id}: pid {member.pid}, client {member.client_address}")
            leader = ensemble.leader_id()
            print(f"roles {ensemble.roles()}; killing leader {leader}")
            assert leader is not None
            killed_at = ensemble.kill(leader)
            new_leader = ensemble.wait_for_quorum(timeout=60.0)
            print(f"new leader {new_leader} after {time.monotonic() - killed_at:.3f}s; roles {ensemble.roles()}")
        return
    with run_zookeeper() as server:
        print(f"ZooKeeper {server.version} at {server.connect_string} (pid {server.pid}, dir {server.work_dir})")
        print(four_letter_word(server.host, server.port, "srvr"))


if __name__ == "__main__":
    main()
