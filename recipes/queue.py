"""A distributed FIFO queue with priorities (kazoo's ``Queue``), safe with many
producers and many consumers.

::

    queue = Queue(zk, "/app/jobs")
    await queue.put(b"job 1")
    await queue.put(b"urgent", priority=10)     # lower numbers first
    item = await queue.get()                     # waits for an item
    item = await queue.get(block=False)          # None if the queue is empty

Theory
    Each item is a persistent sequential node
    ``{path}/entry-{priority:03d}-{guid}-{sequence}``. Items are taken in order of
    ``(priority, sequence)``: by priority, then in the order the ensemble created them.
    A consumer lists the children, reads the first item and deletes it; the delete
    decides who gets it. A consumer that loses the race (``NoNodeError``) moves on to
    the next item, so each item goes to exactly one consumer. A waiting consumer
    watches the children, so a ``put`` wakes every waiting consumer (one of them
    wins; a queue is not herd-free, as kazoo's is not).

Unknown outcomes
    ``put``: the guid in the name lets a put whose reply was lost look for its item
    instead of adding it twice (only if a consumer took the item in the moment
    before the put looked is it put again). ``get``: if the reply to the deciding delete is lost
    and the item is gone afterwards, either this consumer took it or another did;
    ``get`` returns it (at-least-once in that corner: another consumer may get it
    too). An item is delivered, never silently dropped, except when a consumer
    crashes between taking and using it: use a lock or a lease around processing for
    anything stronger.

Cancellation: ``get`` is safe while waiting; once an item's delete is sent, it is
finished (shielded, bounded by the session timeout) and the item returned, so a
taken item is not lost to a cancellation. ``put`` may or may not add its item if
cancelled after sending.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal, overload

import trio

import client
from recipes._common import CLEANUP_GRACE_S, call, join, new_guid, normalize, sequence_of

PREFIX = "entry-"


def _order(name: str) -> tuple[int, int]:
    return int(name[len(PREFIX) : len(PREFIX) + 3]), sequence_of(name)


class Queue:
    """A FIFO queue of byte strings at ``path`` (kazoo's ``Queue``)."""

    def __init__(self, client: client.Client, path: str) -> None:
        self.client = client
        self.path = normalize(path)
        self._ensured = False

    async def _ensure(self) -> None:
        if not self._ensured:
            await call(self.client.ensure_path, self.path)
            self._ensured = True

    def _items(self, children: list[str]) -> list[str]:
        return sorted((name for name in children if name.startswith(PREFIX)), key=_order)

    async def put(self, value: bytes, priority: int = 100) -> None:
        """Add an item.

        Args:
            value: the item.
            priority: 0 to 999, lower first (kazoo's default 100).

        Raises:
            ValueError: ``priority`` out of range.
        """
        if not 0 <= priority <= 999:
            raise ValueError("priority must be between 0 and 999")
        await self._ensure()
        zk = self.client
        guid = new_guid()
        prefix = join(self.path, f"{PREFIX}{priority:03d}-{guid}-")
        while True:
            try:
                await zk.create(prefix, value, sequence=True)
                return
            except client.RETRYABLE:
                children = await call(zk.get_children, self.path)
                if any(guid in name for name in children):
                    return  # it was created
                # Not there: not created - or created and already taken by a consumer,
                # in which case putting it again delivers it twice (the module doc).

    async def put_all(self, values: list[bytes], priority: int = 100) -> None:
        """Add several items, in order, each as :meth:`put` (not atomically)."""
        for value in values:
            await self.put(value, priority)

    @overload
    async def get(self, block: Literal[True] = ..., timeout: float | None = ...) -> bytes: ...

    @overload
    async def get(self, block: Literal[False], timeout: float | None = ...) -> bytes | None: ...

    async def get(self, block: bool = True, timeout: float | None = None) -> bytes | None:
        """Take the first item.

        Args:
            block: wait for an item (else return None at once when empty).
            timeout: with ``block``, seconds to wait at most, then None.

        Returns:
            The item (None only when not blocking, or after ``timeout``).
        """
        await self._ensure()
        zk = self.client
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                watch = client.Watch()
                try:
                    children = await zk.get_children(self.path, watch=watch)
                except client.RETRYABLE:
                    continue
                for name in self._items(children):
                    item = await self._take(join(self.path, name))
                    if item is not None:
                        return item
                if not block:
                    return None
                await watch.wait()
        return None

    async def _take(self, node: str) -> bytes | None:
        zk = self.client
        try:
            value, _stat = await call(zk.get, node)
        except client.NoNodeError:
            return None
        taken: bool | None = None
        with trio.move_on_after(zk.session_timeout + CLEANUP_GRACE_S, shield=True):
            try:
                await zk.delete(node)
                taken = True
            except client.NoNodeError:
                taken = False
            except client.RETRYABLE:
                # Unknown: if the item is gone, it was us or another consumer (see the
                # module doc: delivered rather than dropped).
                taken = await call(zk.exists, node) is None
        if taken is None:
            raise client.ConnectionLossError(f"queue {self.path}: could not take {node} in time")
        return value if taken else None

    async def length(self) -> int:
        """How many items are queued (kazoo's ``len(queue)``)."""
        await self._ensure()
        with contextlib.suppress(client.NoNodeError):
            return len(self._items(await call(self.client.get_children, self.path)))
        return 0


__all__ = ["Queue"]
