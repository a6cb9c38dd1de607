"""The follower: persist before promising, sync strictly, deliver only what is durable."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

import pytest

from coord.zab import (
    Ack,
    AckEpoch,
    AckNewLeader,
    AppToFollower,
    AppToLeader,
    Commit,
    Diff,
    Envelope,
    EpochRecord,
    FollowerInfo,
    LogEntry,
    Message,
    NewEpoch,
    NewLeader,
    Notification,
    Peer,
    Ping,
    PingAck,
    Proposal,
    Role,
    RoleChange,
    Snap,
    SnapAck,
    SnapEnd,
    SnapshotChunkRecord,
    SnapshotRecord,
    SyncEntries,
    Trunc,
    TruncateRecord,
    UpToDate,
    make_zxid,
)

from .zab_support import MemoryDurable, config_for, envelope, make_follower, of_type, persist_all, snap_messages


def _joining(me: int = 2, leader: int = 1, *, durable: MemoryDurable | None = None) -> tuple[Peer, int]:
    """A peer that decided to follow ``leader`` and sent FOLLOWERINFO; returns it and its handshake."""
    durable = durable or MemoryDurable()
    durable.app = durable.recover_app()
    peer = Peer(config_for(me, (1, 2, 3)), durable, random.Random(me))
    peer.take_output()
    settled = Notification(leader=leader, zxid=0, epoch=0, election_round=1, state=Role.FOLLOWING)
    peer.step(envelope(3, me, settled))
    peer.step(envelope(leader, me, replace(settled, state=Role.LEADING)))
    [info] = of_type(peer.take_output(), FollowerInfo)
    return peer, info.handshake


def _synchronising(durable: MemoryDurable, *, epoch: int = 5, me: int = 2, leader: int = 1) -> tuple[Peer, int]:
    """A follower that acknowledged ``epoch`` and waits for DIFF / TRUNC / SNAP."""
    peer, handshake = _joining(me, leader, durable=durable)
    peer.step(envelope(leader, me, NewEpoch(epoch=epoch, handshake=handshake)))
    persist_all(peer, peer.take_output(), durable)
    assert len(of_type(peer.take_output(), AckEpoch)) == 1
    return peer, handshake


# --- broadcast ------------------------------------------------------------------------


def test_follower_acks_only_after_persisted() -> None:
    follower, _, _ = make_follower(me=2, leader=1, epoch=3)
    zxid = make_zxid(3, 1)
    follower.step(Envelope(source=1, target=2, message=Proposal(zxid=zxid, txns=(b"t",))))
    out = follower.take_output()
    assert out.send == []  # nothing before the disk
    assert [record.zxid for record in out.persist if isinstance(record, LogEntry)] == [zxid]
    follower.persisted(out.persist[-1].seq)
    assert follower.take_output().send == [Envelope(source=2, target=1, message=Ack(zxid=zxid))]


def test_follower_acks_cumulatively_once_per_durable_batch() -> None:
    follower, _, _ = make_follower(epoch=3)
    follower.step(envelope(1, 2, Proposal(zxid=make_zxid(3, 1), txns=(b"a", b"b"))))
    follower.step(envelope(1, 2, Proposal(zxid=make_zxid(3, 3), txns=(b"c",))))
    out = follower.take_output()
    assert [record.zxid for record in out.persist] == [make_zxid(3, 1), make_zxid(3, 2), make_zxid(3, 3)]
    follower.persisted(out.persist[1].seq)
    assert of_type(follower.take_output(), Ack) == [Ack(zxid=make_zxid(3, 2))]
    follower.persisted(out.persist[2].seq)
    assert of_type(follower.take_output(), Ack) == [Ack(zxid=make_zxid(3, 3))]


def test_follower_never_delivers_what_is_not_durable() -> None:
    follower, _, _ = make_follower(epoch=3)
    follower.step(envelope(1, 2, Proposal(zxid=make_zxid(3, 1), txns=(b"a", b"b"))))
    out = follower.take_output()
    follower.step(envelope(1, 2, Commit(zxid=make_zxid(3, 2))))
    assert follower.take_output().deliver == [], "committed, but not yet durable here"
    follower.persisted(out.persist[0].seq)
    assert follower.take_output().deliver == [(make_zxid(3, 1), b"a")]
    follower.persisted(out.persist[1].seq)
    assert follower.take_output().deliver == [(make_zxid(3, 2), b"b")]
    assert follower.last_delivered_zxid == make_zxid(3, 2)


def test_follower_never_delivers_what_is_not_committed() -> None:
    follower, durable, _ = make_follower(epoch=3)
    follower.step(envelope(1, 2, Proposal(zxid=make_zxid(3, 1), txns=(b"a", b"b"))))
    persist_all(follower, follower.take_output(), durable)
    assert follower.take_output().deliver == []
    follower.step(envelope(1, 2, Ping(epoch=3, seq=4, commit_zxid=make_zxid(3, 1))))
    out = follower.take_output()
    assert out.deliver == [(make_zxid(3, 1), b"a")], "a ping re-announces the commit point"
    assert out.send == [envelope(2, 1, PingAck(epoch=3, seq=4))]


def test_follower_ignores_proposals_of_another_epoch_and_other_senders() -> None:
    follower, _, _ = make_follower(epoch=3)
    follower.step(envelope(1, 2, Proposal(zxid=make_zxid(2, 1), txns=(b"stale",))))
    follower.step(envelope(3, 2, Proposal(zxid=make_zxid(3, 1), txns=(b"not the leader",))))
    assert follower.take_output().persist == []
    assert follower.role is Role.FOLLOWING


def test_follower_skips_duplicates_and_gives_up_on_a_gap() -> None:
    follower, _durable, _ = make_follower(epoch=3)
    follower.step(envelope(1, 2, Proposal(zxid=make_zxid(3, 1), txns=(b"a", b"b"))))
    follower.step(envelope(1, 2, Proposal(zxid=make_zxid(3, 2), txns=(b"b", b"c"))))
    out = follower.take_output()
    assert [record.zxid for record in out.persist] == [make_zxid(3, 1), make_zxid(3, 2), make_zxid(3, 3)]
    follower.step(envelope(1, 2, Proposal(zxid=make_zxid(3, 5), txns=(b"e",))))
    out = follower.take_output()
    assert out.persist == [], "never write a gap (rule 6)"
    assert follower.role is Role.LOOKING
    assert out.roles == [RoleChange(role=Role.LOOKING, leader=None, epoch=0)] and out.ready is False


def test_follower_gives_up_when_a_commit_is_beyond_its_log() -> None:
    follower, _, _ = make_follower(epoch=3)
    follower.step(envelope(1, 2, Commit(zxid=make_zxid(3, 4))))
    assert follower.role is Role.LOOKING, "the proposals before that commit were lost on the link"


def test_follower_releases_app_message_after_leader_commits_before_it() -> None:
    follower, durable, _ = make_follower(epoch=3)
    follower.step(envelope(1, 2, Proposal(zxid=make_zxid(3, 1), txns=(b"a",))))
    follower.step(envelope(1, 2, Commit(zxid=make_zxid(3, 1))))
    follower.step(envelope(1, 2, AppToFollower(epoch=3, commit_zxid=make_zxid(3, 1), payload=b"reply")))
    out = follower.take_output()
    assert out.app == [], "the commit before it is not delivered yet"
    persist_all(follower, out, durable)
    out = follower.take_output()
    assert out.deliver == [(make_zxid(3, 1), b"a")] and out.app == [(1, b"reply")]


def test_follower_sends_app_messages_to_its_leader_only_when_synchronised() -> None:
    follower, _, _ = make_follower(epoch=3)
    follower.app_to_leader(b"forwarded")
    assert follower.take_output().send == [envelope(2, 1, AppToLeader(epoch=3, payload=b"forwarded"))]
    joining, _ = _joining()
    joining.app_to_leader(b"lost")
    assert joining.take_output().send == []


def test_ack_before_fsync_bug_acks_at_once() -> None:
    follower, _, _ = make_follower(epoch=3, bugs=frozenset({"ack_before_fsync"}))
    follower.step(envelope(1, 2, Proposal(zxid=make_zxid(3, 1), txns=(b"t",))))
    assert of_type(follower.take_output(), Ack) == [Ack(zxid=make_zxid(3, 1))]


# --- discovery --------------------------------------------------------------------------


def test_ackepoch_only_after_accepted_epoch_durable() -> None:
    peer, handshake = _joining()
    peer.step(envelope(1, 2, NewEpoch(epoch=4, handshake=handshake)))
    out = peer.take_output()
    assert out.send == []
    assert out.persist == [EpochRecord(seq=out.persist[0].seq, accepted_epoch=4)]
    assert out.roles == [RoleChange(role=Role.FOLLOWING, leader=1, epoch=4)]
    peer.persisted(out.persist[-1].seq)
    assert peer.take_output().send == [
        envelope(2, 1, AckEpoch(current_epoch=0, last_zxid=0, handshake=handshake, is_first_ack=True))
    ]


def test_follower_reports_its_log_and_application_state() -> None:
    durable = MemoryDurable(accepted_epoch=2, current_epoch=2, log=[(make_zxid(2, 1), b"a"), (make_zxid(2, 2), b"b")])
    peer = Peer(config_for(2, (1, 2, 3)), durable, random.Random(2), delivered_zxid=make_zxid(2, 1))
    settled = Notification(leader=1, zxid=0, epoch=2, election_round=1, state=Role.FOLLOWING)
    peer.step(envelope(3, 2, settled))
    peer.step(envelope(1, 2, replace(settled, state=Role.LEADING)))
    [info] = of_type(peer.take_output(), FollowerInfo)
    assert (info.accepted_epoch, info.last_zxid, info.delivered_zxid) == (2, make_zxid(2, 2), make_zxid(2, 1))


def test_follower_rejects_a_leader_epoch_below_its_accepted_epoch() -> None:
    peer, handshake = _joining(durable=MemoryDurable(accepted_epoch=6, current_epoch=5))
    peer.step(envelope(1, 2, NewEpoch(epoch=5, handshake=handshake)))
    out = peer.take_output()
    assert peer.role is Role.LOOKING and out.persist == []


def test_follower_ignores_stale_handshake() -> None:
    peer, handshake = _joining()
    peer.step(envelope(1, 2, NewEpoch(epoch=4, handshake=handshake + 1)))
    assert peer.take_output().persist == []


def test_follower_gives_up_when_sync_does_not_finish_within_init_limit() -> None:
    peer, _ = _joining()
    for _ in range(9):
        peer.tick()
    assert peer.role is Role.FOLLOWING
    peer.tick()
    assert peer.role is Role.LOOKING


def test_follower_gives_up_on_a_silent_leader() -> None:
    follower, _, _ = make_follower(epoch=3)
    for _ in range(4):
        follower.tick()
    assert follower.role is Role.FOLLOWING
    follower.step(envelope(1, 2, Ping(epoch=3, seq=1, commit_zxid=0)))
    for _ in range(4):
        follower.tick()
    assert follower.role is Role.FOLLOWING
    follower.tick()
    out = follower.take_output()
    assert follower.role is Role.LOOKING and out.ready is False


# --- synchronisation ----------------------------------------------------------------------


def test_newleader_ack_only_after_history_and_current_epoch_durable() -> None:
    durable = MemoryDurable()
    peer, handshake = _synchronising(durable, epoch=5)
    peer.step(envelope(1, 2, Diff(handshake=handshake, zxid=0)))
    entries = SyncEntries(handshake=handshake, previous_zxid=0, zxid=make_zxid(4, 1), txns=(b"a", b"b"))
    peer.step(envelope(1, 2, entries))
    peer.step(envelope(1, 2, NewLeader(epoch=5, zxid=make_zxid(4, 2), handshake=handshake)))
    out = peer.take_output()
    assert out.send == []
    entry_a, entry_b, epoch_record = out.persist
    assert (entry_a.zxid, entry_b.zxid) == (make_zxid(4, 1), make_zxid(4, 2))  # type: ignore[union-attr]
    assert epoch_record == EpochRecord(seq=epoch_record.seq, current_epoch=5), "currentEpoch after the history"
    peer.persisted(entry_b.seq)
    assert peer.take_output().send == [], "history durable, currentEpoch not yet"
    peer.persisted(epoch_record.seq)
    assert peer.take_output().send == [envelope(2, 1, AckNewLeader(epoch=5, handshake=handshake))]
    assert not peer.is_ready
    peer.step(envelope(1, 2, UpToDate(epoch=5, zxid=make_zxid(4, 2), handshake=handshake)))
    out = peer.take_output()
    assert out.ready is True and out.deliver == [(make_zxid(4, 1), b"a"), (make_zxid(4, 2), b"b")]


def test_follower_truncates_to_the_leaders_point() -> None:
    durable = MemoryDurable(
        accepted_epoch=2,
        current_epoch=2,
        log=[(make_zxid(1, 1), b"a"), (make_zxid(2, 1), b"dead leader's")],
    )
    peer = Peer(config_for(2, (1, 2, 3)), durable, random.Random(2), delivered_zxid=make_zxid(1, 1))
    durable.app = durable.recover_app()
    settled = Notification(leader=1, zxid=0, epoch=3, election_round=1, state=Role.FOLLOWING)
    peer.step(envelope(3, 2, settled))
    peer.step(envelope(1, 2, replace(settled, state=Role.LEADING)))
    [info] = of_type(peer.take_output(), FollowerInfo)
    peer.step(envelope(1, 2, NewEpoch(epoch=4, handshake=info.handshake)))
    persist_all(peer, peer.take_output(), durable)
    peer.take_output()
    peer.step(envelope(1, 2, Trunc(handshake=info.handshake, zxid=make_zxid(1, 1))))
    entries = SyncEntries(handshake=info.handshake, previous_zxid=make_zxid(1, 1), zxid=make_zxid(3, 1), txns=(b"c",))
    peer.step(envelope(1, 2, entries))
    peer.step(envelope(1, 2, NewLeader(epoch=4, zxid=make_zxid(3, 1), handshake=info.handshake)))
    out = peer.take_output()
    assert out.persist[0] == TruncateRecord(seq=out.persist[0].seq, zxid=make_zxid(1, 1))
    assert [record.zxid for record in out.persist[1:2]] == [make_zxid(3, 1)]  # type: ignore[union-attr]
    persist_all(peer, out, durable)
    assert durable.history() == [make_zxid(1, 1), make_zxid(3, 1)]
    assert of_type(peer.take_output(), AckNewLeader) == [AckNewLeader(epoch=4, handshake=info.handshake)]


def test_follower_installs_a_snapshot_only_once_durable() -> None:
    durable = MemoryDurable()
    peer, handshake = _synchronising(durable, epoch=5)
    for message in snap_messages(handshake, make_zxid(4, 7), b"state", chunk_bytes=2):
        peer.step(envelope(1, 2, message))
    entries = SyncEntries(handshake=handshake, previous_zxid=make_zxid(4, 7), zxid=make_zxid(4, 8), txns=(b"h",))
    peer.step(envelope(1, 2, entries))
    out = peer.take_output()
    assert out.install is None
    chunks = [record for record in out.persist if isinstance(record, SnapshotChunkRecord)]
    assert [(record.offset, record.data) for record in chunks] == [(0, b"st"), (2, b"at"), (4, b"e")]
    [installed] = [record for record in out.persist if isinstance(record, SnapshotRecord)]
    assert (installed.zxid, installed.size, installed.digest) == (make_zxid(4, 7), 5, hashlib.sha256(b"state").digest())
    assert installed.seq > chunks[-1].seq
    peer.persisted(installed.seq)
    out = peer.take_output()
    assert out.install == make_zxid(4, 7)
    assert peer.last_delivered_zxid == make_zxid(4, 7)


def test_follower_waits_out_its_own_disk_while_a_snap_installs() -> None:
    """Installing a big SNAP (its image verified and decoded in the writer's thread) can
    take longer than init_limit; that is our disk, not the leader, so the clock waits."""
    durable = MemoryDurable()
    peer, handshake = _synchronising(durable, epoch=5)
    for message in snap_messages(handshake, make_zxid(4, 7), b"state", chunk_bytes=2):
        peer.step(envelope(1, 2, message))
    out = peer.take_output()
    [installed] = [record for record in out.persist if isinstance(record, SnapshotRecord)]
    peer.persisted(installed.seq - 1)  # the chunks are durable, the install is not yet
    for _ in range(30):  # three times init_limit (10 ticks)
        peer.tick()
    assert peer.role is Role.FOLLOWING
    peer.persisted(installed.seq)
    assert peer.take_output().install == make_zxid(4, 7)
    for _ in range(10):  # installed, and the leader says nothing more: now it is the leader's fault
        peer.tick()
    assert peer.role is Role.LOOKING


def test_follower_acknowledges_snap_chunks_once_durable() -> None:
    durable = MemoryDurable()
    peer, handshake = _synchronising(durable, epoch=5)
    for message in snap_messages(handshake, make_zxid(4, 7), b"abcdefgh", chunk_bytes=3)[:3]:
        peer.step(envelope(1, 2, message))  # Snap and two chunks
    out = peer.take_output()
    assert of_type(out, SnapAck) == [], "nothing durable yet"
    first, second = out.persist
    peer.persisted(first.seq)
    assert of_type(peer.take_output(), SnapAck) == [SnapAck(handshake=handshake, offset=3)]
    peer.persisted(second.seq)
    assert of_type(peer.take_output(), SnapAck) == [SnapAck(handshake=handshake, offset=6)]


@pytest.mark.parametrize(
    "damage",
    ["a chunk out of order", "a chunk lost", "the wrong digest", "the wrong size", "entries before its end"],
)
def test_follower_gives_up_on_a_damaged_snap_and_installs_nothing(damage: str) -> None:
    durable = MemoryDurable()
    peer, handshake = _synchronising(durable, epoch=5)
    snap, first, second, third, end = snap_messages(handshake, make_zxid(4, 7), b"abcdefgh", chunk_bytes=3)
    assert isinstance(end, SnapEnd)
    entries = SyncEntries(handshake=handshake, previous_zxid=make_zxid(4, 7), zxid=make_zxid(4, 8), txns=(b"h",))
    stream = {
        "a chunk out of order": [snap, second, first, third, end],
        "a chunk lost": [snap, first, third, end],
        "the wrong digest": [snap, first, second, third, replace(end, digest=bytes(32))],
        "the wrong size": [snap, first, second, third, replace(end, size=9)],
        "entries before its end": [snap, first, second, entries],
    }[damage]
    for message in stream:
        peer.step(envelope(1, 2, message))
    out = peer.take_output()
    assert peer.role is Role.LOOKING
    assert not any(isinstance(record, SnapshotRecord) for record in out.persist)


def test_follower_gives_up_when_newleader_finds_its_log_incomplete() -> None:
    durable = MemoryDurable()
    peer, handshake = _synchronising(durable, epoch=5)
    peer.step(envelope(1, 2, Diff(handshake=handshake, zxid=0)))
    peer.step(envelope(1, 2, NewLeader(epoch=5, zxid=make_zxid(4, 2), handshake=handshake)))
    out = peer.take_output()
    assert peer.role is Role.LOOKING
    assert not any(isinstance(record, EpochRecord) and record.current_epoch for record in out.persist)


def test_follower_ignores_sync_messages_of_another_attempt() -> None:
    durable = MemoryDurable()
    peer, handshake = _synchronising(durable, epoch=5)
    peer.step(envelope(1, 2, Trunc(handshake=handshake + 1, zxid=0)))
    peer.step(envelope(1, 2, NewLeader(epoch=5, zxid=0, handshake=handshake + 1)))
    assert peer.take_output().persist == []
    assert peer.role is Role.FOLLOWING


def test_follower_acks_an_epoch_it_accepted_before_without_promise() -> None:
    durable = MemoryDurable(accepted_epoch=4, current_epoch=3)
    peer, handshake = _joining(durable=durable)
    peer.step(envelope(1, 2, NewEpoch(epoch=4, handshake=handshake)))
    out = peer.take_output()
    assert out.persist == [], "already accepted: nothing new to promise"
    assert of_type(out, AckEpoch) == [AckEpoch(current_epoch=3, last_zxid=0, handshake=handshake, is_first_ack=False)]


def test_follower_gives_up_when_the_first_proposal_of_an_epoch_was_lost() -> None:
    durable = MemoryDurable(accepted_epoch=2, current_epoch=2, log=[(make_zxid(2, 1), b"a")])
    follower, _, _ = make_follower(epoch=3, durable=durable)
    follower.step(envelope(1, 2, Proposal(zxid=make_zxid(3, 2), txns=(b"c",))))
    assert follower.take_output().persist == [], "(3, 1) is missing: (3, 2) does not follow (2, 1)"
    assert follower.role is Role.LOOKING


def test_snapshot_replaces_what_the_application_replayed_at_start_up() -> None:
    # Recovery replayed (1, 2) into the application; the leader never had it.
    durable = MemoryDurable(accepted_epoch=1, current_epoch=1, log=[(make_zxid(1, 1), b"a"), (make_zxid(1, 2), b"b")])
    peer, handshake = _synchronising(durable, epoch=3)
    assert peer.last_delivered_zxid == make_zxid(1, 2)
    for message in snap_messages(handshake, make_zxid(1, 1), b"state at (1, 1)"):
        peer.step(envelope(1, 2, message))
    peer.step(envelope(1, 2, NewLeader(epoch=3, zxid=make_zxid(1, 1), handshake=handshake)))
    persist_all(peer, peer.take_output(), durable)
    assert peer.take_output().install == make_zxid(1, 1)
    assert durable.snapshot_data == b"state at (1, 1)"
    peer.step(envelope(1, 2, UpToDate(epoch=3, zxid=make_zxid(1, 1), handshake=handshake)))
    peer.step(envelope(1, 2, Proposal(zxid=make_zxid(3, 1), txns=(b"c",))))
    peer.step(envelope(1, 2, Commit(zxid=make_zxid(3, 1))))
    persist_all(peer, peer.take_output(), durable)
    assert peer.take_output().deliver == [(make_zxid(3, 1), b"c")]
    assert peer.last_committed_zxid == make_zxid(3, 1)


def test_follower_reports_the_application_state_a_snapshot_in_flight_will_leave() -> None:
    durable = MemoryDurable()
    peer, handshake = _synchronising(durable, epoch=5)
    for message in snap_messages(handshake, make_zxid(4, 7), b"state"):
        peer.step(envelope(1, 2, message))
    peer.take_output()  # the snapshot record is not durable yet
    peer.link_down(1)  # the leader goes away (no timeout while our own disk installs the SNAP)
    settled = Notification(leader=3, zxid=0, epoch=6, election_round=9, state=Role.FOLLOWING)
    peer.step(envelope(1, 2, settled))
    peer.step(envelope(3, 2, replace(settled, state=Role.LEADING)))
    [info] = of_type(peer.take_output(), FollowerInfo)
    assert (info.last_zxid, info.delivered_zxid) == (make_zxid(4, 7), make_zxid(4, 7))


def test_follower_gives_up_when_a_sync_run_was_lost_across_an_epoch_boundary() -> None:
    durable = MemoryDurable()
    peer, handshake = _synchronising(durable, epoch=5)
    peer.step(envelope(1, 2, Diff(handshake=handshake, zxid=0)))
    # The run (1, 1)..(1, 20) was lost; (2, 1) alone would look like a fine start of epoch 2.
    peer.step(
        envelope(
            1, 2, SyncEntries(handshake=handshake, previous_zxid=make_zxid(1, 20), zxid=make_zxid(2, 1), txns=(b"x",))
        )
    )
    assert peer.take_output().persist == []
    assert peer.role is Role.LOOKING


@pytest.mark.parametrize(
    "wrong",
    [
        "a DIFF from a zxid we do not end at",
        "a TRUNC to a zxid we do not hold",
        "a TRUNC below what we applied",
        "a TRUNC past our log",
        "a SNAP of an epoch we never accepted",
        "entries of an epoch we never accepted",
    ],
)
def test_a_wrong_sync_from_the_leader_makes_the_follower_give_up_and_never_raises(wrong: str) -> None:
    """Issue: no single peer can take a server down. These were asserts once."""
    durable = MemoryDurable(accepted_epoch=1, current_epoch=1, log=[(make_zxid(1, 1), b"a"), (make_zxid(1, 2), b"b")])
    peer, handshake = _synchronising(durable, epoch=5)
    assert peer.last_delivered_zxid == make_zxid(1, 2)
    messages: list[Message] = {
        "a DIFF from a zxid we do not end at": [Diff(handshake=handshake, zxid=make_zxid(1, 1))],
        "a TRUNC to a zxid we do not hold": [Trunc(handshake=handshake, zxid=make_zxid(0, 7))],
        "a TRUNC below what we applied": [Trunc(handshake=handshake, zxid=make_zxid(1, 1))],
        "a TRUNC past our log": [Trunc(handshake=handshake, zxid=make_zxid(1, 9))],
        "a SNAP of an epoch we never accepted": [Snap(handshake=handshake, zxid=make_zxid(9, 1))],
        "entries of an epoch we never accepted": [
            Diff(handshake=handshake, zxid=make_zxid(1, 2)),
            SyncEntries(handshake=handshake, previous_zxid=make_zxid(1, 2), zxid=make_zxid(7, 1), txns=(b"x",)),
        ],
    }[wrong]
    for message in messages:
        peer.step(envelope(1, 2, message))
    out = peer.take_output()
    assert peer.role is Role.LOOKING, wrong
    assert not any(isinstance(record, TruncateRecord | LogEntry | SnapshotRecord) for record in out.persist)
