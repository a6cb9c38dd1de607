"""An embedded ensemble for tests: real servers, in-process, on loopback ephemeral ports.

::

    async with open_ensemble(3) as ensemble:
        await ensemble.wait_for_leader()
        async with client.connect(ensemble.connect_string) as zk:
            ...
        await ensemble.kill(ensemble.leader_id())
        await ensemble.wait_for_leader()

Every server is the real one (:func:`coord.server.open_server`): real sockets on
127.0.0.1, real LMDB files in a temporary directory (removed afterwards unless
``data_dir`` is given), real ZAB between them. ``kill`` stops a server at once (its
task is cancelled: nothing more reaches its disk, as with ``kill -9``, since every
acknowledged write was already fsynced); ``restart`` brings it back on the same ports
with the same data directory; ``isolate`` cuts it off from its peers and clients.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from coord.config import EnsembleConfig, EnsembleMember, ServerConfig
from coord.server import Server, open_server

Address = tuple[str, int]


class _Member:
    def __init__(self, server_id: int, config: ServerConfig) -> None:
        self.server_id = server_id
        self.config = config
        self.server: Server | None = None
        self.scope: trio.CancelScope | None = None
        self.stopped = trio.Event()


class Ensemble:
    """A running embedded ensemble. Made by :func:`open_ensemble`."""

    def __init__(self, nursery: trio.Nursery, members: dict[int, _Member]) -> None:
        self._nursery = nursery
        self._members = members

    @property
    def connect_string(self) -> str:
        """``host:port,...`` of every server's client port (what ``client.connect`` takes)."""
        return ",".join(f"{m.config.listen_host}:{m.config.listen_port}" for m in self._members.values())

    @property
    def servers(self) -> dict[int, Server | None]:
        """Server id -> the running server (None while killed)."""
        return {server_id: member.server for server_id, member in self._members.items()}

    def server(self, server_id: int) -> Server:
        server = self._members[server_id].server
        if server is None:
            raise RuntimeError(f"server {server_id} is not running")
        return server

    def server_id_at(self, address: tuple[str, int]) -> int:
        """The id of the server whose client port is ``address`` (e.g. ``zk.server_address``)."""
        for server_id, member in self._members.items():
            if (member.config.listen_host, member.config.listen_port) == tuple(address):
                return server_id
        raise KeyError(f"no server listens on {address}")

    def leader_id(self) -> int | None:
        """The id of a running server that leads an established epoch, if any."""
        for server_id, member in self._members.items():
            if member.server is not None and member.server.role in ("leader", "standalone"):
                return server_id
        return None

    def leader(self) -> Server | None:
        server_id = self.leader_id()
        return None if server_id is None else self._members[server_id].server

    async def wait_for_leader(self, timeout: float = 30.0) -> int:
        """Wait until a leader is established and every running server serves; return its id."""
        with trio.fail_after(timeout):
            while True:
                running = [m.server for m in self._members.values() if m.server is not None]
                leader = self.leader_id()
                if leader is not None and all(server.is_serving for server in running if not server.is_isolated):
                    return leader
                await trio.sleep(0.01)  # polling a condition, bounded by fail_after

    async def kill(self, server_id: int) -> None:
        """Stop a server at once (as ``kill -9``): no goodbye to clients or peers."""
        member = self._members[server_id]
        if member.scope is None:
            return
        member.scope.cancel()
        with trio.fail_after(30):
            await member.stopped.wait()

    async def restart(self, server_id: int) -> Server:
        """Start a killed server again, on its ports and its data directory."""
        member = self._members[server_id]
        if member.server is not None:
            raise RuntimeError(f"server {server_id} is running")
        client_listener = (await trio.open_tcp_listeners(member.config.listen_port, host=member.config.listen_host))[0]
        ensemble = member.config.ensemble
        assert ensemble is not None
        host, port = ensemble.servers[server_id].peer
        peer_listener = (await trio.open_tcp_listeners(port, host=host))[0]
        return await self._start(member, client_listener, peer_listener)

    async def _start(
        self, member: _Member, client_listener: trio.SocketListener, peer_listener: trio.SocketListener
    ) -> Server:
        member.stopped = trio.Event()
        return await self._nursery.start(self._run, member, client_listener, peer_listener)

    async def _run(
        self,
        member: _Member,
        client_listener: trio.SocketListener,
        peer_listener: trio.SocketListener,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with trio.CancelScope() as scope:
                member.scope = scope
                async with open_server(
                    member.config, client_listener=client_listener, peer_listener=peer_listener
                ) as server:
                    member.server = server
                    task_status.started(server)
                    await trio.sleep_forever()
        finally:
            member.server = None
            member.scope = None
            member.stopped.set()

    def isolate(self, server_id: int) -> None:
        """Cut a server off from its peers and its clients until :meth:`heal`."""
        self.server(server_id).isolate()

    def heal(self) -> None:
        for member in self._members.values():
            if member.server is not None:
                member.server.heal()

    async def expire_session(self, session_id: int) -> None:
        """Expire a session now, through the leader, as if it had timed out."""
        leader = self.leader()
        if leader is None:
            raise RuntimeError("no leader")
        await leader.expire_session(session_id)


async def _bind(host: str, port: int = 0) -> trio.SocketListener:
    return (await trio.open_tcp_listeners(port, host=host))[0]


@contextlib.asynccontextmanager
async def open_ensemble(
    size: int = 3,
    *,
    data_dir: Path | None = None,
    tick_ms: int = 50,
    init_limit_ticks: int = 40,
    sync_limit_ticks: int = 6,
    session_tick_ms: int = 100,
    base_port: int | None = None,
    **overrides: Any,
) -> AsyncIterator[Ensemble]:
    """Start ``size`` real servers in this process and yield the :class:`Ensemble`.

    Args:
        size: the number of servers (1 gives a standalone server).
        data_dir: where their data directories go (default: a temporary directory,
            removed when the block ends).
        tick_ms, init_limit_ticks, sync_limit_ticks: ZAB timing (fast, for tests).
        session_tick_ms: the session tick; sessions may time out from 2 ticks up.
        base_port: fixed ports instead of ephemeral ones: clients on ``base_port``,
            ``base_port + 1``, ...; peers on ``base_port + 1000``, ... (``coord ensemble``).
        overrides: further :class:`~coord.config.ServerConfig` fields for every server.
    """
    temporary = data_dir is None
    base = Path(tempfile.mkdtemp(prefix="coord-ensemble-")) if data_dir is None else data_dir
    host = "127.0.0.1"
    try:
        ids = range(1, size + 1)
        client_listeners = {i: await _bind(host, base_port + i - 1 if base_port else 0) for i in ids}
        peer_listeners = {i: await _bind(host, base_port + 999 + i if base_port else 0) for i in ids}
        addresses: dict[int, EnsembleMember] = {
            server_id: EnsembleMember(
                peer=_address(peer_listeners[server_id]), client=_address(client_listeners[server_id])
            )
            for server_id in client_listeners
        }
        ensemble_config = EnsembleConfig(
            servers=addresses, tick_ms=tick_ms, init_limit_ticks=init_limit_ticks, sync_limit_ticks=sync_limit_ticks
        )
        members: dict[int, _Member] = {}
        for server_id, member in addresses.items():
            config = ServerConfig(
                data_dir=base / f"server-{server_id}",
                log_map_bytes=256 << 20,
                listen_host=member.client[0],
                listen_port=member.client[1],
                server_id=server_id,
                tick_ms=session_tick_ms,
                min_session_timeout_ms=2 * session_tick_ms,
                max_session_timeout_ms=600 * session_tick_ms,
                ensemble=ensemble_config,
                fault_hooks=True,
            )
            members[server_id] = _Member(server_id, replace(config, **overrides))
        async with trio.open_nursery() as nursery:
            ensemble = Ensemble(nursery, members)
            for server_id, member in members.items():
                await ensemble._start(member, client_listeners[server_id], peer_listeners[server_id])
            try:
                yield ensemble
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if temporary:
            shutil.rmtree(base, ignore_errors=True)


def _address(listener: trio.SocketListener) -> Address:
    host, port = listener.socket.getsockname()[:2]
    return host, port
