"""Locks: the fair exclusive :class:`Lock`, :class:`ReadLock` / :class:`WriteLock`, and
:class:`Semaphore`, as in kazoo's ``kazoo.recipe.lock``, made async.

::

    lock = Lock(zk, "/locks/report", "worker-7")
    async with lock:                                  # waits its turn
        await write_report(fencing_token=lock.token)  # cancelled if the lock is lost,
                                                      # then LockLostError leaves the block

The algorithm (ZooKeeper's lock recipe)
    Each contender creates an ephemeral sequential node
    ``{path}/{guid}__lock__{sequence}``. Contenders are ordered by the sequence
    suffix; the first one holds the lock. Every other contender sets an exists-watch
    on the node just before its own and waits for it to go, then looks again. So a
    release wakes exactly one waiter (no herd), and the lock is granted in the order
    the nodes were created (fair, FIFO). A holder that dies takes its node with its
    session, which passes the lock on.

Unknown outcomes and cancellation
    The ``guid`` (fresh per :class:`Lock` object, as kazoo's) makes the node findable:
    if the reply to the create is lost in a connection drop, the lock lists the
    children and takes the node with its guid instead of creating a second one. A
    cancelled or timed-out acquire deletes its node before it returns (shielded,
    bounded by the session timeout: if the client cannot reconnect in that time the
    session, and the node with it, is gone). The deletion lists the children first
    when the create's outcome was not known, and a request sent on one connection is
    applied before a later one of the same session, so a create cancelled in flight
    is seen and deleted. (One corner is left: a create forwarded by a follower to the
    leader just before the connection dropped can commit after the cleanup looked.
    Such a node lives until the session ends, unless the same ``Lock`` object is used
    again: after any attempt whose outcome was unknown, its next ``acquire`` adopts
    the node and its next ``release`` sweeps for it.)

Loss of the session
    ``async with lock`` runs its block in a cancel scope that is cancelled when the
    session is lost or might be lost before the ensemble is heard from again, and then
    raises :class:`~recipes.LockLostError` out of the block; see
    :mod:`recipes._guard` for the rule and its timing (in short: the block ends once
    no write was confirmed for 3/4 of the session timeout, or at once on ``LOST`` or
    when the node is found deleted). With bare :meth:`Lock.acquire` /
    :meth:`Lock.release` nothing watches the session between the two (there is no
    task that could): :meth:`Lock.release` then raises ``LockLostError`` if the node
    was gone, so a loss is at least reported at the end.

Fencing token
    :attr:`Lock.token` is the lock node's ``czxid``: every later holder of this lock
    has a larger one, even if the lock's parent node was deleted and re-created (the
    sequence number restarts then; zxids never do). Hand it to the protected resource,
    which rejects requests carrying a token smaller than the largest it has seen.

Where we differ from kazoo
    - ``acquire`` of a Lock that is already acquired (or being acquired) raises
      ``RuntimeError`` rather than blocking on a thread lock.
    - ``release`` raises ``LockLostError`` if the node was gone, instead of returning.
    - ``async with lock`` yields the lock and guards the block (see above).
    - ``cancel()`` is trio's: cancel the task or scope that waits in ``acquire``.
    - :class:`Semaphore` takes the same shape, with its own lease nodes
      ``{path}/leases/{guid}__lease__`` (kazoo names them by bare guid).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from types import TracebackType
from typing import ClassVar

import trio

import client
from recipes._common import (
    RETRY,
    LockLostError,
    LockTimeoutError,
    as_bytes,
    as_text,
    call,
    cleanup,
    join,
    new_guid,
    normalize,
    sequence_of,
)
from recipes._guard import Guard, guarded, lease_of

LOCK_MARKER = "__lock__"
READ_LOCK_MARKER = "__rlock__"


class Lock:
    """A fair, herd-free, exclusive lock (kazoo's ``Lock``); also the write lock of a
    read/write pair (see :class:`WriteLock`).

    Args:
        client: the session the lock is held by.
        path: the lock's node; contenders are its children (created as needed).
        identifier: stored in this contender's node, listed by :meth:`contenders`.

    Attributes:
        node: the full path of this contender's node while it contends or holds.
        token: the fencing token (the node's ``czxid``): set once the node exists, to be
            handed out while the lock is held.
        sequence: the node's sequence number while it contends or holds.
        wakeups: how many times this contender was woken by its predecessor's watch
            (instrumentation: a release wakes one waiter).
    """

    _marker: ClassVar[str] = LOCK_MARKER
    _blocked_by: ClassVar[tuple[str, ...]] = (LOCK_MARKER, READ_LOCK_MARKER)
    _lost_error: ClassVar[type[LockLostError]] = LockLostError

    def __init__(self, client: client.Client, path: str, identifier: str | bytes = "") -> None:
        self.client = client
        self.path = normalize(path)
        self.identifier = identifier
        self.data = as_bytes(identifier)
        self.node: str | None = None
        self.token: int | None = None
        self.sequence: int | None = None
        self.wakeups = 0
        self.is_acquired = False
        self._guid = new_guid()
        self._prefix = f"{self._guid}{self._marker}"
        self._busy = False
        self._uncertain = False  # a create may have happened that we do not know of
        self._sweep = False  # an earlier attempt's create may still land: look for our guid again
        self._hold: contextlib.AbstractAsyncContextManager[Lock] | None = None
        self._guard: Guard | None = None

    @property
    def what(self) -> str:
        return f"{type(self).__name__.lower()} {self.path}"

    # --- acquire and release ------------------------------------------------------------

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock, waiting for it by default.

        Args:
            blocking: wait for the lock; if False, return False at once when it is held.
            timeout: seconds to wait at most (None: no limit).

        Returns:
            True once held; False if ``blocking`` is False and the lock is held.

        Raises:
            LockTimeoutError: not acquired within ``timeout``.
            RuntimeError: this Lock is already acquired or being acquired.
            SessionExpiredError: the session is lost.

        Cancellation: safe; a cancelled acquire (or one that times out or fails)
        returns only after its node is deleted (see the module doc).
        """
        if self._busy or self.is_acquired:
            raise RuntimeError(f"{self.what} is already acquired or being acquired by this Lock object")
        self._busy = True
        acquired = False
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                acquired = await self._acquire(blocking)
                return acquired
            raise LockTimeoutError(f"{self.what} not acquired within {timeout:g}s")
        finally:
            self._busy = False
            if not acquired:
                await cleanup(self.client, self._delete_own_nodes)
                self._forget()
            else:
                self.is_acquired = True

    async def _acquire(self, blocking: bool) -> bool:
        zk = self.client
        if self._uncertain or self._sweep:  # a node from an earlier attempt may exist: it is ours
            self._uncertain = True
            await self._delete_own_nodes(keep_first=True)
        while True:
            if self.node is None:
                await self._create()
            assert self.node is not None
            own = self.node.rsplit("/", 1)[1]
            try:
                children = self._sorted(await call(zk.get_children, self.path))
            except client.NoNodeError:
                children = []
            if own not in children:
                # Our node is gone (deleted by someone else): queue again, at the back.
                self._forget()
                continue
            predecessor = self._predecessor(children, own)
            if predecessor is None:
                return True
            if not blocking:
                return False
            watch = client.Watch()
            try:
                if await zk.exists(join(self.path, predecessor), watch=watch) is None:
                    continue
            except client.RETRYABLE:
                continue  # a retry could not reuse a watch that may have fired: look again
            await watch.wait()
            self.wakeups += 1

    async def _create(self) -> None:
        zk = self.client
        prefix = join(self.path, self._prefix)
        while True:
            sent_at = trio.current_time()
            self._uncertain = True
            try:
                node, stat = await zk.create(
                    prefix, self.data, ephemeral=True, sequence=True, makepath=True, include_data=True
                )
            except client.RETRYABLE:
                # The create may or may not have happened: look for our guid.
                found = await self._find_own()
                if found is None:
                    await trio.sleep(RETRY.sleep_for(1))
                    continue
                node, stat = found
            else:
                lease_of(zk).confirm(sent_at)
            self._uncertain = False
            self.node, self.token, self.sequence = node, stat.czxid, sequence_of(node)
            return

    async def _find_own(self) -> tuple[str, client.ZnodeStat] | None:
        try:
            children = await call(self.client.get_children, self.path)
        except client.NoNodeError:
            return None
        for name in self._sorted(children):
            if name.startswith(self._prefix):
                node = join(self.path, name)
                stat = await call(self.client.exists, node)
                if stat is not None:
                    return node, stat
        return None

    async def _delete_own_nodes(self, keep_first: bool = False) -> None:
        """Delete this Lock's nodes: the known one, or every child with our guid if a
        create's outcome is unknown (``keep_first``: adopt the first as ours)."""
        zk = self.client
        if not self._uncertain and not self._sweep:
            if self.node is not None:
                with contextlib.suppress(client.NoNodeError):
                    await call(zk.delete, self.node)
            return
        try:
            names = [
                name for name in self._sorted(await call(zk.get_children, self.path)) if name.startswith(self._prefix)
            ]
        except client.NoNodeError:
            names = []
        if keep_first and names:
            node = join(self.path, names.pop(0))
            stat = await call(zk.exists, node)
            if stat is not None:
                self.node, self.token, self.sequence = node, stat.czxid, sequence_of(node)
        for name in names:
            with contextlib.suppress(client.NoNodeError):
                await call(zk.delete, join(self.path, name))
        # A create whose outcome was unknown might still commit after this look.
        self._sweep = self._uncertain and not keep_first
        self._uncertain = False

    def _forget(self) -> None:
        self.node = self.token = self.sequence = None

    async def release(self) -> bool:
        """Release the lock (delete this contender's node).

        Returns:
            True if it was held and is released; False if it was not held.

        Raises:
            LockLostError: the node was already gone (the session expired, or someone
                deleted it): the lock was not held until now.

        Cancellation: the deletion is shielded (bounded by the session timeout).
        """
        if not self.is_acquired:
            await trio.lowlevel.checkpoint()
            return False
        self.is_acquired = False
        if self._guard is not None:
            self._guard.disarm()  # released inside its own block: the block runs on
        node = self.node
        assert node is not None
        gone: str | None = None

        async def delete() -> None:
            nonlocal gone
            try:
                await call(self.client.delete, node)
            except client.NoNodeError:
                gone = "its node was already deleted"
            except client.SessionExpiredError as error:
                gone = f"the session is lost ({error})"
            if self._sweep:
                await self._delete_own_nodes()

        await cleanup(self.client, delete)
        self._forget()
        if gone is not None:
            raise self._lost_error(f"{self.what} was lost before release: {gone}")
        return True

    # --- holding with a guard -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self, blocking: bool = True, timeout: float | None = None) -> AsyncIterator[Lock]:
        """``async with lock.hold(timeout=5):`` acquire, run the block guarded, release.

        ``async with lock:`` is ``async with lock.hold():``.

        Raises:
            LockTimeoutError: not acquired within ``timeout`` (or, with ``blocking``
                False, held by another).
            LockLostError: the lock was lost while the block ran (the block was
                cancelled first) or was found lost at release.
        """
        if not await self.acquire(blocking, timeout):
            raise LockTimeoutError(f"{self.what} is held by another")
        try:
            async with guarded(self.client, self.node, what=self.what, error=self._lost_error) as guard:
                self._guard = guard
                yield self
        except BaseException:
            with contextlib.suppress(LockLostError):
                await self.release()
            raise
        finally:
            self._guard = None
        await self.release()

    async def __aenter__(self) -> Lock:
        hold = self.hold()
        result = await hold.__aenter__()
        self._hold = hold
        return result

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        hold, self._hold = self._hold, None
        assert hold is not None
        return await hold.__aexit__(exc_type, exc, traceback)

    # --- looking ----------------------------------------------------------------------------

    async def contenders(self) -> list[str]:
        """The identifiers of everyone holding or waiting, holder(s) first (kazoo's).

        For a read/write pair, lists readers and writers in queue order.
        """
        try:
            names = self._sorted(await call(self.client.get_children, self.path))
        except client.NoNodeError:
            return []
        identifiers = []
        for name in names:
            with contextlib.suppress(client.NoNodeError):
                data, _stat = await call(self.client.get, join(self.path, name))
                identifiers.append(as_text(data))
        return identifiers

    @staticmethod
    def _sorted(children: list[str]) -> list[str]:
        """Contenders (lock and read-lock nodes), in sequence order."""
        names = [name for name in children if LOCK_MARKER in name or READ_LOCK_MARKER in name]
        return sorted(names, key=sequence_of)

    def _predecessor(self, contenders: list[str], own: str) -> str | None:
        """The nearest earlier contender that blocks us, or None if none does."""
        index = contenders.index(own)
        for name in reversed(contenders[:index]):
            if any(marker in name for marker in self._blocked_by):
                return name
        return None

    def __repr__(self) -> str:
        state = "held" if self.is_acquired else "contending" if self._busy else "idle"
        return f"<{type(self).__name__} {self.path!r} {state} node={self.node!r}>"


class WriteLock(Lock):
    """The exclusive half of a read/write lock (kazoo's ``WriteLock``): a :class:`Lock`,
    waiting for every reader and writer queued before it."""


class ReadLock(Lock):
    """The shared half of a read/write lock (kazoo's ``ReadLock``).

    Readers hold together; a reader waits only for writers queued before it (and
    watches only the nearest one), a writer waits for everyone before it. Readers
    that arrive after a waiting writer queue behind it, so writers do not starve.
    """

    _marker = READ_LOCK_MARKER
    _blocked_by = (LOCK_MARKER,)


class ReadWriteLock:
    """A read/write pair on one path: ``rw.read_lock`` and ``rw.write_lock`` (as Curator's
    ``InterProcessReadWriteLock``). Each is a separate contender with its own node.
    """

    def __init__(self, client: client.Client, path: str, identifier: str | bytes = "") -> None:
        self.read_lock = ReadLock(client, path, identifier)
        self.write_lock = WriteLock(client, path, identifier)


class Semaphore:
    """Up to ``max_leases`` holders at once (kazoo's ``Semaphore``).

    Layout: ``{path}`` holds ``max_leases`` as its data (every user must agree);
    ``{path}/lock`` is a fair :class:`Lock` that admits one acquirer at a time;
    ``{path}/leases/{guid}__lease__`` are the leases. Whoever holds the lock waits
    (watching the leases' children) until fewer than ``max_leases`` exist, creates
    its lease and releases the lock. Waiting acquirers queue on the fair lock, so a
    lease released wakes only the one at its head: no herd, first come first served.

    ``async with semaphore:`` runs its block under the same guard as a lock; a lease
    is lost exactly when a lock would be. A non-blocking acquire also gives up when
    another acquirer holds ``{path}/lock`` at that moment (as kazoo's).

    Raises (on acquire):
        ValueError: ``max_leases`` differs from the one stored at ``path``.
    """

    def __init__(self, client: client.Client, path: str, identifier: str | bytes = "", max_leases: int = 1) -> None:
        if max_leases < 1:
            raise ValueError("max_leases must be at least 1")
        self.client = client
        self.path = normalize(path)
        self.identifier = identifier
        self.data = as_bytes(identifier)
        self.max_leases = max_leases
        self.leases_path = join(self.path, "leases")
        self.node = join(self.leases_path, f"{new_guid()}__lease__")
        self.is_acquired = False
        self._lock = Lock(client, join(self.path, "lock"), identifier)
        self._hold: contextlib.AbstractAsyncContextManager[Semaphore] | None = None
        self._guard: Guard | None = None

    async def _check_max_leases(self) -> None:
        zk = self.client
        wanted = str(self.max_leases).encode()
        while True:
            try:
                data, stat = await call(zk.get, self.path)
            except client.NoNodeError:
                with contextlib.suppress(client.NodeExistsError):
                    await call(zk.create, self.path, wanted, makepath=True)
                continue
            if data == wanted:
                return
            if data:
                raise ValueError(f"semaphore {self.path} has max_leases {as_text(data)}, not {self.max_leases}")
            with contextlib.suppress(client.BadVersionError):
                await call(zk.set, self.path, wanted, version=stat.version)

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take a lease (arguments, results and errors as :meth:`Lock.acquire`).

        Cancellation: safe; a cancelled acquire deletes its lease node if it made one.
        """
        if self.is_acquired:
            raise RuntimeError(f"semaphore {self.path}: this Semaphore already holds a lease")
        zk = self.client
        acquired = False
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await self._check_max_leases()
                await zk.ensure_path(self.leases_path)
                if not await self._lock.acquire(blocking):
                    return False
                try:
                    acquired = await self._take_lease(blocking)
                finally:
                    await self._lock.release()
                return acquired
            raise LockTimeoutError(f"semaphore {self.path}: no lease within {timeout:g}s")
        finally:
            if acquired:
                self.is_acquired = True
            else:
                await cleanup(zk, self._delete_lease)

    async def _take_lease(self, blocking: bool) -> bool:
        zk = self.client
        own = self.node.rsplit("/", 1)[1]
        while True:
            watch = client.Watch()
            try:
                leases = await zk.get_children(self.leases_path, watch=watch)
            except client.RETRYABLE:
                continue
            if own in leases:
                return True  # a create whose reply was lost did happen
            if len(leases) < self.max_leases:
                sent_at = trio.current_time()
                try:
                    await zk.create(self.node, self.data, ephemeral=True)
                except client.NodeExistsError:
                    pass
                except client.RETRYABLE:
                    continue  # look again: the lease may exist
                lease_of(zk).confirm(sent_at)
                return True
            if not blocking:
                return False
            await watch.wait()

    async def _delete_lease(self) -> None:
        with contextlib.suppress(client.NoNodeError):
            await call(self.client.delete, self.node)

    async def release(self) -> bool:
        """Give the lease back (as :meth:`Lock.release`)."""
        if not self.is_acquired:
            await trio.lowlevel.checkpoint()
            return False
        self.is_acquired = False
        if self._guard is not None:
            self._guard.disarm()
        gone: str | None = None

        async def delete() -> None:
            nonlocal gone
            try:
                await call(self.client.delete, self.node)
            except client.NoNodeError:
                gone = "its node was already deleted"
            except client.SessionExpiredError as error:
                gone = f"the session is lost ({error})"

        await cleanup(self.client, delete)
        if gone is not None:
            raise LockLostError(f"semaphore {self.path} lease was lost before release: {gone}")
        return True

    async def lease_holders(self) -> list[str]:
        """The identifiers of the current lease holders (kazoo's)."""
        try:
            names = await call(self.client.get_children, self.leases_path)
        except client.NoNodeError:
            return []
        holders = []
        for name in names:
            with contextlib.suppress(client.NoNodeError):
                data, _stat = await call(self.client.get, join(self.leases_path, name))
                holders.append(as_text(data))
        return holders

    @contextlib.asynccontextmanager
    async def hold(self, blocking: bool = True, timeout: float | None = None) -> AsyncIterator[Semaphore]:
        """``async with semaphore.hold(timeout=5):`` as :meth:`Lock.hold`."""
        if not await self.acquire(blocking, timeout):
            raise LockTimeoutError(f"semaphore {self.path}: all {self.max_leases} leases are held")
        try:
            async with guarded(self.client, self.node, what=f"semaphore {self.path} lease") as guard:
                self._guard = guard
                yield self
        except BaseException:
            with contextlib.suppress(LockLostError):
                await self.release()
            raise
        finally:
            self._guard = None
        await self.release()

    async def __aenter__(self) -> Semaphore:
        hold = self.hold()
        result = await hold.__aenter__()
        self._hold = hold
        return result

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        hold, self._hold = self._hold, None
        assert hold is not None
        return await hold.__aexit__(exc_type, exc, traceback)


__all__ = ["Lock", "ReadLock", "ReadWriteLock", "Semaphore", "WriteLock"]
