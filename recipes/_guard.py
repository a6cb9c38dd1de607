"""Holding something that a session owns: the lease rule, and the scope it cancels.

A lock, a semaphore lease or leadership is an ephemeral node, so it is held exactly
as long as the *session* lives. The client cannot see the session, only its
connection; this module decides, from what the client can prove, until when the
session is certainly alive, and runs the holder's block in a cancel scope that is
cancelled before that moment passes.

The rule (the client-side lease)
    Let ``T`` be the negotiated session timeout and ``c`` the moment this client
    *sent* the latest write whose reply came back (any write: the lock's own create,
    or a heartbeat). The leader touched the session when that write reached it, at or
    after ``c``, and a leader never expires a session before ``T`` of silence
    (:mod:`coord.sessions`; a newly elected leader gives every session a fresh ``T``).
    So the session, and the holder's ephemeral node, certainly live until ``c + T``.

    The holder's block is cancelled at ``c + T * LEASE_FRACTION`` (3/4 of ``T``), and
    a heartbeat write is sent every ``T * RENEW_FRACTION`` (1/4 of ``T``) while
    something is held, so on a healthy connection ``c`` never falls more than about
    ``T/4`` behind and the block is never cancelled; it takes a heartbeat stuck for
    about ``T/2`` (a dead server, a partition, a stalled ensemble) to end the hold.
    The last ``T/4`` before ``c + T`` is the holder's time to stop (and for the
    ``coord lock`` CLI, to stop its child) before another client can possibly be
    granted the lock. The block is also cancelled at once when the client reports
    ``LOST`` (the session expired or the client closed) and when the holder's node
    is found deleted or owned by another session.

    Chubby does the same on the client side (its "local lease timeout", computed
    from when the KeepAlive was sent), and its master adds a *lock-delay*: a lock
    whose holder vanished is not granted again for up to a minute. coord's servers
    have no lock-delay; the last ``T/4`` the holder gives up early plays that part,
    on the client's side. ZooKeeper leaves all this to the application; Curator's
    default rule gives up locks and leadership at ``SUSPENDED`` (and its
    "session" policy only at ``LOST``, which comes too late, see below). We do
    not give up at ``SUSPENDED``: a client that reconnects within about ``T/2``
    keeps what it holds, because it can prove it was never at risk.

Why not "SUSPENDED plus a timer"
    The client goes ``SUSPENDED`` either at once (the server closed the connection)
    or only after ``2T/3`` without hearing anything (a silent partition). In the
    second case the server last heard this client as early as ``T/3`` before the
    silence began, so its session may expire ``T - T/3 - 2T/3 = 0`` seconds after the
    client notices: a budget counted from ``SUSPENDED`` (``2T/3`` of it, or even
    ``T/3``) is not safe. Counting from the last *confirmed* write is, whatever the
    reason and moment of the disconnect.

    Why a write and not a read or a ping: a read is served by whichever server the
    client is connected to, and a follower that has just lost its leader still
    answers for up to the sync limit while the (new) leader hears nothing; a write
    is only answered after the leader got it.

Cost
    One heartbeat write (a transaction holding a single ``check``, which changes
    nothing) per client every ``T/4``, shared by everything the client holds, and
    only while it holds something; plus one exists-watch per held node.

Timing, with the default ``T = 10 s``
    Healthy: heartbeat every 2.5 s, hold kept indefinitely. The server the client
    uses dies: the client reconnects elsewhere (usually well under a second) and the
    hold continues. No write confirmed for 7.5 s: the block is cancelled and
    :class:`LockLostError` is raised out of it; the session may still be alive (the
    node is then deleted on the way out), or expire from 10 s on, after which another
    client may be granted the lock. A fencing token covers what the block could not
    take back in time.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import AsyncIterator

import trio

import client
from recipes._common import RETRY_PAUSE_S, LockLostError, log

LEASE_FRACTION = 0.75
"""The holder's block ends at (last confirmed write) + this fraction of the session timeout."""

RENEW_FRACTION = 0.25
"""A heartbeat write is sent once the last confirmed write is this fraction of the
session timeout old (while something is held)."""


class SessionLease:
    """What one client can prove about how long its session lives (see the module doc).

    One per client, shared by every guard on it (:func:`lease_of`).
    """

    def __init__(self, zk: client.Client) -> None:
        self._client = zk
        self.confirmed_at = -math.inf
        """``trio.current_time()`` when the latest confirmed write was sent."""
        self.heartbeats = 0
        """How many heartbeat writes were sent (for tests and curiosity)."""
        self._renewing: trio.Event | None = None

    @property
    def deadline(self) -> float:
        """When a holder's block must end unless a newer write is confirmed."""
        return self.confirmed_at + self._client.session_timeout * LEASE_FRACTION

    @property
    def renew_at(self) -> float:
        return self.confirmed_at + self._client.session_timeout * RENEW_FRACTION

    def confirm(self, sent_at: float) -> None:
        """A write sent at ``sent_at`` was answered by the ensemble."""
        self.confirmed_at = max(self.confirmed_at, sent_at)

    async def renew(self) -> None:
        """Send one heartbeat write (or wait for the one already in flight).

        Raises:
            CoordError: as the client raises it (the caller decides what to do).
        """
        if self._renewing is not None:
            await self._renewing.wait()
            return
        done = self._renewing = trio.Event()
        try:
            sent_at = trio.current_time()
            self.heartbeats += 1
            transaction = self._client.transaction()
            transaction.check("/", -1)
            await transaction.commit()
            self.confirm(sent_at)
        finally:
            self._renewing = None
            done.set()

    async def ensure_fresh(self) -> bool:
        """Make sure the lease runs for at least ``T * (LEASE_FRACTION - RENEW_FRACTION)``.

        Returns:
            False if that could not be done before the session could expire.
        """
        timeout = self._client.session_timeout
        give_up_at = max(self.deadline, trio.current_time() + timeout * LEASE_FRACTION)
        with trio.move_on_at(give_up_at):
            while trio.current_time() >= self.renew_at:
                try:
                    await self.renew()
                except client.SessionExpiredError:
                    return False
                except client.CoordError:
                    await trio.sleep(RETRY_PAUSE_S)
            return True
        return False


_leases: weakref.WeakKeyDictionary[client.Client, SessionLease] = weakref.WeakKeyDictionary()


def lease_of(zk: client.Client) -> SessionLease:
    """The :class:`SessionLease` of a client (made on first use)."""
    lease = _leases.get(zk)
    if lease is None:
        lease = _leases[zk] = SessionLease(zk)
    return lease


class Guard:
    """The running guard of one hold: :attr:`lost` says why it ended, if it did."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.lost: str | None = None
        """Why the hold was lost (None while it is not)."""
        self.scope = trio.CancelScope()
        """The scope the holder's block runs in."""
        self.stopped = False
        self.disarmed = False

    def lose(self, reason: str) -> None:
        if self.lost is None and not self.stopped and not self.disarmed:
            self.lost = reason
            log.warning("%s lost: %s", self.what, reason)
            self.scope.cancel()

    def stop(self) -> None:
        """End the block early without a loss (``resign``)."""
        self.stopped = True
        self.scope.cancel()

    def disarm(self) -> None:
        """Nothing is held any more (released inside the block): let the block run on
        unguarded."""
        self.disarmed = True


async def _watch_state(zk: client.Client, guard: Guard) -> None:
    async for state in zk.states():
        if state is client.ConnectionState.LOST:
            guard.lose("the session is lost (expired or closed)")
            return


async def _watch_lease(lease: SessionLease, guard: Guard, timeout: float) -> None:
    while True:
        now = trio.current_time()
        if now >= lease.deadline:
            guard.lose(
                f"no write confirmed for {now - lease.confirmed_at:.2f}s (session timeout {timeout:g}s):"
                " the session may expire before the ensemble is heard from again"
            )
            return
        if now < lease.renew_at:
            await trio.sleep_until(min(lease.renew_at, lease.deadline))
            continue
        with trio.move_on_at(lease.deadline):
            try:
                await lease.renew()
            except client.SessionExpiredError:
                guard.lose("the session expired")
                return
            except client.CoordError:
                await trio.sleep(RETRY_PAUSE_S)


async def _watch_node(zk: client.Client, node: str, guard: Guard) -> None:
    while True:
        watch = client.Watch()
        try:
            stat = await zk.exists(node, watch=watch)
        except client.SessionExpiredError:
            guard.lose("the session expired")
            return
        except client.CoordError:
            await trio.sleep(RETRY_PAUSE_S)
            continue
        if stat is None:
            guard.lose(f"its node {node} was deleted")
            return
        if stat.ephemeral_owner != zk.session_id:
            guard.lose(f"its node {node} belongs to another session")
            return
        try:
            await watch.wait()
        except client.SessionExpiredError:
            guard.lose("the session expired")
            return


def _unwrap(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


@contextlib.asynccontextmanager
async def guarded(
    zk: client.Client, node: str | None, *, what: str, error: type[LockLostError] = LockLostError
) -> AsyncIterator[Guard]:
    """Run the block in a scope that is cancelled when the hold can no longer be assumed.

    Args:
        zk: the client whose session owns ``node``.
        node: the held ephemeral node (watched for deletion), or None.
        what: names the hold in messages (``"lock /locks/x"``).
        error: raised out of the block on loss.

    Yields:
        The :class:`Guard` (``guard.stop()`` ends the block early without an error).

    Raises:
        error: the hold was lost (the block was cancelled first), or could not be
            confirmed before entering the block (then the block does not run).
    """
    lease = lease_of(zk)
    if not await lease.ensure_fresh():
        raise error(f"{what}: no write could be confirmed before the session might expire")
    guard = Guard(what)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_state, zk, guard)
            nursery.start_soon(_watch_lease, lease, guard, zk.session_timeout)
            if node is not None:
                nursery.start_soon(_watch_node, zk, node, guard)
            try:
                with guard.scope:
                    yield guard
            finally:
                nursery.cancel_scope.cancel()
    except BaseException as raised:
        body_error = _unwrap(raised)
        if guard.lost is None or isinstance(body_error, trio.Cancelled):
            # Not ours to replace: the block's own error, or a cancellation from outside.
            if body_error is raised:
                raise
            raise body_error from None
        raise error(f"{what} lost: {guard.lost}") from body_error
    if guard.lost is not None:
        raise error(f"{what} lost: {guard.lost}")


__all__ = ["LEASE_FRACTION", "RENEW_FRACTION", "Guard", "SessionLease", "guarded", "lease_of"]
