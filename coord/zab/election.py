"""Fast Leader Election (FLE), as ZooKeeper's ``FastLeaderElection``, sans IO.

Theory of operation
-------------------
A LOOKING server proposes a leader by broadcasting a :class:`Notification`: its
vote ``(epoch, zxid, leader)``, its logical clock (``election_round``) and its
state. Votes are ordered by the proposed leader's **currentEpoch, then last logged
zxid, then server id** (:class:`Vote` compares in that order). Because a server's
currentEpoch only becomes e after it durably holds epoch e's whole initial
history, and every committed txn is durable on a quorum, the best vote of any
quorum names a server whose history holds every committed txn; that is why the
epoch comes first (docs/correctness.md, rules 1-3 rest on it).

One :class:`Election` object lives for one LOOKING period:

- Start: vote for yourself, broadcast.
- LOOKING notification with a higher round: jump to that round, forget the votes
  of the old round, vote for the better of its vote and your own, broadcast.
  Same round and a better vote: adopt it, broadcast. Lower round: answer the
  sender with your notification so it catches up. Same round and a worse vote:
  answer the sender too (ZooKeeper waits for the periodic re-send; answering
  converges faster and costs one message).
- When a quorum (yourself included) holds exactly your vote, wait
  ``finalize_wait_ticks`` for a better one; if none comes, decide.
- A notification from a FOLLOWING / LEADING server says "there is a leader": if a
  quorum of such notifications names the same leader and epoch, and the leader's
  own notification says LEADING (ZooKeeper's ``checkLeader``), follow it even
  though we never voted — that is how a restarted server joins a running
  ensemble ("out of election").
- Every ``election_timeout_ticks`` without a decision, re-broadcast.

Inputs are :meth:`receive` and :meth:`tick`; outputs are ``outbox`` (target,
notification) pairs and ``decided`` (the vote decided on). Notifications from
non-voters never reach this class (the peer drops them).

Left out: observers and weighted/hierarchical quorums; ZooKeeper's exponential
back-off of the re-send interval (a fixed interval is enough with ticks).
"""

from __future__ import annotations

from dataclasses import dataclass

from coord.zab.messages import Notification
from coord.zab.quorum import is_quorum
from coord.zab.types import Role, Zxid


@dataclass(frozen=True, slots=True, order=True)
class Vote:
    """A vote for ``leader``; compares by (epoch, zxid, leader), as FLE's total order."""

    epoch: int  # the proposed leader's currentEpoch
    zxid: Zxid  # the proposed leader's last logged zxid
    leader: int


@dataclass(frozen=True, slots=True)
class _Seen:
    vote: Vote
    state: Role


class Election:
    """One LOOKING period of Fast Leader Election for server ``me``."""

    def __init__(
        self,
        *,
        me: int,
        voters: tuple[int, ...],
        election_round: int,
        own: Vote,
        finalize_wait_ticks: int,
        resend_ticks: int,
    ) -> None:
        assert own.leader == me
        self.me = me
        self.voters = voters
        self.election_round = election_round
        self.own = own
        self.proposal = own
        self.decided: Vote | None = None
        self.outbox: list[tuple[int, Notification]] = []
        self._finalize_wait_ticks = finalize_wait_ticks
        self._resend_ticks = max(1, resend_ticks)
        self._resend_left = self._resend_ticks
        self._finalize_left: int | None = None
        self._received: dict[int, _Seen] = {me: _Seen(own, Role.LOOKING)}  # this round's votes
        self._out_of_election: dict[int, _Seen] = {}
        self._broadcast()
        self._check_quorum()

    # --- inputs ---------------------------------------------------------------------

    def receive(self, source: int, notification: Notification) -> None:
        """A notification from voter ``source`` (not ourselves)."""
        if self.decided is not None:
            return
        assert source != self.me and source in self.voters
        vote = Vote(notification.epoch, notification.zxid, notification.leader)
        match notification.state:
            case Role.LOOKING:
                self._receive_looking(source, notification.election_round, vote)
            case Role.FOLLOWING | Role.LEADING:
                self._receive_settled(source, notification, vote)

    def tick(self) -> None:
        if self.decided is not None:
            return
        if self._finalize_left is not None:
            self._finalize_left -= 1
            if self._finalize_left <= 0:
                self._finalize_left = None
                if self._has_quorum_for(self.proposal):
                    self.decided = self.proposal
                    return
        self._resend_left -= 1
        if self._resend_left <= 0:
            self._broadcast()

    # --- LOOKING senders -----------------------------------------------------------

    def _receive_looking(self, source: int, election_round: int, vote: Vote) -> None:
        if election_round > self.election_round:
            self.election_round = election_round
            self._received = {}
            self._adopt(max(vote, self.own))
        elif election_round < self.election_round:
            self.outbox.append((source, self.notification()))
            return
        elif vote > self.proposal:
            self._adopt(vote)
        elif self.proposal > vote:
            self.outbox.append((source, self.notification()))
        self._received[source] = _Seen(vote, Role.LOOKING)
        self._check_quorum()

    def _adopt(self, vote: Vote) -> None:
        self.proposal = vote
        self._received[self.me] = _Seen(vote, Role.LOOKING)
        self._finalize_left = None
        self._broadcast()

    def _check_quorum(self) -> None:
        if self._finalize_left is not None or not self._has_quorum_for(self.proposal):
            return
        if self._finalize_wait_ticks <= 0:
            self.decided = self.proposal
        else:
            self._finalize_left = self._finalize_wait_ticks

    def _has_quorum_for(self, vote: Vote) -> bool:
        return is_quorum((server for server, seen in self._received.items() if seen.vote == vote), self.voters)

    # --- FOLLOWING / LEADING senders -------------------------------------------------

    def _receive_settled(self, source: int, notification: Notification, vote: Vote) -> None:
        seen = _Seen(vote, notification.state)
        if notification.election_round == self.election_round:
            self._received[source] = seen
            if self._settled_quorum(self._received, vote) and self._leader_confirmed(
                self._received, vote.leader, notification.election_round
            ):
                self.decided = vote
                return
        self._out_of_election[source] = seen
        if self._settled_quorum(self._out_of_election, vote) and self._leader_confirmed(
            self._out_of_election, vote.leader, notification.election_round
        ):
            self.election_round = notification.election_round
            self.decided = vote

    def _settled_quorum(self, seen: dict[int, _Seen], vote: Vote) -> bool:
        # Votes of servers that already settled compare by leader and epoch only
        # (ZooKeeper's Vote.equals, ZOOKEEPER-1805): their zxid has moved on.
        return is_quorum(
            (
                server
                for server, other in seen.items()
                if other.vote.leader == vote.leader and other.vote.epoch == vote.epoch
            ),
            self.voters,
        )

    def _leader_confirmed(self, seen: dict[int, _Seen], leader: int, election_round: int) -> bool:
        # ZooKeeper's checkLeader: never follow a leader that has not said it leads.
        if leader == self.me:
            return election_round == self.election_round
        other = seen.get(leader)
        return other is not None and other.state is Role.LEADING

    # --- outputs ---------------------------------------------------------------------

    def notification(self) -> Notification:
        return Notification(
            leader=self.proposal.leader,
            zxid=self.proposal.zxid,
            epoch=self.proposal.epoch,
            election_round=self.election_round,
            state=Role.LOOKING,
        )

    def _broadcast(self) -> None:
        self._resend_left = self._resend_ticks
        notification = self.notification()
        self.outbox.extend((server, notification) for server in self.voters if server != self.me)
