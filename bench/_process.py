"""Small helpers shared by the server launchers: loopback ports, stopping a child, log tails."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
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
