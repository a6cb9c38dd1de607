"""The test ensemble's fault hooks: a server that can be cut off, and signals that do it.

The production server has no fault hooks. The test ensemble runs :class:`FaultableServer`,
a :class:`~coord.server.Server` that adds them using only what the server offers any
embedder (``open_server(..., server_type=FaultableServer)``):

- ``server.transport`` (:class:`~coord.transport.PeerTransport`): its own ``isolate`` /
  ``heal`` close every peer link and drop what is sent or received meanwhile;
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


class FaultableServer(Server):
    """A :class:`~coord.server.Server` with the test ensemble's fault hooks."""

    def __init__(self, config: ServerConfig, recovered: Recovered) -> None:
        super().__init__(config, recovered)
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
            self.transport.isolate()
        self.close_client_connections()

    def heal(self) -> None:
        """Undo :meth:`isolate`: the peer links come back, clients are taken again."""
        self._isolated = False
        if self.transport is not None:
            self.transport.heal()

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


__all__ = ["EXPIRY_TIMEOUT_S", "HEAL_SIGNAL", "ISOLATE_SIGNAL", "SIGNAL_HANDLERS", "FaultableServer"]
