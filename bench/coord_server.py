"""Start and stop a throwaway standalone coord server (a subprocess) for the benchmark.

The server runs exactly as a user would start it, with the server's defaults (fsync on)::

    .venv/bin/coord serve --data-dir TMP/data --listen 127.0.0.1:PORT

in its own process, so it does not share the benchmark client's interpreter, GIL or trio
loop — the same footing as the ZooKeeper JVM. Its output goes to ``TMP/server.log``
(shown if the start fails); TMP is deleted when the server stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench._process import LOOPBACK, free_loopback_port, is_listening, log_tail, stop_process


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
