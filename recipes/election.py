"""Leader election: campaign, lead inside a guarded block, resign; see who leads.

::

    election = LeaderElection(zk, "/elections/indexer", "host-1")
    async with election.campaign():          # waits until elected
        await index_forever(fencing_token=election.token)
    # leaving the block (or election.resign()) steps down; losing the session cancels
    # the block and raises LeadershipLostError out of it

    async for leader in election.observe():  # everyone: who leads, on every change
        print("leader is", leader)

Theory
    An election is a fair :class:`~recipes.Lock` (as kazoo's ``Election``): the
    candidates queue as ephemeral sequential nodes under ``path``, the first one
    leads, each other candidate watches only the one before it. So candidates are
    elected in the order they started campaigning, a leader's resignation or death
    hands over to exactly the next candidate, and at most one candidate believes it
    leads at a time *as long as* each one stops when its guard says so.

    The leader's block runs under the same guard as a lock (:mod:`recipes._guard`):
    it is cancelled when the session is lost, or once no write was confirmed for 3/4
    of the session timeout, or when the leader's node is found deleted; then
    :class:`~recipes.LeadershipLostError` leaves the block. The node's ``czxid``
    (:attr:`LeaderElection.token`) increases with every new term: pass it to
    whatever the leader writes to, so that a deposed leader's late writes are
    rejected.

Where we differ from kazoo
    - kazoo's ``Election.run(func)`` is here too, but leadership is normally held
      with ``async with election.campaign()``; ``cancel()`` is ``resign()``.
    - :meth:`LeaderElection.observe` (watch the leadership change) and
      :meth:`LeaderElection.leader` are new (etcd's names).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ParamSpec, TypeVar

import trio

import client
from recipes._common import LeadershipLostError, ResignedError, as_text, call, join, normalize
from recipes._guard import Guard, guarded
from recipes.lock import Lock
from recipes.watchers import ChildrenWatch

P = ParamSpec("P")
T = TypeVar("T")


class _ElectionLock(Lock):
    _lost_error = LeadershipLostError


class LeaderElection:
    """One candidate in the election at ``path`` (kazoo's ``Election``).

    Args:
        client: the session the candidacy (and leadership) belongs to.
        path: the election's node; candidates are its children.
        identifier: how this candidate shows in :meth:`leader` and :meth:`contenders`.
    """

    def __init__(self, client: client.Client, path: str, identifier: str | bytes = "") -> None:
        self.client = client
        self.path = normalize(path)
        self.identifier = identifier
        self._lock = _ElectionLock(client, self.path, identifier)
        self._guard: Guard | None = None
        self._campaign_scope: trio.CancelScope | None = None
        self._resigned = False

    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads now (inside its campaign block, not lost)."""
        return self._guard is not None and self._guard.lost is None and not self._guard.stopped

    @property
    def token(self) -> int | None:
        """The fencing token of the current term (its node's czxid), while leading."""
        return self._lock.token if self.is_leader else None

    @property
    def node(self) -> str | None:
        """This candidate's node while it campaigns or leads."""
        return self._lock.node

    @contextlib.asynccontextmanager
    async def campaign(self) -> AsyncIterator[LeaderElection]:
        """Run for leader; the block is the term of office.

        Waits until elected, then runs the block under the guard (see the module doc);
        leaving the block steps down.

        Raises:
            LeadershipLostError: leadership was lost while the block ran (the block
                was cancelled first).
            ResignedError: :meth:`resign` was called before this candidate was elected.
            RuntimeError: this object already campaigns.
            SessionExpiredError: the session is lost before the election.

        Cancellation: safe while waiting (the candidacy is withdrawn, its node deleted).
        """
        if self._campaign_scope is not None or self._guard is not None:
            raise RuntimeError(f"already campaigning in {self.path}")
        self._resigned = False
        with trio.CancelScope() as scope:
            self._campaign_scope = scope
            try:
                await self._lock.acquire()
            finally:
                self._campaign_scope = None
        if scope.cancelled_caught:
            raise ResignedError(f"resigned from the election in {self.path} before being elected")
        try:
            async with guarded(
                self.client, self._lock.node, what=f"leadership of {self.path}", error=LeadershipLostError
            ) as guard:
                self._guard = guard
                if self._resigned:
                    guard.stop()
                yield self
        except BaseException:
            self._guard = None
            with contextlib.suppress(LeadershipLostError):
                await self._lock.release()
            raise
        self._guard = None
        await self._lock.release()

    def resign(self) -> None:
        """Step down (or withdraw the candidacy).

        While leading, the campaign block is cancelled and left without an error. While
        still waiting to be elected, ``campaign()`` raises :class:`ResignedError`
        (``run()`` returns None). Safe to call from any task, at any time.
        """
        self._resigned = True
        if self._guard is not None:
            self._guard.stop()
        elif self._campaign_scope is not None:
            self._campaign_scope.cancel()

    async def run(self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """kazoo's ``Election.run``: campaign, call ``func`` as leader, step down.

        Returns:
            What ``func`` returned, or None if it was resigned (:meth:`resign`).

        Raises:
            LeadershipLostError: leadership was lost while ``func`` ran.
        """
        try:
            async with self.campaign():
                return await func(*args, **kwargs)
        except ResignedError:
            return None
        return None  # resigned while leading: the block was cancelled

    async def contenders(self) -> list[str]:
        """The candidates' identifiers, the leader first (kazoo's)."""
        return await self._lock.contenders()

    async def leader(self) -> str | None:
        """The current leader's identifier, or None if nobody campaigns."""
        return (await _leader_of(self.client, self.path))[1]

    def observe(self) -> AsyncIterator[str | None]:
        """The leader's identifier now and after every change of leader (None: no
        candidate). ``async for leader in election.observe():``; ends if the
        election's node is deleted."""
        return _LeaderObserver(self.client, self.path)


async def _leader_of(zk: client.Client, path: str, names: list[str] | None = None) -> tuple[str | None, str | None]:
    """``(node name, identifier)`` of the first candidate, or ``(None, None)``."""
    if names is None:
        try:
            names = await call(zk.get_children, path)
        except client.NoNodeError:
            return None, None
    for name in Lock._sorted(names):
        try:
            data, _stat = await call(zk.get, join(path, name))
        except client.NoNodeError:
            continue  # gone meanwhile: the next one leads
        return name, as_text(data)
    return None, None


class _LeaderObserver:
    def __init__(self, zk: client.Client, path: str) -> None:
        self._client = zk
        self._path = path
        self._children: ChildrenWatch | None = None
        self._shown: str | None = ""  # the node last reported ("" before the first)

    def __aiter__(self) -> _LeaderObserver:
        return self

    async def __anext__(self) -> str | None:
        if self._children is None:
            await call(self._client.ensure_path, self._path)
            self._children = ChildrenWatch(self._client, self._path)
        while True:
            names = await self._children.__anext__()
            node, identifier = await _leader_of(self._client, self._path, names)
            if node != self._shown:
                self._shown = node
                return identifier


__all__ = ["LeaderElection"]
