"""Connection states, with kazoo's names, and the async iterator of their changes."""

from __future__ import annotations

import collections
import enum

import trio


class ConnectionState(enum.StrEnum):
    """Where the client's session stands (kazoo's ``KazooState`` names and values).

    ``CONNECTED``: requests flow. ``SUSPENDED``: the connection dropped and the client
    is reconnecting; the session (ephemerals, watches) may still be alive, new calls
    wait for the reconnect. ``LOST``: the session expired or the client was closed;
    every call raises ``SessionExpiredError``. ``LOST`` is final: open a new client.
    """

    CONNECTED = "CONNECTED"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"


class StateStream:
    """The states of a client, as an async iterator (``async for state in zk.states()``).

    Yields the state at the time it was made first, then every change, and ends
    after ``LOST``. Changes are queued, never dropped, so a slow consumer still sees
    ``SUSPENDED`` before ``CONNECTED``.
    """

    __slots__ = ("__weakref__", "_lot", "_queue")

    def __init__(self, current: ConnectionState) -> None:
        self._queue: collections.deque[ConnectionState | None] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._put(current)

    def __aiter__(self) -> StateStream:
        return self

    async def __anext__(self) -> ConnectionState:
        """The next state.

        Raises:
            StopAsyncIteration: after ``LOST`` was yielded.

        Cancellation: safe; no state change is lost.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._queue:
            await self._lot.park()
        state = self._queue.popleft()
        if state is None:  # the end marker put after LOST
            raise StopAsyncIteration
        await trio.lowlevel.cancel_shielded_checkpoint()
        return state

    def _put(self, state: ConnectionState) -> None:
        self._queue.append(state)
        if state is ConnectionState.LOST:
            self._queue.append(None)
        self._lot.unpark_all()


__all__ = ["ConnectionState", "StateStream"]
