"""Deliberately broken ZAB roles, to prove that the simulators catch what they must.

Production code holds no broken variant and no switch for one: a
:class:`~coord.zab.peer.Peer` builds its roles from :class:`~coord.zab.peer.RoleTypes`,
and these tests pass subclasses that each take one known-bad shortcut. A variant is
named by a string only here (:data:`BROKEN_VARIANTS`), for options and reports.

- ``ack_before_fsync``: a follower acknowledges a proposal as soon as it logged it,
  before it is durable, so the leader may count a txn committed that only it holds
  (docs/correctness.md, rule 1).
- ``skip_trunc``: the leader sends a DIFF where a TRUNC is needed, so a follower keeps
  a proposal the new history does not hold, and delivers it (rule 3, ZOOKEEPER-1154).
- ``count_old_epoch_acks``: a leader that has not yet established its epoch counts
  what a quorum *holds* as committed and delivers it; a later leader may legally
  truncate it (rule 2).

And one broken server, for the whole-server simulator (tests/sim/servers.py):

- :class:`EagerSyncCore`: the leader answers its own client's ``sync`` as soon as the
  quorum round confirms its leadership, before it applied its commit point (rule 8;
  the stale read of tests/fault/FINDINGS.md, F1).
"""

from __future__ import annotations

from typing import Any, Final

from coord.server.core import ServerCore
from coord.zab.follower import Follower, FollowerPhase
from coord.zab.journal import Journal
from coord.zab.leader import Leader, LearnerStage, _Learner
from coord.zab.messages import Ack
from coord.zab.peer import RoleTypes
from coord.zab.quorum import quorum_zxid
from coord.zab.sync import SyncPlan, plan_sync
from coord.zab.types import Zxid


class AckBeforeFsyncFollower(Follower):
    def _on_proposal(self, zxid: Zxid, txns: tuple[bytes, ...]) -> None:
        super()._on_proposal(zxid, txns)
        if self.phase is FollowerPhase.BROADCAST:
            self._ctx.send(self.leader, Ack(zxid=self._journal.last_zxid))  # BUG: not durable yet


class _HistoryHoldsEverything:
    """A view of a journal whose history claims to hold every zxid."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def history_contains(self, zxid: Zxid) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)


class SkipTruncLeader(Leader):
    def _plan_sync(self, learner: _Learner) -> SyncPlan:
        journal: Any = _HistoryHoldsEverything(self._journal)  # BUG: a DIFF where a TRUNC is needed
        return plan_sync(
            journal,
            follower_zxid=learner.last_zxid,
            follower_delivered=learner.delivered_zxid,
            snap_threshold=self._ctx.config.snap_threshold_txns,
        )


class CountOldEpochAcksLeader(Leader):
    """Commits by counting replicas on every ACKEPOCH before the epoch is established.

    The hook points: an ACKEPOCH leads to :meth:`_check_epoch_quorum` while epoch acks
    are being collected and to :meth:`_sync` afterwards; both run after the learner's
    last zxid was recorded.
    """

    def _check_epoch_quorum(self) -> None:
        self._commit_by_counting_replicas()
        super()._check_epoch_quorum()

    def _sync(self, server: int, learner: _Learner) -> None:
        if not self.is_established:
            self._commit_by_counting_replicas()
        super()._sync(server, learner)

    def _commit_by_counting_replicas(self) -> None:
        """BUG: what a quorum holds counts as committed (rule 2 says it is not, yet)."""
        held = {self._ctx.me: self._journal.last_zxid}
        held.update(
            (server, learner.last_zxid)
            for server, learner in self._learners.items()
            if learner.stage is not LearnerStage.CONNECTED and learner.stage is not LearnerStage.EPOCH_SENT
        )
        zxid = self._journal.history_floor(min(quorum_zxid(held, self._ctx.voters), self._journal.last_zxid))
        self._ctx.commit_through(zxid)


class EagerSyncCore(ServerCore):
    """BROKEN: the leader answers its own client's sync once the quorum round confirmed its
    leadership, without waiting until it applied what was committed when the sync arrived.
    The leader counts a write committed when a quorum of *followers* acknowledged it, and a
    follower may have answered that write's client already, while the leader's own disk
    write (and so its apply) is still pending: a read after the sync then misses it."""

    def _release_syncs(self) -> bool:
        released = bool(self._confirmed_syncs)
        for barrier, _commit_zxid in self._confirmed_syncs:
            self.pipeline.barrier_done(*barrier)
        self._confirmed_syncs = []
        return released


BROKEN_VARIANTS: Final[dict[str, RoleTypes]] = {
    "ack_before_fsync": RoleTypes(follower=AckBeforeFsyncFollower),
    "skip_trunc": RoleTypes(leader=SkipTruncLeader),
    "count_old_epoch_acks": RoleTypes(leader=CountOldEpochAcksLeader),
}


def roles_with(bugs: frozenset[str]) -> RoleTypes:
    """The role classes with every named broken variant on (at most one per role)."""
    if unknown := bugs - BROKEN_VARIANTS.keys():
        raise ValueError(f"unknown broken variants: {sorted(unknown)}")
    leader, follower = RoleTypes().leader, RoleTypes().follower
    for name in sorted(bugs):
        variant = BROKEN_VARIANTS[name]
        if variant.leader is not Leader:
            assert leader is Leader, f"two broken leaders: {sorted(bugs)}"
            leader = variant.leader
        if variant.follower is not Follower:
            assert follower is Follower, f"two broken followers: {sorted(bugs)}"
            follower = variant.follower
    return RoleTypes(leader=leader, follower=follower)
