"""The leader: discovery, the sync decision, commits by quorum of this epoch only, liveness."""

from __future__ import annotations

import hashlib

import pytest

from coord.errors import NotLeaderError
from coord.zab import (
    Ack,
    AckEpoch,
    AckNewLeader,
    AppToFollower,
    AppToLeader,
    Commit,
    Diff,
    EpochRecord,
    FollowerInfo,
    LogEntry,
    NewEpoch,
    NewLeader,
    Peer,
    Ping,
    PingAck,
    Proposal,
    Role,
    RoleChange,
    Snap,
    SnapAck,
    SnapChunk,
    SnapEnd,
    SyncEntries,
    Trunc,
    UpToDate,
    make_zxid,
)
from coord.zab.sync import SyncKind, entry_runs, plan_sync
from coord.zxid import COUNTER_MAX

from .zab_support import (
    MemoryDurable,
    connect_follower,
    envelope,
    make_leader,
    of_type,
    persist_all,
    sent,
    start_leading,
)


def _history(*zxids: int) -> list[tuple[int, bytes]]:
    return [(zxid, f"txn {zxid:#x}".encode()) for zxid in zxids]


def _sync_messages(output_messages: list) -> list:
    return [
        message for message in output_messages if isinstance(message, Diff | Trunc | Snap | SyncEntries | NewLeader)
    ]


# --- discovery ---------------------------------------------------------------------------


def test_leader_proposes_epoch_above_every_accepted_epoch_and_persists_it_first() -> None:
    leader, _durable = start_leading(1, durable=MemoryDurable(accepted_epoch=3, current_epoch=3))
    leader.take_output()
    info = FollowerInfo(accepted_epoch=6, last_zxid=0, delivered_zxid=0, handshake=9)
    leader.step(envelope(2, 1, info))
    out = leader.take_output()
    assert out.send == [], "NEWEPOCH waits for our acceptedEpoch to be durable"
    assert out.persist == [EpochRecord(seq=out.persist[0].seq, accepted_epoch=7)]
    assert out.roles == [RoleChange(role=Role.LEADING, leader=1, epoch=7)]
    leader.persisted(out.persist[-1].seq)
    assert leader.take_output().send == [envelope(1, 2, NewEpoch(epoch=7, handshake=9))]
    assert leader.epoch == 7


def test_leader_syncs_no_one_before_a_quorum_acknowledged_the_epoch() -> None:
    leader, durable = start_leading(1, voters=(1, 2, 3, 4, 5))
    for follower in (2, 3):
        leader.step(envelope(follower, 1, FollowerInfo(accepted_epoch=0, last_zxid=0, delivered_zxid=0, handshake=1)))
    persist_all(leader, leader.take_output(), durable)
    leader.take_output()
    leader.step(envelope(2, 1, AckEpoch(current_epoch=0, last_zxid=0, handshake=1, is_first_ack=True)))
    out = leader.take_output()
    assert _sync_messages(sent(out)) == [] and out.persist == [], "1 and 2 are no quorum of 5"
    leader.step(envelope(3, 1, AckEpoch(current_epoch=0, last_zxid=0, handshake=1, is_first_ack=True)))
    out = leader.take_output()
    assert out.persist == [EpochRecord(seq=out.persist[0].seq, current_epoch=1)]
    assert [(e.target, type(e.message)) for e in out.send] == [(2, Diff), (2, NewLeader), (3, Diff), (3, NewLeader)]


def test_leader_steps_down_when_a_follower_is_ahead() -> None:
    durable = MemoryDurable(accepted_epoch=2, current_epoch=2, log=_history(make_zxid(2, 1)))
    leader, durable = start_leading(1, durable=durable)
    connect_follower(leader, durable, 2, last_zxid=make_zxid(2, 3), accepted_epoch=2, current_epoch=2)
    assert leader.role is Role.LOOKING


def test_leader_not_established_within_init_limit_steps_down() -> None:
    leader, _ = start_leading(1, init_limit_ticks=5)
    for _ in range(4):
        leader.tick()
    assert leader.role is Role.LEADING
    leader.tick()
    assert leader.role is Role.LOOKING


# --- the sync decision (docs/correctness.md, rule 3) ---------------------------------------


def test_leader_diffs_a_follower_whose_last_zxid_is_in_its_history() -> None:
    history = _history(make_zxid(1, 1), make_zxid(1, 2), make_zxid(3, 1))
    leader, durable = start_leading(1, durable=MemoryDurable(accepted_epoch=3, current_epoch=3, log=history))
    out = connect_follower(leader, durable, 2, last_zxid=make_zxid(1, 2), accepted_epoch=3, current_epoch=3)
    assert _sync_messages(sent(out)) == [
        Diff(handshake=77, zxid=make_zxid(1, 2)),
        SyncEntries(handshake=77, previous_zxid=make_zxid(1, 2), zxid=make_zxid(3, 1), txns=(history[2][1],)),
        NewLeader(epoch=4, zxid=make_zxid(3, 1), handshake=77),
    ]


def test_leader_truncates_follower_suffix_not_in_its_history_even_inside_its_range() -> None:
    # The follower holds (2, 1) from a leader of epoch 2 that died before committing it;
    # our history skipped epoch 2. (2, 1) < (3, 1): numerically inside our range, not ours.
    history = _history(make_zxid(1, 1), make_zxid(1, 2), make_zxid(3, 1))
    leader, durable = start_leading(1, durable=MemoryDurable(accepted_epoch=3, current_epoch=3, log=history))
    out = connect_follower(leader, durable, 2, last_zxid=make_zxid(2, 1), accepted_epoch=2, current_epoch=2)
    assert _sync_messages(sent(out)) == [
        Trunc(handshake=77, zxid=make_zxid(1, 2)),
        SyncEntries(handshake=77, previous_zxid=make_zxid(1, 2), zxid=make_zxid(3, 1), txns=(history[2][1],)),
        NewLeader(epoch=4, zxid=make_zxid(3, 1), handshake=77),
    ]


def test_leader_truncates_a_follower_beyond_its_last_zxid() -> None:
    history = _history(make_zxid(1, 1), make_zxid(1, 2))
    leader, durable = start_leading(1, durable=MemoryDurable(accepted_epoch=2, current_epoch=2, log=history))
    out = connect_follower(leader, durable, 2, last_zxid=make_zxid(1, 4), accepted_epoch=1, current_epoch=1)
    assert _sync_messages(sent(out)) == [
        Trunc(handshake=77, zxid=make_zxid(1, 2)),
        NewLeader(epoch=3, zxid=make_zxid(1, 2), handshake=77),
    ]


def test_skip_trunc_bug_diffs_instead() -> None:
    history = _history(make_zxid(1, 1), make_zxid(1, 2), make_zxid(3, 1))
    leader, durable = start_leading(
        1, durable=MemoryDurable(accepted_epoch=3, current_epoch=3, log=history), bugs=frozenset({"skip_trunc"})
    )
    out = connect_follower(leader, durable, 2, last_zxid=make_zxid(2, 1), accepted_epoch=2, current_epoch=2)
    assert _sync_messages(sent(out))[0] == Diff(handshake=77, zxid=make_zxid(2, 1))


def test_leader_snaps_a_follower_whose_application_applied_what_it_must_truncate() -> None:
    history = _history(make_zxid(1, 1), make_zxid(1, 2), make_zxid(3, 1))
    leader, durable = start_leading(1, durable=MemoryDurable(accepted_epoch=3, current_epoch=3, log=history))
    out = connect_follower(
        leader,
        durable,
        2,
        last_zxid=make_zxid(2, 1),
        delivered_zxid=make_zxid(2, 1),  # it replayed its whole log at start-up
        accepted_epoch=2,
        current_epoch=2,
    )
    [snap] = of_type(out, Snap)
    assert snap.zxid == make_zxid(3, 1)


def test_leader_snaps_a_follower_behind_its_purged_log() -> None:
    history = _history(make_zxid(1, 1), make_zxid(1, 2), make_zxid(1, 3))
    durable = MemoryDurable(accepted_epoch=1, current_epoch=1, log=history)
    durable.app = durable.recover_app()
    durable.purge_through(make_zxid(1, 2))
    leader, durable = start_leading(1, durable=durable)
    out = connect_follower(leader, durable, 2, last_zxid=make_zxid(1, 1), accepted_epoch=1, current_epoch=1)
    messages = _sync_messages(sent(out))
    assert isinstance(messages[0], Snap) and messages[0].zxid == make_zxid(1, 3)
    assert messages[1:] == [NewLeader(epoch=2, zxid=make_zxid(1, 3), handshake=77)]


def test_plan_sync_snaps_beyond_the_threshold() -> None:
    history = _history(*(make_zxid(1, counter) for counter in range(1, 6)))
    leader, _durable = start_leading(1, durable=MemoryDurable(accepted_epoch=1, current_epoch=1, log=history))
    journal = leader._ctx.journal
    assert plan_sync(journal, follower_zxid=make_zxid(1, 3), follower_delivered=0, snap_threshold=2).kind is (
        SyncKind.DIFF
    )
    assert plan_sync(journal, follower_zxid=make_zxid(1, 2), follower_delivered=0, snap_threshold=2).kind is (
        SyncKind.SNAP
    )
    assert plan_sync(journal, follower_zxid=0, follower_delivered=0, snap_threshold=2).kind is SyncKind.SNAP


def test_history_floor_skips_epochs_we_do_not_hold() -> None:
    history = _history(make_zxid(1, 1), make_zxid(1, 2), make_zxid(4, 1), make_zxid(4, 2))
    leader, _ = start_leading(1, durable=MemoryDurable(accepted_epoch=4, current_epoch=4, log=history))
    journal = leader._ctx.journal
    assert journal.history_floor(make_zxid(3, 7)) == make_zxid(1, 2)
    assert journal.history_floor(make_zxid(4, 1)) == make_zxid(4, 1)
    assert journal.history_floor(make_zxid(1, 9)) == make_zxid(1, 2)
    assert journal.history_floor(make_zxid(5, 1)) == make_zxid(4, 2)
    assert journal.history_floor(make_zxid(0, 3)) == 0


def test_entry_runs_split_by_epoch_and_batch() -> None:
    entries = _history(make_zxid(1, 1), make_zxid(1, 2), make_zxid(1, 3), make_zxid(2, 1))
    runs = entry_runs(0, entries, max_batch=2)
    assert [(previous, first, len(txns)) for previous, first, txns in runs] == [
        (0, make_zxid(1, 1), 2),
        (make_zxid(1, 2), make_zxid(1, 3), 1),
        (make_zxid(1, 3), make_zxid(2, 1), 1),
    ]


# --- commits (docs/correctness.md, rule 2) -------------------------------------------------


def test_old_epoch_proposal_not_committed_by_counting_acks() -> None:
    # Both we and the follower hold (1, 2), an old-epoch proposal nobody saw committed.
    history = _history(make_zxid(1, 1), make_zxid(1, 2))
    leader, durable = start_leading(
        1, durable=MemoryDurable(accepted_epoch=1, current_epoch=1, log=history), delivered_zxid=0
    )
    out = connect_follower(leader, durable, 2, last_zxid=make_zxid(1, 2), accepted_epoch=1, current_epoch=1)
    assert out.deliver == [], "a quorum holds it, but that commits nothing"
    leader.step(envelope(2, 1, Ack(zxid=make_zxid(1, 2))))
    assert leader.take_output().deliver == [] and leader.last_committed_zxid == 0
    # Committed only as the new leader's history, acknowledged with NEWLEADER by a quorum.
    leader.step(envelope(2, 1, AckNewLeader(epoch=2, handshake=77)))
    out = leader.take_output()
    assert out.deliver == history and out.ready is True
    assert of_type(out, UpToDate) == [UpToDate(epoch=2, zxid=make_zxid(1, 2), handshake=77)]


def test_count_old_epoch_acks_bug_commits_by_counting_replicas() -> None:
    history = _history(make_zxid(1, 1), make_zxid(1, 2))
    leader, durable = start_leading(
        1,
        durable=MemoryDurable(accepted_epoch=1, current_epoch=1, log=history),
        delivered_zxid=0,
        bugs=frozenset({"count_old_epoch_acks"}),
    )
    out = connect_follower(leader, durable, 2, last_zxid=make_zxid(1, 2), accepted_epoch=1, current_epoch=1)
    assert out.deliver == history, "the broken variant delivers before the epoch is established"


def test_newleader_quorum_needs_the_leaders_own_current_epoch_durable() -> None:
    leader, durable = start_leading(1)
    leader.step(envelope(2, 1, FollowerInfo(accepted_epoch=0, last_zxid=0, delivered_zxid=0, handshake=5)))
    persist_all(leader, leader.take_output(), durable)
    leader.take_output()
    leader.step(envelope(2, 1, AckEpoch(current_epoch=0, last_zxid=0, handshake=5, is_first_ack=True)))
    out = leader.take_output()  # our currentEpoch record: not yet durable
    leader.step(envelope(2, 1, AckNewLeader(epoch=1, handshake=5)))
    assert not leader.is_established_leader
    leader.persisted(out.persist[-1].seq)
    assert leader.is_established_leader


def test_leader_commits_when_a_quorum_acked_and_delivers_once_durable_here() -> None:
    leader, durable = make_leader(1, voters=(1, 2, 3), followers=2)
    first, second = leader.propose(b"a"), leader.propose(b"b")
    out = leader.take_output()
    assert [(e.target, e.message) for e in out.send] == [
        (2, Proposal(zxid=first, txns=(b"a", b"b"))),
        (3, Proposal(zxid=first, txns=(b"a", b"b"))),
    ], "one batch per follower"
    leader.step(envelope(2, 1, Ack(zxid=first)))
    assert leader.take_output().send == [], "one durable copy of 3 is no quorum"
    leader.step(envelope(3, 1, Ack(zxid=second)))
    out2 = leader.take_output()
    assert [(e.target, e.message) for e in out2.send] == [(2, Commit(zxid=first)), (3, Commit(zxid=first))]
    assert out2.deliver == [], "committed, but not durable here yet"
    persist_all(leader, out, durable)
    out3 = leader.take_output()
    assert of_type(out3, Commit) == [Commit(zxid=second), Commit(zxid=second)], "our own copy is the second ACK"
    assert out3.deliver == [(first, b"a"), (second, b"b")]


def test_leader_counts_acks_only_from_followers_that_acked_newleader() -> None:
    leader, durable = make_leader(1)
    zxid = leader.propose(b"a")
    persist_all(leader, leader.take_output(), durable)
    leader.step(envelope(3, 1, FollowerInfo(accepted_epoch=0, last_zxid=0, delivered_zxid=0, handshake=8)))
    leader.step(envelope(3, 1, Ack(zxid=zxid)))
    assert leader.last_committed_zxid < zxid
    leader.step(envelope(2, 1, Ack(zxid=zxid)))
    assert leader.last_committed_zxid == zxid


def test_leader_ignores_acks_of_old_epochs() -> None:
    leader, durable = make_leader(1)
    zxid = leader.propose(b"a")
    persist_all(leader, leader.take_output(), durable)
    leader.step(envelope(2, 1, Ack(zxid=make_zxid(leader.epoch + 1, 1))))
    leader.step(envelope(2, 1, Ack(zxid=make_zxid(leader.epoch - 1, 9))))
    assert leader.last_committed_zxid < zxid


def test_late_follower_is_synced_with_proposals_in_flight_and_joins_the_broadcast() -> None:
    leader, durable = make_leader(1)
    first = leader.propose(b"a")
    in_flight = leader.take_output()  # not yet durable at the leader
    leader.step(envelope(3, 1, FollowerInfo(accepted_epoch=0, last_zxid=0, delivered_zxid=0, handshake=4)))
    assert of_type(leader.take_output(), NewEpoch) == [NewEpoch(epoch=1, handshake=4)]
    leader.step(envelope(3, 1, AckEpoch(current_epoch=0, last_zxid=0, handshake=4, is_first_ack=True)))
    out = leader.take_output()
    to_3 = [e.message for e in out.send if e.target == 3]
    assert to_3 == [
        Diff(handshake=4, zxid=0),
        SyncEntries(handshake=4, previous_zxid=0, zxid=first, txns=(b"a",)),
        NewLeader(epoch=1, zxid=first, handshake=4),
    ]
    second = leader.propose(b"b")
    out = leader.take_output()
    assert {e.target for e in out.send if isinstance(e.message, Proposal)} == {2, 3}
    persist_all(leader, in_flight, durable)
    persist_all(leader, out, durable)
    leader.step(envelope(3, 1, AckNewLeader(epoch=1, handshake=4)))
    assert of_type(leader.take_output(), UpToDate) == [UpToDate(epoch=1, zxid=0, handshake=4)]
    leader.step(envelope(3, 1, Ack(zxid=second)))
    assert leader.last_committed_zxid == second


# --- proposals, liveness, barriers ----------------------------------------------------------


def test_propose_requires_an_established_leader() -> None:
    leader, _ = start_leading(1)
    with pytest.raises(NotLeaderError):
        leader.propose(b"x")
    with pytest.raises(NotLeaderError):
        leader.barrier()


def test_zxids_are_contiguous_and_batches_are_bounded() -> None:
    leader, _ = make_leader(1, max_batch_txns=2)
    zxids = [leader.propose(bytes([n])) for n in range(5)]
    assert zxids == [make_zxid(1, counter) for counter in range(1, 6)]
    assert [len(p.txns) for p in of_type(leader.take_output(), Proposal)] == [2, 2, 1]


def test_a_proposal_numbered_out_of_order_is_refused_before_anything_is_written() -> None:
    """The preparer numbers txns; ZAB takes the number only when it extends the log."""
    leader, _ = make_leader(1)
    leader.take_output()
    assert leader.propose(b"a", zxid=make_zxid(1, 1)) == make_zxid(1, 1)
    for wrong in (make_zxid(1, 1), make_zxid(1, 3), make_zxid(2, 2)):
        with pytest.raises(ValueError, match="continues at"):
            leader.propose(b"b", zxid=wrong)
    assert leader.last_logged_zxid == make_zxid(1, 1)
    persisted = [record.zxid for record in leader.take_output().persist if isinstance(record, LogEntry)]
    assert persisted == [make_zxid(1, 1)]


def test_counter_about_to_overflow_forces_a_new_epoch() -> None:
    leader, _ = make_leader(1)
    leader._ctx.journal.last_zxid = make_zxid(1, COUNTER_MAX - 1)
    with pytest.raises(NotLeaderError):
        leader.propose(b"x")
    assert leader.role is Role.LOOKING


def test_leader_steps_down_without_quorum() -> None:
    leader, _ = make_leader(1, sync_limit_ticks=4)
    for _ in range(4):
        leader.tick()
    assert leader.is_established_leader
    leader.tick()
    out = leader.take_output()
    assert leader.role is Role.LOOKING
    assert out.ready is False and RoleChange(role=Role.LOOKING, leader=None, epoch=0) in out.roles


def test_a_follower_unheard_for_the_sync_limit_is_dropped_and_told_so() -> None:
    """Server finding S4: a dropped follower must learn of it at once (its links close),
    or it serves on while the leader ignores its clients' writes, syncs and touches."""
    leader, _ = make_leader(1, voters=(1, 2, 3, 4, 5), followers=4, sync_limit_ticks=4)
    dropped: list[int] = []
    for _ in range(6):
        leader.tick()
        out = leader.take_output()
        dropped += out.disconnect
        for ping in of_type(out, Ping):
            for follower in (3, 4):  # 5 stays silent
                leader.step(envelope(follower, 1, PingAck(epoch=ping.epoch, seq=ping.seq)))
    assert leader.is_established_leader
    assert dropped == [5]
    # What it sends after that is refused, and its links are closed again.
    leader.step(envelope(5, 1, AppToLeader(epoch=leader.epoch, payload=b"touch")))
    out = leader.take_output()
    assert out.app == [] and out.disconnect == [5]
    # Its followers' messages still go through.
    leader.step(envelope(3, 1, AppToLeader(epoch=leader.epoch, payload=b"touch")))
    out = leader.take_output()
    assert out.app == [(3, b"touch")] and out.disconnect == []


def test_leader_stays_while_a_quorum_answers_pings() -> None:
    leader, _ = make_leader(1, sync_limit_ticks=4)
    for _ in range(20):
        leader.tick()
        for ping in of_type(leader.take_output(), Ping):
            leader.step(envelope(2, 1, PingAck(epoch=ping.epoch, seq=ping.seq)))
    assert leader.is_established_leader


def test_barrier_confirmed_by_a_quorum_answering_a_later_ping() -> None:
    leader, _ = make_leader(1)
    leader.tick()
    [old_ping] = of_type(leader.take_output(), Ping)
    barrier = leader.barrier()
    leader.step(envelope(2, 1, PingAck(epoch=1, seq=old_ping.seq)))
    out = leader.take_output()
    assert out.barriers == [], "that ping was sent before the barrier"
    [new_ping] = of_type(out, Ping)
    assert new_ping.seq > old_ping.seq
    leader.step(envelope(2, 1, PingAck(epoch=1, seq=new_ping.seq)))
    assert leader.take_output().barriers == [barrier]


def test_barrier_ignores_answers_to_pings_never_sent() -> None:
    leader, _ = make_leader(1)
    barrier = leader.barrier()
    leader.step(envelope(2, 1, PingAck(epoch=1, seq=99)))
    out = leader.take_output()
    assert out.barriers == []
    [ping] = of_type(out, Ping)
    leader.step(envelope(2, 1, PingAck(epoch=1, seq=ping.seq)))
    assert leader.take_output().barriers == [barrier]


def test_barrier_on_a_standalone_leader_is_immediate() -> None:
    leader, _ = make_leader(1, voters=(1,), followers=0)
    barrier = leader.barrier()
    assert leader.take_output().barriers == [barrier]


def test_app_messages_travel_in_order_with_proposals() -> None:
    leader, _ = make_leader(1)
    zxid = leader.propose(b"a")
    leader.send_app(2, b"reply")
    leader.send_app(3, b"nobody synced there")
    out = leader.take_output()
    assert [e.message for e in out.send] == [
        Proposal(zxid=zxid, txns=(b"a",)),
        AppToFollower(epoch=1, commit_zxid=0, payload=b"reply"),
    ]
    leader.step(envelope(2, 1, AppToLeader(epoch=1, payload=b"forwarded")))
    leader.app_to_leader(b"local")
    assert leader.take_output().app == [(2, b"forwarded"), (1, b"local")]


def test_leader_counts_only_first_epoch_acks_toward_its_quorum() -> None:
    leader, durable = start_leading(1)
    leader.step(envelope(2, 1, FollowerInfo(accepted_epoch=0, last_zxid=0, delivered_zxid=0, handshake=2)))
    persist_all(leader, leader.take_output(), durable)
    leader.take_output()
    leader.step(envelope(3, 1, FollowerInfo(accepted_epoch=1, last_zxid=0, delivered_zxid=0, handshake=3)))
    leader.take_output()
    # 3 had accepted epoch 1 already (maybe from another leader that picked 1 too).
    leader.step(envelope(3, 1, AckEpoch(current_epoch=0, last_zxid=0, handshake=3, is_first_ack=False)))
    out = leader.take_output()
    assert out.persist == [] and out.send == [], "no promise, no quorum: nobody is synchronised yet"
    leader.step(envelope(2, 1, AckEpoch(current_epoch=0, last_zxid=0, handshake=2, is_first_ack=True)))
    out = leader.take_output()
    assert out.persist == [EpochRecord(seq=out.persist[0].seq, current_epoch=1)]
    assert {e.target for e in out.send if isinstance(e.message, NewLeader)} == {2, 3}, "3 is synchronised too"


def test_leader_steps_down_for_a_follower_that_accepted_a_higher_epoch() -> None:
    leader, _ = make_leader(1)
    leader.step(envelope(3, 1, FollowerInfo(accepted_epoch=5, last_zxid=0, delivered_zxid=0, handshake=3)))
    assert leader.role is Role.LOOKING, "it would refuse our epoch 1 forever"


def test_leader_never_snaps_away_history_the_follower_already_holds() -> None:
    history = _history(*(make_zxid(1, counter) for counter in range(1, 6)))
    # Restarted: our application is at 0 until the epoch is established and we re-deliver.
    leader, durable = start_leading(
        1,
        durable=MemoryDurable(accepted_epoch=1, current_epoch=1, log=history),
        delivered_zxid=0,
        snap_threshold_txns=0,
    )
    out = connect_follower(
        leader, durable, 2, last_zxid=make_zxid(1, 2), delivered_zxid=make_zxid(1, 2), accepted_epoch=1, current_epoch=1
    )
    assert _sync_messages(sent(out))[:2] == [
        Diff(handshake=77, zxid=make_zxid(1, 2)),
        SyncEntries(
            handshake=77,
            previous_zxid=make_zxid(1, 2),
            zxid=make_zxid(1, 3),
            txns=tuple(txn for _, txn in history[2:]),
        ),
    ]


def test_leader_snaps_only_when_its_snapshot_reaches_past_the_shared_point() -> None:
    history = _history(*(make_zxid(1, counter) for counter in range(1, 6)))
    leader, durable = start_leading(
        1,
        durable=MemoryDurable(accepted_epoch=1, current_epoch=1, log=history),
        delivered_zxid=make_zxid(1, 3),
        snap_threshold_txns=0,
    )
    behind = connect_follower(leader, durable, 2, last_zxid=make_zxid(1, 1), accepted_epoch=1, current_epoch=1)
    [snap] = of_type(behind, Snap)
    assert snap.zxid == make_zxid(1, 3), "the snapshot covers all the follower holds: nothing is lost"
    ahead = connect_follower(
        leader, durable, 3, last_zxid=make_zxid(1, 4), accepted_epoch=1, current_epoch=1, handshake=78
    )
    assert of_type(ahead, Snap) == [] and of_type(ahead, Diff) == [Diff(handshake=78, zxid=make_zxid(1, 4))]


# --- SNAP as a stream ----------------------------------------------------------------------


def _leader_with_purged_log(**config: int) -> tuple[Peer, MemoryDurable]:
    """An established leader (follower 2 synced by DIFF) whose log is purged through (1, 3)."""
    durable = MemoryDurable(accepted_epoch=1, current_epoch=1, log=_history(*(make_zxid(1, c) for c in range(1, 4))))
    durable.app = durable.recover_app()
    durable.purge_through(make_zxid(1, 3))
    leader, durable = start_leading(1, durable=durable, **config)
    connect_follower(leader, durable, 2, last_zxid=make_zxid(1, 3), accepted_epoch=1, current_epoch=1)
    leader.step(envelope(2, 1, AckNewLeader(epoch=leader.epoch, handshake=77)))
    persist_all(leader, leader.take_output(), durable)
    assert leader.is_established_leader
    return leader, durable


def test_a_snap_streams_within_its_window_and_the_entries_follow_its_end() -> None:
    leader, durable = _leader_with_purged_log(snap_chunk_bytes=4, snap_window_chunks=2)
    assert durable.app is not None
    image = durable.app.serialize()
    out = connect_follower(leader, durable, 3, accepted_epoch=1, current_epoch=1, handshake=78)
    to_3 = [envelope.message for envelope in out.send if envelope.target == 3]
    assert to_3[0] == Snap(handshake=78, zxid=make_zxid(1, 3))
    assert [(chunk.offset, chunk.data) for chunk in of_type(out, SnapChunk)] == [(0, image[:4]), (4, image[4:8])]
    assert of_type(out, NewLeader) == [] and of_type(out, SnapEnd) == []
    # A write during the SNAP goes to the synced follower only; the SNAP's follower gets it
    # with the entries after the snapshot.
    zxid = leader.propose(b"during")
    out = leader.take_output()
    assert [envelope.target for envelope in out.send if isinstance(envelope.message, Proposal)] == [2]
    assert of_type(out, SnapChunk) == []  # the window is full
    received = image[:8]
    acked = 0
    for _ in range(100):
        acked += 4
        leader.step(envelope(3, 1, SnapAck(handshake=78, offset=min(acked, len(image)))))
        out = leader.take_output()
        received += b"".join(chunk.data for chunk in of_type(out, SnapChunk))
        if of_type(out, SnapEnd):
            break
    [end] = of_type(out, SnapEnd)
    assert received == image and end.size == len(image)
    assert end.digest == hashlib.sha256(image).digest()
    [entries] = of_type(out, SyncEntries)
    assert (entries.previous_zxid, entries.zxid, entries.txns) == (make_zxid(1, 3), zxid, (b"during",))
    assert of_type(out, NewLeader) == [NewLeader(epoch=leader.epoch, zxid=zxid, handshake=78)]


def test_a_snap_never_runs_ahead_of_the_acknowledgements() -> None:
    leader, durable = _leader_with_purged_log(snap_chunk_bytes=4, snap_window_chunks=2)
    out = connect_follower(leader, durable, 3, accepted_epoch=1, current_epoch=1, handshake=78)
    assert len(of_type(out, SnapChunk)) == 2
    for stale in (0, 9, 400):  # none of these moves the window (nothing or more than was sent)
        leader.step(envelope(3, 1, SnapAck(handshake=78, offset=stale)))
        leader.step(envelope(3, 1, SnapAck(handshake=79, offset=8)))  # another attempt's
    assert of_type(leader.take_output(), SnapChunk) == []


def test_a_stalled_snap_is_dropped_and_frees_its_follower() -> None:
    leader, durable = _leader_with_purged_log(snap_chunk_bytes=4, snap_window_chunks=2, init_limit_ticks=5)
    connect_follower(leader, durable, 3, accepted_epoch=1, current_epoch=1, handshake=78)
    dropped: list[int] = []
    for _ in range(8):
        leader.tick()
        out = leader.take_output()
        dropped += out.disconnect
        for ping in of_type(out, Ping):
            leader.step(envelope(2, 1, PingAck(epoch=ping.epoch, seq=ping.seq)))
    assert dropped == [3] and leader.is_established_leader
