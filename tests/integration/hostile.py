"""Helpers for tests that play a hostile client or peer against real servers.

Raw sockets that never read (with a small receive buffer, so the server's replies
pile up on its side quickly), a non-consuming look at a socket's TCP state, a
process's resident memory, and waiting for the server to close a connection.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import trio

from coord import protocol
from tests.integration.rawwire import RawConnection

TCP_ESTABLISHED = 1
TCP_CLOSE = 7  # after a reset
TCP_CLOSE_WAIT = 8  # the other end sent its FIN


def rss_mb(pid: int) -> float:
    """A process's resident set size in MiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def tcp_state(stream: trio.SocketStream) -> int:
    """The kernel's TCP state of a connected socket (Linux TCP_INFO), read without
    consuming anything: CLOSE after a reset, CLOSE_WAIT once the peer sent its FIN."""
    info = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return struct.unpack_from("B", info)[0]


async def open_raw(address: tuple[str, int], *, receive_buffer: int | None = None) -> RawConnection:
    """A raw connection; ``receive_buffer`` shrinks the socket's receive buffer (set
    before connecting, so the window the server sees stays small)."""
    if receive_buffer is None:
        return await RawConnection.open(address)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return RawConnection(trio.SocketStream(sock))


async def handshake_without_reading_more(connection: RawConnection, **fields: Any) -> protocol.ConnectResponse:
    """Open a session, reading exactly the handshake reply and nothing after it."""
    await connection.send(protocol.ConnectRequest(**fields).to_wire())
    while True:
        for body in connection.reader:
            reply = protocol.decode_handshake_reply(protocol.decode_body(body))
            assert isinstance(reply, protocol.ConnectResponse), reply
            return reply
        data = await connection.stream.receive_some(4096)
        assert data, "the server closed the connection during the handshake"
        connection.reader.feed(data)


async def drain_until_closed(connection: RawConnection, *, bytes_max: int = 256 << 20) -> int:
    """Read and drop everything until the server's EOF or reset; return the bytes read.

    The caller bounds the time; ``bytes_max`` bounds the reading (a server that keeps
    sending forever fails the test instead of hanging it)."""
    total = 0
    while total <= bytes_max:
        try:
            data = await connection.stream.receive_some(1 << 20)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return total
        if not data:
            return total
        total += len(data)
    raise AssertionError(f"the server sent more than {bytes_max} bytes without closing the connection")


def log_tail_text(log_path: Path, bytes_max: int = 1 << 20) -> str:
    """The last ``bytes_max`` bytes of a server's log ("" if there is none)."""
    try:
        with log_path.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - bytes_max))
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def server_gave_up_on(log_path: Path, session_id: int) -> bool:
    """Whether a server's log says it closed this session's connection for not reading."""
    return f"(session {session_id:#x}) is not reading its replies" in log_tail_text(log_path)


__all__ = [
    "TCP_CLOSE",
    "TCP_CLOSE_WAIT",
    "TCP_ESTABLISHED",
    "drain_until_closed",
    "handshake_without_reading_more",
    "log_tail_text",
    "open_raw",
    "rss_mb",
    "server_gave_up_on",
    "tcp_state",
]
