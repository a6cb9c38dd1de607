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

Paths can be overridden with the environment variables ``ZK_JAR`` and ``JAVA``.
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
from dataclasses import dataclass
from pathlib import Path

from bench._process import LOOPBACK, free_loopback_port, log_tail, stop_process

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


def _write_config(work_dir: Path, port: int) -> Path:
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
        "-Xmx1g",  # upstream zkEnv.sh's default heap (ZK_SERVER_HEAP=1000)
        f"-Dzookeeper.log.dir={work_dir / 'log'}",
        "-cp",
        os.pathsep.join(classpath),
        _MAIN_CLASS,
        str(config),
    ]


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
                    line = status.splitlines()[0].removeprefix("Zookeeper version: ")
                    # "3.8.0-${mvngit.commit.id}, built on ..." (Debian leaves the git id unexpanded)
                    return line.split(",")[0].split("-")[0].strip()
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


def main() -> None:
    """Start a server, print its address and version, stop it: a smoke test of this module."""
    with run_zookeeper() as server:
        print(f"ZooKeeper {server.version} at {server.connect_string} (pid {server.pid}, dir {server.work_dir})")
        print(four_letter_word(server.host, server.port, "srvr"))


if __name__ == "__main__":
    main()
