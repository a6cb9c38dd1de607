"""Watches as the client's user sees them: awaited, never called back.

A :class:`Watch` is one-shot, as in ZooKeeper: pass it to ``get``, ``exists`` or
``get_children`` and ``await watch.wait()`` for the one event that fires it. A
:class:`WatchStream` carries the events of a persistent (or persistent-recursive)
watch made with ``Client.add_watch``, as an async iterator.

Both are filled by the session core (:mod:`client._session`) from the reader task
without blocking it: a Watch sets a :class:`trio.Event`, a stream appends to an
unbounded deque (a slow consumer of a persistent watch must never stall replies to
everyone else; if it cannot keep up, its memory grows, which is the lesser evil and
what ZooKeeper's event thread does too).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import trio

from coord.errors import CoordError
from coord.protocol import EventType


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change a watch fired for: ``type`` happened to ``path``.

    ``zxid`` is the zxid the server sent the event with (the change's zxid for live
    events, the server's current zxid for events replayed after a reconnect). It is
    informative only and left out of equality, so
    ``event == WatchEvent(EventType.NODE_DELETED, "/x")`` reads naturally in tests.
    """

    type: EventType
    path: str
    zxid: int = field(default=0, compare=False)


def _fresh(error: CoordError) -> CoordError:
    """A new instance of ``error`` so raising it in several tasks keeps tracebacks apart."""
    return type(error)(*error.args)


class Watch:
    """A one-shot watch: fires once, for the first change it was armed for.

    Create one, pass it as ``watch=`` to :meth:`Client.get`, :meth:`Client.exists` or
    :meth:`Client.get_children`, then ``await watch.wait()``. A Watch is armed by the
    first successful call it is passed to (a ``get`` or ``get_children`` that raises
    ``NoNodeError`` arms nothing, as in ZooKeeper); passing it to more calls arms it
    for those too, and whichever fires first wins.

    Across a reconnect (even to another server) an armed watch keeps waiting: the
    client re-registers it, and the server fires it at once if the change happened
    while the client was disconnected. If the session is lost, :meth:`wait` raises
    :class:`~coord.errors.SessionExpiredError`.
    """

    __slots__ = ("_done", "_error", "_event")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._event: WatchEvent | None = None
        self._error: CoordError | None = None

    @property
    def is_fired(self) -> bool:
        """Whether the watch has fired (or failed): :meth:`wait` would not block."""
        return self._done.is_set()

    async def wait(self) -> WatchEvent:
        """Wait for the event that fires this watch.

        Returns:
            The event; the same one on every later call.

        Raises:
            SessionExpiredError: the session was lost (or the client closed, as
                ``ConnectionClosedError``) before the watch fired.

        Cancellation: safe; the watch stays armed and can be waited for again.
        """
        await self._done.wait()
        if self._error is not None:
            raise _fresh(self._error)
        assert self._event is not None
        return self._event

    def __repr__(self) -> str:
        if self._error is not None:
            return f"<Watch failed: {self._error!r}>"
        return f"<Watch fired: {self._event!r}>" if self._event is not None else "<Watch armed>"

    # called by the session core ------------------------------------------------------

    def _fire(self, event: WatchEvent) -> None:
        if not self._done.is_set():
            self._event = event
            self._done.set()

    def _fail(self, error: CoordError) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()


class WatchStream:
    """The events of one persistent watch, as an async iterator.

    Made by ``async with zk.add_watch(path) as events``; iterate it with
    ``async for event in events``. Events arrive in zxid order, and none are lost
    while the session lives (across reconnects the watch is re-registered; note that,
    as in ZooKeeper, changes made while disconnected are not replayed to persistent
    watches, so re-read the state after a ``SUSPENDED`` -> ``CONNECTED`` transition if
    you need it).

    The iteration ends after a ``PERSISTENT_WATCH_REMOVED`` event (the watch was
    removed with ``remove_watches``) and when the ``add_watch`` block is left; it
    raises ``SessionExpiredError`` if the session is lost.
    """

    __slots__ = ("_ended", "_error", "_events", "_lot", "path", "recursive")

    def __init__(self, path: str, *, recursive: bool) -> None:
        self.path = path
        """The watched path."""
        self.recursive = recursive
        """Whether the watch covers the whole subtree under ``path``."""
        self._events: collections.deque[WatchEvent] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._ended = False
        self._error: CoordError | None = None

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchEvent:
        """The next event.

        Raises:
            StopAsyncIteration: the watch was removed or its block was left.
            SessionExpiredError: the session was lost.

        Cancellation: safe; no event is lost.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._events:
            if self._error is not None:
                raise _fresh(self._error)
            if self._ended:
                raise StopAsyncIteration
            await self._lot.park()
        event = self._events.popleft()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return event

    @property
    def is_ended(self) -> bool:
        """Whether the watch is over (removed, its block left, or the session lost);
        events already queued can still be read."""
        return self._ended or self._error is not None

    def receive_nowait(self) -> WatchEvent:
        """The next event if one is already here.

        Raises:
            trio.WouldBlock: no event yet.
            StopAsyncIteration, SessionExpiredError: as :meth:`__anext__`.
        """
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise _fresh(self._error)
        if self._ended:
            raise StopAsyncIteration
        raise trio.WouldBlock

    def __repr__(self) -> str:
        kind = "recursive" if self.recursive else "persistent"
        return f"<WatchStream {kind} {self.path!r}, {len(self._events)} queued>"

    # called by the session core ------------------------------------------------------

    def _put(self, event: WatchEvent) -> None:
        if not self._ended and self._error is None:
            self._events.append(event)
            self._lot.unpark_all()

    def _end(self) -> None:
        self._ended = True
        self._lot.unpark_all()

    def _fail(self, error: CoordError) -> None:
        if not self._ended and self._error is None:
            self._error = error
            self._lot.unpark_all()


__all__ = ["Watch", "WatchEvent", "WatchStream"]
