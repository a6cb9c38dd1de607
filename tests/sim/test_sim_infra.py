"""Tests of the simulator itself: disk, network and checkers, driven by the toy core."""

from __future__ import annotations

import hashlib
import random

import pytest

from coord.zab.types import Envelope, EpochRecord, LogEntry, Role, SnapshotChunkRecord, SnapshotRecord, TruncateRecord
from coord.zxid import make_zxid
from tests.sim.checkers import Checker
from tests.sim.disk import FakeDisk, decode_state, encode_state
from tests.sim.network import Network
from tests.sim.sim import InvariantError, SimOptions, Simulation
from tests.sim.toy import toy_factory


def z(epoch: int, counter: int) -> int:
    return make_zxid(epoch, counter)


# --- disk ----------------------------------------------------------------------------


def test_disk_loses_what_was_not_flushed() -> None:
    disk = FakeDisk(1)
    disk.append([LogEntry(seq=1, zxid=z(1, 1), txn=b"a"), LogEntry(seq=2, zxid=z(1, 2), txn=b"b")])
    assert disk.last_zxid() == 0
    assert disk.flush(1) == (1, [])
    assert disk.last_zxid() == z(1, 1)
    disk.crash()
    assert disk.pending == []
    assert disk.entries_after(0) == [(z(1, 1), b"a")]


def test_disk_crash_can_keep_a_prefix() -> None:
    disk = FakeDisk(1)
    disk.append([LogEntry(seq=1, zxid=z(1, 1), txn=b"a"), EpochRecord(seq=2, accepted_epoch=2)])
    assert disk.crash(keep=2) == (2, [])
    assert disk.accepted_epoch == 2 and disk.last_zxid() == z(1, 1)


def test_disk_truncate_and_snapshot_report_what_they_remove() -> None:
    disk = FakeDisk(1)
    for counter in (1, 2, 3):
        disk.apply(LogEntry(seq=counter, zxid=z(1, counter), txn=b"t%d" % counter))
    assert disk.apply(TruncateRecord(seq=4, zxid=z(1, 1))) == [(z(1, 2), b"t2"), (z(1, 3), b"t3")]
    assert disk.contains(z(1, 1)) and not disk.contains(z(1, 2))
    state = [(z(1, 1), b"t1"), (z(2, 1), b"u1")]
    image = encode_state(state)
    assert disk.apply(SnapshotChunkRecord(seq=5, zxid=z(2, 1), offset=0, data=image[:5])) == []
    assert disk.apply(SnapshotChunkRecord(seq=6, zxid=z(2, 1), offset=5, data=image[5:])) == []
    assert disk.contains(z(1, 1)) and disk.entries_after(z(1, 1)) == [], "staged chunks change nothing"
    digest = hashlib.sha256(image).digest()
    removed = disk.apply(SnapshotRecord(seq=7, zxid=z(2, 1), size=len(image), digest=digest))
    assert removed == []  # t1 is covered by the snapshot
    assert disk.holds(z(1, 1), b"t1") and disk.holds(z(2, 1), b"u1") and not disk.holds(z(2, 1), b"x")
    assert disk.entries_after(0) is None  # purged
    assert disk.entries_after(z(2, 1)) == []
    assert disk.problems == []


def test_disk_refuses_a_snapshot_not_staged_whole_and_a_crash_discards_the_staging() -> None:
    image = encode_state([(z(1, 1), b"t1")])
    digest = hashlib.sha256(image).digest()
    disk = FakeDisk(1)
    disk.apply(SnapshotChunkRecord(seq=1, zxid=z(1, 1), offset=0, data=image[:3]))
    disk.apply(SnapshotRecord(seq=2, zxid=z(1, 1), size=len(image), digest=digest))
    assert disk.base_zxid == 0 and len(disk.problems) == 1, disk.problems
    disk = FakeDisk(1)
    disk.append([SnapshotChunkRecord(seq=1, zxid=z(1, 1), offset=0, data=image)])
    disk.crash(keep=1)
    disk.apply(SnapshotRecord(seq=2, zxid=z(1, 1), size=len(image), digest=digest))
    assert disk.base_zxid == 0 and len(disk.problems) == 1, disk.problems


def test_disk_reports_gaps_and_epochs_going_back() -> None:
    disk = FakeDisk(1)
    disk.apply(LogEntry(seq=1, zxid=z(1, 1), txn=b"a"))
    disk.apply(LogEntry(seq=2, zxid=z(1, 3), txn=b"c"))
    disk.apply(EpochRecord(seq=3, accepted_epoch=2, current_epoch=2))
    disk.apply(EpochRecord(seq=4, accepted_epoch=1))
    assert len(disk.problems) == 3, disk.problems


def test_disk_purge_keeps_the_history() -> None:
    disk = FakeDisk(1)
    for counter in (1, 2, 3):
        disk.apply(LogEntry(seq=counter, zxid=z(1, counter), txn=b"t%d" % counter))
    disk.purge([(z(1, 1), b"t1"), (z(1, 2), b"t2")])
    assert disk.base_zxid == z(1, 2) and disk.log == [(z(1, 3), b"t3")]
    assert all(disk.contains(z(1, counter)) for counter in (1, 2, 3))
    assert disk.entries_after(z(1, 1)) is None and disk.entries_after(z(1, 2)) == [(z(1, 3), b"t3")]


def test_state_encoding_round_trips() -> None:
    state = [(z(1, 1), b"a"), (z(2, 7), b"")]
    assert decode_state(encode_state(state)) == state
    assert decode_state(encode_state([])) == []
    with pytest.raises(ValueError):
        decode_state(b"\xa0")  # a map, not a list


# --- network ----------------------------------------------------------------------------


def test_link_is_fifo_and_loses_messages_at_a_break() -> None:
    network = Network([1, 2])
    first = network.send(Envelope(source=1, target=2, message="a"), now=0, delay=50, incarnation=1)
    second = network.send(Envelope(source=1, target=2, message="b"), now=1, delay=1, incarnation=1)
    assert first is not None and second is not None
    assert network.arrival(second) >= 50  # never overtakes
    assert network.take(first) and network.take(second)
    third = network.send(Envelope(source=1, target=2, message="c"), now=2, delay=1, incarnation=1)
    assert third is not None
    assert network.break_link(1, 2, random.Random(0), stale_prob=0.0) == []
    assert not network.take(third)
    assert network.send(Envelope(source=1, target=2, message="d"), now=3, delay=1, incarnation=1) is None
    network.restore_link(1, 2)
    network.blocked = {(1, 2)}
    assert network.send(Envelope(source=1, target=2, message="e"), now=3, delay=1, incarnation=1) is None
    assert network.send(Envelope(source=2, target=1, message="f"), now=3, delay=1, incarnation=1) is not None


def test_stale_messages_survive_a_break() -> None:
    network = Network([1, 2])
    message = network.send(Envelope(source=1, target=2, message="a"), now=0, delay=5, incarnation=1)
    assert network.break_link(1, 2, random.Random(0), stale_prob=1.0) == [message]
    assert message is not None and network.take(message)


# --- checkers -------------------------------------------------------------------------------


def test_checker_catches_diverging_delivery_and_missing_quorum() -> None:
    disks = {sid: FakeDisk(sid) for sid in (1, 2, 3)}
    checker = Checker(disks, quorum=2)
    for sid in (1, 2):
        disks[sid].apply(LogEntry(seq=1, zxid=z(1, 1), txn=b"a"))
    disks[3].apply(LogEntry(seq=1, zxid=z(1, 1), txn=b"b"))
    checker.on_propose(1, 1, b"a", z(1, 1))
    checker.on_deliver(1, 1, [], z(1, 1), b"a")
    assert checker.violations == []
    checker.on_deliver(3, 1, [], z(1, 1), b"b")  # different txn at the same position, never proposed
    assert len(checker.violations) == 2
    checker.violations.clear()
    removed = disks[2].apply(TruncateRecord(seq=2, zxid=0))
    checker.on_removed(2, removed)
    assert any("invariant 3" in violation for violation in checker.violations)


def test_checker_catches_two_leaders_in_one_epoch() -> None:
    disks = {sid: FakeDisk(sid) for sid in (1, 2, 3)}
    for disk in disks.values():
        disk.apply(EpochRecord(seq=1, accepted_epoch=4, current_epoch=4))
    checker = Checker(disks, quorum=2)
    checker.on_ready(1, Role.LEADING, 1, 4)
    checker.on_ready(2, Role.FOLLOWING, 1, 4)
    assert checker.violations == []
    checker.on_ready(3, Role.LEADING, 3, 4)
    assert len(checker.violations) == 1 and "invariant 1" in checker.violations[0]


# --- the simulator with the toy core -----------------------------------------------------


def toy_options(seed: int, **overrides: object) -> SimOptions:
    return SimOptions(seed=seed, servers=3, fault_mean=0, **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(5))
def test_toy_broadcast_runs_clean(seed: int) -> None:
    sim = Simulation(toy_options(seed), toy_factory)
    sim.run(2_000)
    assert len(sim.checker.committed) > 10
    apps = {sid: server.app for sid, server in sim.servers.items()}
    sim.checker.full_check(apps)
    sim.check_invariants()


def test_toy_runs_replay_exactly() -> None:
    options = toy_options(7, delay_max=90, stale_prob=0.2, disk_max=120, partial_flush_prob=0.5)
    first = Simulation(options, toy_factory)
    first.run(1_000)
    second = Simulation(options, toy_factory)
    second.run(1_000)
    assert first.trace == second.trace
    third = Simulation(toy_options(8, delay_max=90), toy_factory)
    third.run(1_000)
    assert third.trace != first.trace


def test_toy_ack_before_fsync_is_caught() -> None:
    options = toy_options(1, disk_max=200, bugs=frozenset({"ack_before_fsync"}))
    sim = Simulation(options, toy_factory)
    with pytest.raises(InvariantError, match="invariant 3") as caught:
        sim.run(2_000)
    assert "--seed 1" in str(caught.value)
    assert "trace lines:" in str(caught.value)
    assert str(caught.value).endswith(sim.trace[-1])  # the trace tail is there
