"""Helpers shared by the recipe tests (no tests here): a connection switchboard that can
hold back replies or cut connections, and subprocesses that hold a lock. (Polling a
condition: :func:`tests.polling.wait_until`.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import client
from coord.testing import Ensemble

PYTHON = sys.executable


def connect(ensemble: Ensemble | str, session_timeout: float = 5.0, **kwargs: Any) -> Any:
    hosts = ensemble if isinstance(ensemble, str) else ensemble.connect_string
    return client.connect(hosts, session_timeout=session_timeout, **kwargs)


class Switchboard:
    """An ``open_stream`` for ``client.connect`` whose connections can be made to hold
    back what the server sends (a silent partition), be cut, or be refused."""

    def __init__(self) -> None:
        self.holding = False
        self.refusing = False
        self.streams: list[_GatedStream] = []

    async def open_stream(self, host: str, port: int) -> trio.abc.Stream:
        if self.refusing:
            await trio.lowlevel.checkpoint()
            raise OSError("refused by the switchboard")
        stream = _GatedStream(await trio.open_tcp_stream(host, port), self)
        self.streams.append(stream)
        return stream

    def hold(self) -> None:
        """From now on, keep what the servers send (until :meth:`release`)."""
        self.holding = True
        self._wake()

    def release(self) -> None:
        self.holding = False
        self._wake()

    def cut(self) -> None:
        """Break every open connection (what was held back is lost)."""
        for stream in self.streams:
            stream.broken = True
        self._wake()

    def _wake(self) -> None:
        for stream in self.streams:
            if stream.scope is not None:
                stream.scope.cancel()


class _GatedStream(trio.abc.Stream):
    def __init__(self, inner: trio.abc.Stream, board: Switchboard) -> None:
        self.inner = inner
        self.board = board
        self.broken = False
        self.buffer = bytearray()
        self.scope: trio.CancelScope | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("cut by the switchboard")
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            if self.broken:
                await trio.lowlevel.checkpoint()
                raise trio.BrokenResourceError("cut by the switchboard")
            if self.buffer and not self.board.holding:
                data = bytes(self.buffer)
                self.buffer.clear()
                await trio.lowlevel.checkpoint()
                return data
            with trio.CancelScope() as scope:
                self.scope = scope
                received = await self.inner.receive_some(max_bytes)
                if not received and not self.board.holding:
                    return b""
                self.buffer += received
                if not received:
                    await trio.sleep_forever()  # EOF while holding: wait for a change
            self.scope = None

    async def aclose(self) -> None:
        await self.inner.aclose()


def avoid_first(address: str) -> Callable[[str, int], Awaitable[trio.abc.Stream]]:
    """An ``open_stream`` that will not make its first connection to ``address``
    (``host:port``): to start a client on a server other than, say, the leader."""
    host, port = address.rsplit(":", 1)
    connected = False

    async def open_stream(to_host: str, to_port: int) -> trio.abc.Stream:
        nonlocal connected
        if not connected and (to_host, to_port) == (host, int(port)):
            await trio.lowlevel.checkpoint()
            raise OSError("not this one first")
        stream = await trio.open_tcp_stream(to_host, to_port)
        connected = True
        return stream

    return open_stream


HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys, trio, client
    from recipes import Lock, LeaderElection

    async def main(servers, kind, path):
        async with client.connect(servers, session_timeout=float(sys.argv[4])) as zk:
            if kind == "lock":
                async with Lock(zk, path, "subprocess") as lock:
                    print("held", lock.token, zk.session_id, flush=True)
                    await trio.sleep_forever()
            else:
                async with LeaderElection(zk, path, "subprocess").campaign() as election:
                    print("held", election.token, zk.session_id, flush=True)
                    await trio.sleep_forever()

    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
    """
)


async def start_holder(
    nursery: trio.Nursery, servers: str, kind: str, path: str, session_timeout: float = 1.0
) -> trio.Process:
    """A separate process that takes a lock (``kind="lock"``) or leadership
    (``"election"``) at ``path`` and holds it until killed. Returns once it holds."""
    process: trio.Process = await nursery.start(
        lambda task_status: trio.run_process(
            [PYTHON, "-c", HOLDER_SCRIPT, servers, kind, path, str(session_timeout)],
            stdout=subprocess.PIPE,
            check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            task_status=task_status,
        )
    )
    assert process.stdout is not None
    line = b""
    with trio.fail_after(20):
        while b"\n" not in line:
            chunk = await process.stdout.receive_some(4096)
            assert chunk, "the holder exited before holding"
            line += chunk
    assert line.startswith(b"held"), line
    return process
