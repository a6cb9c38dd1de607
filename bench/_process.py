"""Small helpers shared by the server launchers: loopback ports, stopping a child, log tails."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
"""The only address the benchmark binds or connects to."""


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind port 0, then release).

    Another process could take it before the server binds it; launchers retry a failed start.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def is_listening(port: int, *, timeout: float = 0.5) -> bool:
    """True if a TCP connect to 127.0.0.1:``port`` succeeds right now."""
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=timeout):
        return True
    return False


def stop_process(process: subprocess.Popen[bytes], *, signals: tuple[int, ...], timeout: float = 5.0) -> None:
    """Stop a child politely: send each of ``signals`` in turn, waiting ``timeout`` after each, then SIGKILL.

    Always reaps the child, so no zombie is left behind.
    """
    for signum in signals:
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        process.wait()


def log_tail(*paths: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of each existing file, headed by its name, for error messages."""
    parts = []
    for path in paths:
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} ---\n" + "\n".join(tail))
    return "\n".join(parts) or "(no log output)"


def free_loopback_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    All ``count`` sockets are held bound until every port is picked, so the ports differ from
    each other; as with :func:`free_loopback_port` another process may take one before the
    servers bind it, and launchers retry a failed start on new ports.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def stop_processes(processes: list[subprocess.Popen[bytes]], *, signals: tuple[int, ...], timeout: float = 5.0) -> None:
    """Stop several children at once: like :func:`stop_process`, but each signal goes to all of them
    before waiting, so N stuck children take ``timeout`` per signal in all, not N times that.

    Always reaps every child, also when interrupted part way (the rest get SIGKILL).
    """
    try:
        for signum in signals:
            alive = [process for process in processes if process.poll() is None]
            if not alive:
                return
            for process in alive:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)
            deadline = time.monotonic() + timeout
            for process in alive:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
                process.wait()
