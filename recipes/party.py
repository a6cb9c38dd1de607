"""Group membership (kazoo's ``Party``): join, leave, list the members.

::

    party = Party(zk, "/app/workers", "worker-7")
    async with party:                       # join; leave at the end
        print(await party.members())        # every member's identifier

    async for names in ChildrenWatch(zk, "/app/workers"): ...   # follow changes

Theory
    A member is an ephemeral child ``{path}/{guid}__party__`` holding its identifier,
    so a member whose session ends leaves the party by itself. Membership is only as
    current as the last read: a member may join or leave (or be about to expire) the
    moment after :meth:`Party.members` returned. For "act only while a member", hold
    a :class:`~recipes.Lock` or a :class:`~recipes.Semaphore` instead, which guard
    their block; a party is for seeing who is around.

Where we differ from kazoo
    ``len(party)`` and iteration are :meth:`Party.count` and :meth:`Party.members`
    (they need the network, so they are awaited). A cancelled :meth:`Party.join`
    leaves no node behind.
"""

from __future__ import annotations

import contextlib
from types import TracebackType

import client
from recipes._common import as_bytes, as_text, call, cleanup, join, new_guid, normalize

NODE_MARKER = "__party__"


class Party:
    """A member-to-be of the party at ``path`` (kazoo's ``Party``)."""

    def __init__(self, client: client.Client, path: str, identifier: str | bytes = "") -> None:
        self.client = client
        self.path = normalize(path)
        self.identifier = identifier
        self.data = as_bytes(identifier)
        self.node = join(self.path, f"{new_guid()}{NODE_MARKER}")
        self.participating = False

    async def join(self) -> None:
        """Join the party (fine if already a member).

        Cancellation: safe; a cancelled join leaves no node.
        """
        zk = self.client
        joined = False
        try:
            while True:
                try:
                    await zk.create(self.node, self.data, ephemeral=True, makepath=True)
                    break
                except client.NodeExistsError:
                    break  # ours: the name is unique
                except client.RETRYABLE:
                    if await call(zk.exists, self.node) is not None:
                        break
            joined = True
        finally:
            if not joined:
                await cleanup(zk, self._delete)
        self.participating = True

    async def _delete(self) -> None:
        with contextlib.suppress(client.NoNodeError):
            await call(self.client.delete, self.node)

    async def leave(self) -> bool:
        """Leave the party. Returns False if this member was not in it."""
        if not self.participating:
            return False
        self.participating = False
        await cleanup(self.client, self._delete)
        return True

    async def members(self) -> list[str]:
        """The members' identifiers (in no particular order)."""
        try:
            names = await call(self.client.get_children, self.path)
        except client.NoNodeError:
            return []
        members = []
        for name in names:
            if NODE_MARKER not in name:
                continue
            with contextlib.suppress(client.NoNodeError):
                data, _stat = await call(self.client.get, join(self.path, name))
                members.append(as_text(data))
        return members

    async def count(self) -> int:
        """How many members there are (kazoo's ``len(party)``)."""
        try:
            return len([name for name in await call(self.client.get_children, self.path) if NODE_MARKER in name])
        except client.NoNodeError:
            return 0

    async def __aenter__(self) -> Party:
        await self.join()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.leave()


__all__ = ["Party"]
