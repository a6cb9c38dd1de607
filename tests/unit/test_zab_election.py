"""Fast Leader Election: vote order, convergence, finalize wait, joining a running leader."""

from __future__ import annotations

import random

from coord.zab import Notification, Peer, Role, Vote, make_zxid
from coord.zab.election import Election

from .zab_support import MemoryDurable, config_for, envelope, of_type


def _election(me: int = 1, *, voters: tuple[int, ...] = (1, 2, 3), own: Vote | None = None, **timing: int) -> Election:
    return Election(
        me=me,
        voters=voters,
        election_round=1,
        own=own or Vote(0, 0, me),
        finalize_wait_ticks=timing.get("finalize_wait_ticks", 1),
        resend_ticks=timing.get("resend_ticks", 4),
    )


def _looking(vote: Vote, election_round: int = 1) -> Notification:
    return Notification(
        leader=vote.leader, zxid=vote.zxid, epoch=vote.epoch, election_round=election_round, state=Role.LOOKING
    )


# --- vote order -----------------------------------------------------------------------


def test_vote_order_epoch_then_zxid_then_id() -> None:
    assert Vote(2, make_zxid(1, 1), 1) > Vote(1, make_zxid(1, 9), 3), "currentEpoch first"
    assert Vote(1, make_zxid(1, 9), 1) > Vote(1, make_zxid(1, 8), 3), "then the last zxid"
    assert Vote(1, make_zxid(1, 9), 3) > Vote(1, make_zxid(1, 9), 2), "then the server id"


def test_election_adopts_a_better_vote_and_rebroadcasts() -> None:
    election = _election(1)
    election.outbox.clear()
    better = Vote(0, 0, 3)
    election.receive(3, _looking(better))
    assert election.proposal == better
    assert {target for target, _ in election.outbox} == {2, 3}
    assert all(notification.leader == 3 for _, notification in election.outbox)


def test_election_answers_a_worse_vote_to_its_sender() -> None:
    election = _election(3)
    election.outbox.clear()
    election.receive(1, _looking(Vote(0, 0, 1)))
    assert election.proposal == Vote(0, 0, 3)
    assert [(target, notification.leader) for target, notification in election.outbox] == [(1, 3)]


def test_election_answers_a_lower_round_and_jumps_to_a_higher_one() -> None:
    election = _election(1)
    election.receive(2, _looking(Vote(0, 0, 2), election_round=5))
    assert election.election_round == 5 and election.proposal == Vote(0, 0, 2)
    election.outbox.clear()
    election.receive(3, _looking(Vote(0, 0, 3), election_round=2))
    assert [(target, notification.election_round) for target, notification in election.outbox] == [(3, 5)]
    assert election.proposal == Vote(0, 0, 2), "votes of an old round are not adopted"


def test_election_decides_after_finalize_wait_without_better_vote() -> None:
    election = _election(3)
    election.receive(1, _looking(Vote(0, 0, 3)))
    assert election.decided is None, "a quorum agrees; wait for a better vote first"
    election.tick()
    assert election.decided == Vote(0, 0, 3)


def test_election_better_vote_during_finalize_wait_restarts_it() -> None:
    election = _election(2, voters=(1, 2, 3, 4, 5), own=Vote(0, 0, 2))
    election.receive(1, _looking(Vote(0, 0, 2)))
    election.receive(4, _looking(Vote(0, 0, 2)))  # a quorum for 2: the finalize wait starts
    election.receive(3, _looking(Vote(0, 5, 3)))
    assert election.proposal == Vote(0, 5, 3)
    election.tick()
    assert election.decided is None, "only 2 and 3 hold the better vote so far"
    election.receive(1, _looking(Vote(0, 5, 3)))
    election.receive(4, _looking(Vote(0, 5, 3)))
    assert election.decided is None
    election.tick()
    assert election.decided == Vote(0, 5, 3)


def test_election_resends_after_timeout() -> None:
    election = _election(1, resend_ticks=3)
    election.outbox.clear()
    election.tick()
    election.tick()
    assert election.outbox == []
    election.tick()
    assert {target for target, _ in election.outbox} == {2, 3}


def test_election_joins_an_established_leader_out_of_election() -> None:
    election = _election(3, own=Vote(0, 0, 3))
    following = Notification(leader=1, zxid=7, epoch=4, election_round=9, state=Role.FOLLOWING)
    election.receive(2, following)
    assert election.decided is None, "the leader itself has not said it leads"
    election.receive(1, Notification(leader=1, zxid=7, epoch=4, election_round=9, state=Role.LEADING))
    assert election.decided is not None and election.decided.leader == 1
    assert election.election_round == 9


def test_election_does_not_follow_a_minority_leader() -> None:
    election = _election(5, voters=(1, 2, 3, 4, 5), own=Vote(0, 0, 5))
    election.receive(1, Notification(leader=1, zxid=7, epoch=4, election_round=9, state=Role.LEADING))
    election.receive(2, Notification(leader=1, zxid=7, epoch=4, election_round=9, state=Role.FOLLOWING))
    assert election.decided is None, "2 of 5 is no quorum"
    election.receive(3, Notification(leader=1, zxid=3, epoch=4, election_round=8, state=Role.FOLLOWING))
    assert election.decided is not None and election.decided.leader == 1


def test_standalone_peer_elects_itself() -> None:
    peer = Peer(config_for(1, (1,), finalize_wait_ticks=0), MemoryDurable(), random.Random(1))
    assert peer.role is Role.LEADING


def test_settled_peer_answers_a_looking_one_with_its_leader() -> None:
    peer = Peer(config_for(3, (1, 2, 3)), MemoryDurable(), random.Random(3))
    peer.step(envelope(1, 3, Notification(leader=1, zxid=0, epoch=0, election_round=1, state=Role.LEADING)))
    peer.step(envelope(2, 3, Notification(leader=1, zxid=0, epoch=0, election_round=1, state=Role.FOLLOWING)))
    assert peer.role is Role.FOLLOWING and peer.leader_id == 1
    peer.take_output()
    peer.step(envelope(2, 3, Notification(leader=2, zxid=0, epoch=0, election_round=4, state=Role.LOOKING)))
    [answer] = of_type(peer.take_output(), Notification)
    assert (answer.leader, answer.state) == (1, Role.FOLLOWING)


def test_peer_ignores_messages_from_non_voters() -> None:
    peer = Peer(config_for(1, (1, 2, 3)), MemoryDurable(), random.Random(1))
    peer.take_output()
    peer.step(envelope(9, 1, Notification(leader=9, zxid=1 << 40, epoch=9, election_round=1, state=Role.LOOKING)))
    assert peer.take_output().send == []
    peer.step(envelope(2, 7, Notification(leader=2, zxid=0, epoch=0, election_round=1, state=Role.LOOKING)))
    assert peer.take_output().send == [], "addressed to someone else"
