"""Barriers: :class:`Barrier` (wait until it is lifted) and :class:`DoubleBarrier`
(enter together, leave together), as kazoo's ``kazoo.recipe.barrier``.

Barrier
    The barrier is a node: :meth:`Barrier.create` puts it up, :meth:`Barrier.remove`
    lifts it, :meth:`Barrier.wait` returns once it is gone (an exists-watch, so every
    waiter wakes on the removal: a barrier is meant to release everyone at once).

DoubleBarrier (ZooKeeper's double-barrier recipe)
    ``num_clients`` participants each create an ephemeral child ``{path}/{identifier}``
    on :meth:`DoubleBarrier.enter`. Each sets an exists-watch on ``{path}/ready`` and
    then counts the participants; the one that sees ``num_clients`` creates ``ready``,
    which wakes everyone (the watch is set *before* counting, so no one can miss it).
    On :meth:`DoubleBarrier.leave` each participant deletes its node; the lowest
    waits for the highest to go and the others wait for the lowest, so leaving costs
    O(1) wake-ups per departure, and the last one out removes ``ready`` so the path can
    be used for another round. A participant whose session dies leaves implicitly.

    Guarantees: nobody returns from ``enter`` before ``num_clients`` participants have
    entered, and nobody returns from ``leave`` before every participant has left.
    Use a path for one round at a time: a participant of the next round entering
    while the last one of this round is still leaving may be let in early.

Where we differ from kazoo
    - The default identifier is a random guid (kazoo's is host-pid, which two
      participants in one process would share).
    - Participants are counted without the ``ready`` node, and ``ready`` is deleted
      by the last participant to leave rather than by the first.
    - ``async with DoubleBarrier(...)`` enters and leaves.
    - A cancelled ``enter`` deletes its node (shielded, bounded by the session timeout).
"""

from __future__ import annotations

import contextlib
import math
from types import TracebackType

import trio

import client
from recipes._common import as_bytes, call, cleanup, join, new_guid, normalize


class Barrier:
    """A node that blocks :meth:`wait` while it exists (kazoo's ``Barrier``)."""

    def __init__(self, client: client.Client, path: str) -> None:
        self.client = client
        self.path = normalize(path)

    async def create(self) -> None:
        """Put the barrier up (fine if it is up)."""
        await call(self.client.ensure_path, self.path)

    async def remove(self) -> bool:
        """Lift the barrier. Returns False if it was not up."""
        try:
            await call(self.client.delete, self.path)
        except client.NoNodeError:
            return False
        return True

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the barrier is lifted.

        Args:
            timeout: seconds to wait at most (None: no limit).

        Returns:
            True once it is not up; False if ``timeout`` passed first.
        """
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                watch = client.Watch()
                try:
                    if await self.client.exists(self.path, watch=watch) is None:
                        return True
                except client.RETRYABLE:
                    continue
                await watch.wait()
        return False


class DoubleBarrier:
    """Enter together, leave together (kazoo's ``DoubleBarrier``; see the module doc).

    Args:
        client: the session the participation belongs to.
        path: the barrier's node.
        num_clients: how many participants it waits for.
        identifier: this participant's node name under ``path`` (unique per
            participant; default: a random guid).
        data: stored in the participant's node.
    """

    READY = "ready"

    def __init__(
        self,
        client: client.Client,
        path: str,
        num_clients: int,
        identifier: str | None = None,
        data: str | bytes = b"",
    ) -> None:
        if num_clients < 1:
            raise ValueError("num_clients must be at least 1")
        self.client = client
        self.path = normalize(path)
        self.num_clients = num_clients
        self.identifier = identifier or new_guid()
        if "/" in self.identifier or self.identifier == self.READY:
            raise ValueError(f"bad identifier {self.identifier!r}")
        self.data = as_bytes(data)
        self.node = join(self.path, self.identifier)
        self.participating = False
        self._ready = join(self.path, self.READY)

    async def enter(self) -> None:
        """Join, and wait until ``num_clients`` participants have joined.

        Raises:
            ValueError: another session uses this identifier.

        Cancellation: safe; a cancelled enter deletes this participant's node.
        """
        zk = self.client
        entered = False
        try:
            await call(zk.ensure_path, self.path)
            await self._create_node()
            while True:
                watch = client.Watch()
                try:
                    if await zk.exists(self._ready, watch=watch) is not None:
                        break
                    children = await call(zk.get_children, self.path)
                except client.RETRYABLE:
                    continue
                if len([name for name in children if name != self.READY]) >= self.num_clients:
                    with contextlib.suppress(client.NodeExistsError):
                        await call(zk.create, self._ready)
                    break
                await watch.wait()
            entered = True
        finally:
            if not entered:
                await cleanup(zk, self._delete_node)
        self.participating = True

    async def _create_node(self) -> None:
        zk = self.client
        while True:
            try:
                await zk.create(self.node, self.data, ephemeral=True)
                return
            except (client.NodeExistsError, *client.RETRYABLE):
                stat = await call(zk.exists, self.node)
                if stat is None:
                    continue
                if stat.ephemeral_owner != zk.session_id:
                    raise ValueError(f"{self.node} is another participant's (identifiers must be unique)") from None
                return

    async def _delete_node(self) -> None:
        with contextlib.suppress(client.NoNodeError):
            await call(self.client.delete, self.node)

    async def leave(self) -> None:
        """Leave, and wait until every participant has left.

        Cancellation: a cancelled leave may leave this participant's node behind
        (the others then wait for it, or for the session to end).
        """
        zk = self.client
        self.participating = False
        while True:
            try:
                children = sorted(name for name in await call(zk.get_children, self.path) if name != self.READY)
            except client.NoNodeError:
                return
            if not children:
                return
            own = self.identifier
            if children == [own]:
                with contextlib.suppress(client.NoNodeError):
                    await call(zk.delete, self._ready)
                await self._delete_node()
                return
            if own == children[0]:
                target = children[-1]  # the lowest waits for the highest
            else:
                if own in children:
                    await self._delete_node()
                target = children[0]  # the others wait for the lowest
            watch = client.Watch()
            try:
                if await zk.exists(join(self.path, target), watch=watch) is None:
                    continue
            except client.RETRYABLE:
                continue
            await watch.wait()

    async def __aenter__(self) -> DoubleBarrier:
        await self.enter()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.leave()
        else:
            # The block failed: leave without waiting for the others (they must not
            # wait for us either).
            await cleanup(self.client, self._delete_node)
            self.participating = False


__all__ = ["Barrier", "DoubleBarrier"]
