"""kazoo's ``DataWatch`` and ``ChildrenWatch``, as async iterators instead of callbacks.

::

    async for data, stat in DataWatch(zk, "/app/config"):   # now, then on every change
        if stat is None: ...                                  # the node does not exist
        apply(data)

    async for children in ChildrenWatch(zk, "/app/workers"):  # now, then on every change
        rebalance(children)

Theory
    Each step re-arms a one-shot watch with the read that returns the current state
    (``get`` / ``exists`` / ``get_children`` with ``watch=``), then waits for it to
    fire. So every change is *noticed*, but changes that happen while the consumer is
    busy are coalesced: the iterator yields the state as it is when read, never a
    stale intermediate one (kazoo behaves the same). No task runs in the background:
    the iterator only does work when asked for the next item, so it needs no nursery
    and stops costing anything when abandoned (its last watch fires into the void).

    Across a reconnect the client re-registers the armed watch and the server fires
    it if the node changed meanwhile, so nothing is missed. When the session is lost
    the iteration raises ``SessionExpiredError``.

Where we differ from kazoo
    - No callbacks, no ``allow_session_lost``: a lost session ends the iteration
      with ``SessionExpiredError``; open a new client and a new watch.
    - ``ChildrenWatch`` on a node that does not exist raises ``NoNodeError``; after
      the node is deleted the iteration ends (kazoo stops calling back then too).
    - ``DataWatch`` yields ``(None, None)`` while the node does not exist, and keeps
      watching for it to be created.

Cancellation: safe. A cancelled ``__anext__`` loses nothing; the next one reads the
current state again.
"""

from __future__ import annotations

import trio

import client
from client import EventType, Watch, WatchEvent
from recipes._common import RETRY_PAUSE_S, normalize


class DataWatch:
    """The value of one node, now and after every change: ``async for data, stat in DataWatch(zk, path)``.

    Yields:
        ``(data, stat)``, or ``(None, None)`` while the node does not exist.
    """

    def __init__(self, client: client.Client, path: str) -> None:
        self.client = client
        self.path = normalize(path)
        self.event: WatchEvent | None = None
        """The event that triggered the latest read (None for the first)."""
        self._watch: Watch | None = None

    def __aiter__(self) -> DataWatch:
        return self

    async def __anext__(self) -> tuple[bytes, client.ZnodeStat] | tuple[None, None]:
        if self._watch is not None:
            self.event = await self._watch.wait()
            self._watch = None
        zk = self.client
        while True:
            watch = client.Watch()
            try:
                try:
                    data, stat = await zk.get(self.path, watch=watch)
                except client.NoNodeError:
                    if await zk.exists(self.path, watch=watch) is not None:
                        continue  # created in between: read it (this watch is armed, drop it)
                    self._watch = watch
                    return None, None
            except client.RETRYABLE:
                await trio.sleep(RETRY_PAUSE_S)
                continue
            self._watch = watch
            return data, stat


class ChildrenWatch:
    """The children of one node, now and after every change: ``async for names in ChildrenWatch(zk, path)``.

    Yields:
        The sorted child names.

    Raises:
        NoNodeError: (first step) the node does not exist. Once it is deleted, the
            iteration ends.
    """

    def __init__(self, client: client.Client, path: str) -> None:
        self.client = client
        self.path = normalize(path)
        self.event: WatchEvent | None = None
        self._watch: Watch | None = None
        self._started = False

    def __aiter__(self) -> ChildrenWatch:
        return self

    async def __anext__(self) -> list[str]:
        if self._watch is not None:
            self.event = await self._watch.wait()
            self._watch = None
            if self.event.type is EventType.NODE_DELETED:
                raise StopAsyncIteration
        while True:
            watch = client.Watch()
            try:
                children = await self.client.get_children(self.path, watch=watch)
            except client.NoNodeError:
                if self._started:
                    raise StopAsyncIteration from None
                raise
            except client.RETRYABLE:
                await trio.sleep(RETRY_PAUSE_S)
                continue
            self._started = True
            self._watch = watch
            return children


__all__ = ["ChildrenWatch", "DataWatch"]
