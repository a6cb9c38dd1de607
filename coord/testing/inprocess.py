"""In-process ensembles: every server a task of the caller's trio loop.

Every server is the real one (:func:`coord.server.open_server`, with the fault hooks of
:class:`~coord.testing.faults.FaultableServer`), with real sockets on 127.0.0.1, real
LMDB files and real ZAB between them. Killing one cancels its task: nothing more reaches
its disk, as with ``kill -9`` (every acknowledged write was already fsynced), and its
sockets close at once. The servers bind port 0 first and keep the ports they got across
restarts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from coord.config import Address, EnsembleConfig, EnsembleMember, ServerConfig
from coord.server import open_server
from coord.testing.common import HOST, SERVER_ROLES
from coord.testing.faults import FaultableServer

KILL_TIMEOUT_S = 30.0


class InProcessMember:
    """One in-process server: its configuration and, while it runs, its task."""

    def __init__(self, server_id: int, config: ServerConfig) -> None:
        self.server_id = server_id
        self.config = config
        self.server: FaultableServer | None = None
        self.scope: trio.CancelScope | None = None
        self.stopped = trio.Event()

    @property
    def client_address(self) -> Address:
        return self.config.listen_host, self.config.listen_port

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def is_running(self) -> bool:
        return self.server is not None

    @property
    def is_sidelined(self) -> bool:
        """Running but cut off (isolated): not waited for to serve or converge."""
        return self.server is not None and self.server.is_isolated

    def leads(self) -> bool:
        """Whether it leads an established epoch (an isolated server is left out: it may
        still believe it leads until it notices that it lost its quorum)."""
        server = self.server
        return server is not None and server.role in SERVER_ROLES and not server.is_isolated

    def running(self) -> FaultableServer:
        """The running server.

        Raises:
            RuntimeError: it is not running.
        """
        if self.server is None:
            raise RuntimeError(f"server {self.server_id} is not running")
        return self.server

    async def status(self) -> dict[str, Any]:
        """What ``coord status`` shows (role, zxid, sessions, znodes...)."""
        return self.running().status()

    async def start(
        self, nursery: trio.Nursery, client_listener: trio.SocketListener, peer_listener: trio.SocketListener
    ) -> FaultableServer:
        """Start the server as a task of ``nursery``, on these listeners; returns once it listens."""
        self.stopped = trio.Event()
        server: FaultableServer = await nursery.start(self._run, client_listener, peer_listener)
        return server

    async def _run(
        self,
        client_listener: trio.SocketListener,
        peer_listener: trio.SocketListener,
        *,
        task_status: trio.TaskStatus[FaultableServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with trio.CancelScope() as scope:
                self.scope = scope
                async with open_server(
                    self.config,
                    client_listener=client_listener,
                    peer_listener=peer_listener,
                    server_type=FaultableServer,
                ) as server:
                    assert isinstance(server, FaultableServer)
                    self.server = server
                    task_status.started(server)
                    await trio.sleep_forever()
        finally:
            self.server = None
            self.scope = None
            self.stopped.set()

    async def restart(self, nursery: trio.Nursery) -> FaultableServer:
        """Start the stopped server again, on its ports and its data directory.

        Raises:
            RuntimeError: it is running.
        """
        if self.server is not None:
            raise RuntimeError(f"server {self.server_id} is running")
        host, port = self.client_address
        client_listener = await bind(host, port)
        ensemble = self.config.ensemble
        assert ensemble is not None
        host, port = ensemble.servers[self.server_id].peer
        peer_listener = await bind(host, port)
        return await self.start(nursery, client_listener, peer_listener)

    async def kill(self) -> None:
        """Cancel the server's task (as ``kill -9``); returns once it is gone. Nothing if stopped."""
        if self.scope is None:
            return
        self.scope.cancel()
        with trio.fail_after(KILL_TIMEOUT_S):
            await self.stopped.wait()

    async def stop(self) -> None:
        """In-process, stopping is killing: nothing is lost that a polite stop would save."""
        await self.kill()

    def isolate(self) -> None:
        """Cut the server off from its peers and clients (:meth:`FaultableServer.isolate`).

        Raises:
            RuntimeError: it is not running.
        """
        self.running().isolate()

    def heal(self) -> None:
        if self.server is not None:
            self.server.heal()


async def bind(host: str, port: int = 0) -> trio.SocketListener:
    """A TCP listener on ``host:port`` (port 0: any free port)."""
    return (await trio.open_tcp_listeners(port, host=host))[0]


def listener_address(listener: trio.SocketListener) -> Address:
    host, port = listener.socket.getsockname()[:2]
    return host, port


def server_config(
    server_id: int, base: Path, ensemble: EnsembleConfig, session_tick_ms: int, overrides: Mapping[str, Any]
) -> ServerConfig:
    """The configuration of one in-process server: fast timing, a small log map, ``overrides`` on top."""
    client = ensemble.servers[server_id].client
    config = ServerConfig(
        data_dir=base / f"server-{server_id}",
        log_map_bytes=256 << 20,
        listen_host=client[0],
        listen_port=client[1],
        server_id=server_id,
        tick_ms=session_tick_ms,
        min_session_timeout_ms=2 * session_tick_ms,
        max_session_timeout_ms=600 * session_tick_ms,
        ensemble=ensemble,
    )
    return replace(config, **overrides)


@contextlib.asynccontextmanager
async def open_in_process(
    size: int,
    base: Path,
    timing: dict[str, Any],
    session_tick_ms: int,
    base_port: int | None,
    overrides: Mapping[str, Any],
) -> AsyncIterator[tuple[trio.Nursery, dict[int, InProcessMember]]]:
    """Start ``size`` servers as tasks of a nursery; yield the nursery and the members.

    The caller wraps them in an :class:`~coord.testing.Ensemble`; leaving the block
    cancels every server.
    """
    ids = range(1, size + 1)
    client_listeners = {i: await bind(HOST, base_port + i - 1 if base_port else 0) for i in ids}
    peer_listeners = {i: await bind(HOST, base_port + 999 + i if base_port else 0) for i in ids}
    addresses = {
        server_id: EnsembleMember(
            peer=listener_address(peer_listeners[server_id]), client=listener_address(client_listeners[server_id])
        )
        for server_id in ids
    }
    ensemble_config = EnsembleConfig(servers=addresses, **timing)
    members = {
        server_id: InProcessMember(
            server_id, server_config(server_id, base, ensemble_config, session_tick_ms, overrides)
        )
        for server_id in ids
    }
    async with trio.open_nursery() as nursery:
        for server_id, member in members.items():
            await member.start(nursery, client_listeners[server_id], peer_listeners[server_id])
        try:
            yield nursery, members
        finally:
            nursery.cancel_scope.cancel()


__all__ = ["InProcessMember", "bind", "listener_address", "open_in_process", "server_config"]
