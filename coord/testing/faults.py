"""The test ensemble's fault hooks: a server that can be cut off, and signals that do it.

The production server has no fault hooks. The test ensemble runs :class:`FaultableServer`,
a :class:`~coord.server.Server` that adds them using only what the server offers any
embedder (``open_server(..., server_type=FaultableServer)``):

- ``Server(..., peer_gate=gate)``: a :class:`~coord.transport.LinkGate` for its peer
  transport. Ours is an :class:`IsolationGate`, whose ``isolate`` / ``heal`` close
  every peer link and drop what is sent or received meanwhile;
- ``server.close_client_connections()``: drop every client connection (sessions live on);
- ``server.admits_clients()``: overridden here to refuse new client connections while
  the server is isolated;
- ``server.drive(step)``: give the core an input (here ``expire_session``) and carry out
  what it asks.

A server process of a process ensemble (``python -m coord.testing.serve``) runs the
same class and turns :data:`ISOLATE_SIGNAL` (SIGUSR1) into :meth:`FaultableServer.isolate`
and :data:`HEAL_SIGNAL` (SIGUSR2) into :meth:`FaultableServer.heal`
(:data:`SIGNAL_HANDLERS`).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio

from coord.config import ServerConfig
from coord.recovery import Recovered
from coord.server import Server
from coord.server.run import SignalHandler

log = logging.getLogger("coord")

ISOLATE_SIGNAL = signal.SIGUSR1
HEAL_SIGNAL = signal.SIGUSR2
EXPIRY_TIMEOUT_S = 30.0
"""How long :meth:`FaultableServer.expire_session` waits for the expiry to be applied here."""


class IsolationGate:
    """A :class:`~coord.transport.LinkGate` that :meth:`isolate` closes and :meth:`heal` opens.

    Given to a :class:`~coord.transport.PeerTransport` (``gate=``): while isolated,
    every peer link of that server is closed and stays closed, and everything sent or
    received is dropped. Starts open.
    """

    def __init__(self, server_id: int) -> None:
        self.server_id = server_id
        self._is_isolated = False
        self._healed = trio.Event()
        self._on_close: list[Callable[[], None]] = []

    @property
    def is_isolated(self) -> bool:
        return self._is_isolated

    @property
    def is_open(self) -> bool:
        return not self._is_isolated

    async def wait_open(self) -> None:
        while self._is_isolated:
            await self._healed.wait()

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def isolate(self) -> None:
        """Cut this server off: close every link; drop all sent and received until :meth:`heal`."""
        if self._is_isolated:
            return
        log.warning("server %d isolated from its peers (fault hook)", self.server_id)
        self._is_isolated = True
        self._healed = trio.Event()
        for callback in self._on_close:
            callback()

    def heal(self) -> None:
        """Undo :meth:`isolate`: the links are dialed and accepted again."""
        if not self._is_isolated:
            return
        log.warning("server %d healed (fault hook)", self.server_id)
        self._is_isolated = False
        self._healed.set()


class FaultableServer(Server):
    """A :class:`~coord.server.Server` with the test ensemble's fault hooks.

    Attributes:
        peer_gate: the gate of its peer transport (an ensemble member's; unused when
            standalone). ``peer_gate.isolate()`` cuts it off from its peers only,
            not from its clients.
    """

    def __init__(self, config: ServerConfig, recovered: Recovered) -> None:
        peer_gate = IsolationGate(config.server_id)
        super().__init__(config, recovered, peer_gate=peer_gate)
        self.peer_gate = peer_gate
        self._isolated = False

    @property
    def is_isolated(self) -> bool:
        """Cut off by :meth:`isolate`, until :meth:`heal`."""
        return self._isolated

    def admits_clients(self) -> bool:
        return not self._isolated

    def drop_connections(self) -> None:
        """Close every client connection now. Sessions live on."""
        self.close_client_connections()

    def isolate(self) -> None:
        """Cut this server off from its peers and its clients until :meth:`heal`.

        Its peer links close and stay closed, its client connections are dropped and new
        ones refused. It keeps running (a leader steps down when it cannot hear a quorum,
        as in a real partition).
        """
        self._isolated = True
        if self.transport is not None:
            self.peer_gate.isolate()
        self.close_client_connections()

    def heal(self) -> None:
        """Undo :meth:`isolate`: the peer links come back, clients are taken again."""
        self._isolated = False
        if self.transport is not None:
            self.peer_gate.heal()

    async def expire_session(self, session_id: int) -> bool:
        """Expire ``session_id`` now, as if it had timed out (leader only); returns once it is gone here.

        Returns:
            False if this server could not expire it (not the leader, or no such session).
        """
        expired = self.drive(lambda core, now_ms: core.expire_session(session_id, now_ms))
        if not expired:
            return False
        with trio.fail_after(EXPIRY_TIMEOUT_S):
            while session_id in self.tree.sessions:
                await trio.sleep(0.001)  # polling a condition, bounded by the deadline
        return True


def _isolate(server: Server) -> None:
    assert isinstance(server, FaultableServer)
    log.warning("fault hook: isolating this server")
    server.isolate()


def _heal(server: Server) -> None:
    assert isinstance(server, FaultableServer)
    log.warning("fault hook: healing this server")
    server.heal()


SIGNAL_HANDLERS: dict[int, SignalHandler] = {ISOLATE_SIGNAL: _isolate, HEAL_SIGNAL: _heal}
"""The signals a server process of a process ensemble takes, for :func:`coord.server.run.run_server`."""


__all__ = ["EXPIRY_TIMEOUT_S", "HEAL_SIGNAL", "ISOLATE_SIGNAL", "SIGNAL_HANDLERS", "FaultableServer", "IsolationGate"]
