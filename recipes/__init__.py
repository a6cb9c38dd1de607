"""coord's recipes: locks, leader election, barriers, counters, queues, built only on
the public :mod:`client` API, with kazoo's names, made async.

::

    from recipes import Lock, LeaderElection, LockLostError

    async with Lock(zk, "/locks/report", "worker-7") as lock:   # fair, herd-free
        await write_report(fencing_token=lock.token)            # cancelled if the lock is lost

    async with LeaderElection(zk, "/elections/indexer", "host-1").campaign() as election:
        await index_forever(fencing_token=election.token)

What is held (a lock, a semaphore lease, leadership) is held by a session, and its
loss is never silent: the holder's block runs in a cancel scope that is cancelled
when the session is lost or may be lost (see :mod:`recipes._guard` for the rule:
the block ends once no write was confirmed for 3/4 of the session timeout), and
:class:`LockLostError` (:class:`LeadershipLostError`) leaves the block. Every
held thing has a fencing token (its node's czxid) for the resource it protects.

Recipes: :class:`Lock`, :class:`ReadLock`, :class:`WriteLock`,
:class:`ReadWriteLock`, :class:`Semaphore` (:mod:`recipes.lock`);
:class:`LeaderElection` (:mod:`recipes.election`); :class:`Barrier`,
:class:`DoubleBarrier` (:mod:`recipes.barrier`); :class:`Counter`; :class:`Queue`;
:class:`Party`; :class:`DataWatch`, :class:`ChildrenWatch` (async iterators).
"""

from recipes._common import LeadershipLostError as LeadershipLostError
from recipes._common import LockLostError as LockLostError
from recipes._common import LockTimeoutError as LockTimeoutError
from recipes._common import RecipeError as RecipeError
from recipes._common import ResignedError as ResignedError
from recipes._guard import LEASE_FRACTION as LEASE_FRACTION
from recipes._guard import RENEW_FRACTION as RENEW_FRACTION
from recipes.barrier import Barrier as Barrier
from recipes.barrier import DoubleBarrier as DoubleBarrier
from recipes.counter import Counter as Counter
from recipes.election import LeaderElection as LeaderElection
from recipes.lock import Lock as Lock
from recipes.lock import ReadLock as ReadLock
from recipes.lock import ReadWriteLock as ReadWriteLock
from recipes.lock import Semaphore as Semaphore
from recipes.lock import WriteLock as WriteLock
from recipes.party import Party as Party
from recipes.queue import Queue as Queue
from recipes.watchers import ChildrenWatch as ChildrenWatch
from recipes.watchers import DataWatch as DataWatch

__all__ = [
    "LEASE_FRACTION",
    "RENEW_FRACTION",
    "Barrier",
    "ChildrenWatch",
    "Counter",
    "DataWatch",
    "DoubleBarrier",
    "LeaderElection",
    "LeadershipLostError",
    "Lock",
    "LockLostError",
    "LockTimeoutError",
    "Party",
    "Queue",
    "ReadLock",
    "ReadWriteLock",
    "RecipeError",
    "ResignedError",
    "Semaphore",
    "WriteLock",
]
