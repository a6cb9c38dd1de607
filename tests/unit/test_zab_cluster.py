"""Whole ensembles of real Peers on an instant, ordered, deterministic in-test network."""

from __future__ import annotations

import pytest

from coord.zab import Diff, Role, Snap, Trunc, make_zxid

from .zab_support import Cluster, MemoryDurable


def _messages_to(cluster: Cluster, target: int, kind: type) -> list:
    return [e.message for e in cluster.sent if e.target == target and isinstance(e.message, kind)]


def _durable_with(accepted: int, current: int, *zxids: int) -> MemoryDurable:
    return MemoryDurable(
        accepted_epoch=accepted, current_epoch=current, log=[(zxid, b"old %d" % zxid) for zxid in zxids]
    )


@pytest.mark.parametrize("size", [1, 3, 5])
def test_fresh_ensemble_elects_the_highest_id_and_commits_everywhere(size: int) -> None:
    cluster = Cluster(size)
    leader = cluster.settle()
    assert leader == size, "equal epochs and zxids: the highest id wins"
    zxids = cluster.propose(b"a", b"b", b"c")
    assert zxids == [make_zxid(1, 1), make_zxid(1, 2), make_zxid(1, 3)]
    cluster.tick(2)  # the commit point reaches every follower (COMMIT or PING)
    for node in cluster.nodes.values():
        assert node.app.entries == [(zxid, txn) for zxid, txn in zip(zxids, (b"a", b"b", b"c"), strict=True)]
        assert node.roles[-1] == ((Role.LEADING if node.server_id == leader else Role.FOLLOWING), leader, 1)


def test_election_prefers_current_epoch_over_longer_log() -> None:
    durables = {
        1: _durable_with(2, 1, make_zxid(1, 1), make_zxid(1, 2), make_zxid(1, 3)),  # longer log, older epoch
        2: _durable_with(2, 2, make_zxid(1, 1)),  # acknowledged epoch 2's NEWLEADER
        3: _durable_with(2, 1, make_zxid(1, 1)),
    }
    cluster = Cluster(3, durables=durables)
    assert cluster.settle() == 2
    cluster.tick(2)
    for node in cluster.nodes.values():
        assert node.app.entries == [(make_zxid(1, 1), b"old %d" % make_zxid(1, 1))]
        assert node.peer.epoch == 3
    # Server 1 replayed (1, 2) and (1, 3) into its application at start-up: a TRUNC
    # cannot take them back out, so it gets the leader's state instead.
    [snap] = _messages_to(cluster, 1, Snap)
    assert snap.zxid == make_zxid(1, 1) and _messages_to(cluster, 1, Trunc) == []


def test_election_prefers_longer_log_within_an_epoch() -> None:
    durables = {
        1: _durable_with(1, 1, make_zxid(1, 1), make_zxid(1, 2)),
        2: _durable_with(1, 1, make_zxid(1, 1)),
        3: _durable_with(1, 1, make_zxid(1, 1)),
    }
    cluster = Cluster(3, durables=durables)
    assert cluster.settle() == 1
    cluster.tick(2)
    for node in cluster.nodes.values():
        assert node.app.entries == [
            (make_zxid(1, 1), b"old %d" % make_zxid(1, 1)),
            (make_zxid(1, 2), b"old %d" % make_zxid(1, 2)),
        ]


def test_killed_leader_is_replaced_and_histories_agree() -> None:
    cluster = Cluster(3)
    first = cluster.settle()
    cluster.propose(b"a", b"b")
    cluster.tick(2)
    cluster.kill(first)
    second = cluster.settle()
    assert second != first and cluster.nodes[second].peer.epoch == 2
    cluster.propose(b"c")
    cluster.tick(2)
    cluster.restart(first)  # from its durable state only
    assert cluster.settle() == second, "the restarted server joins the running leader"
    cluster.tick(2)
    histories = {tuple(node.durable.history()) for node in cluster.nodes.values()}
    assert histories == {(make_zxid(1, 1), make_zxid(1, 2), make_zxid(2, 1))}
    assert len({tuple(node.app.entries) for node in cluster.nodes.values()}) == 1


def test_restarted_follower_catches_up_by_diff() -> None:
    cluster = Cluster(3)
    leader = cluster.settle()
    follower = 1
    cluster.propose(b"a")
    cluster.tick(2)
    cluster.kill(follower)
    cluster.propose(b"b", b"c")
    cluster.sent.clear()
    cluster.restart(follower)
    cluster.settle()
    cluster.tick(2)
    [diff] = _messages_to(cluster, follower, Diff)
    assert diff.zxid == make_zxid(1, 1)
    assert _messages_to(cluster, follower, Snap) == [] and _messages_to(cluster, follower, Trunc) == []
    assert cluster.nodes[follower].app.entries == cluster.nodes[leader].app.entries
    assert [zxid for zxid, _ in cluster.nodes[follower].app.entries] == [make_zxid(1, n) for n in (1, 2, 3)]


def test_lagging_follower_gets_snap_when_leader_log_is_purged() -> None:
    cluster = Cluster(3)
    leader = cluster.settle()
    follower = 1
    cluster.kill(follower)
    cluster.propose(*(b"txn %d" % n for n in range(5)))
    cluster.tick(2)
    cluster.nodes[leader].durable.purge_through(make_zxid(1, 4))
    cluster.sent.clear()
    cluster.restart(follower)
    cluster.settle()
    cluster.tick(2)
    [snap] = _messages_to(cluster, follower, Snap)
    assert snap.zxid == make_zxid(1, 5)
    node = cluster.nodes[follower]
    assert node.app.entries == cluster.nodes[leader].app.entries
    assert node.durable.snapshot_zxid == make_zxid(1, 5) and node.durable.log == []
    cluster.propose(b"after")
    cluster.tick(2)
    assert node.app.entries[-1] == (make_zxid(1, 6), b"after")


def test_follower_holding_an_uncommitted_proposal_of_a_dead_leader_is_truncated() -> None:
    cluster = Cluster(5)
    old_leader = cluster.settle()
    cluster.propose(b"committed")
    cluster.tick(2)
    holder = 4
    # Only `holder` hears the next proposal, and its ACK never arrives: not committed.
    for server in cluster.voters:
        if server != holder:
            cluster.cut.add((old_leader, server))
    cluster.cut.add((holder, old_leader))
    [lost] = cluster.propose(b"never committed")
    assert cluster.nodes[holder].durable.history()[-1] == lost
    cluster.kill(old_leader)
    cluster.heal()
    cluster.isolate(holder)  # it would win the election with its longer log (legitimately)
    new_leader = cluster.settle(ignore=(holder,))
    assert new_leader not in (old_leader, holder)
    cluster.propose(b"new epoch")
    cluster.heal()
    cluster.sent.clear()
    cluster.tick(12)  # the holder gives up on its silent leader and rejoins
    cluster.settle()
    cluster.tick(2)
    [trunc] = _messages_to(cluster, holder, Trunc)
    assert trunc.zxid == make_zxid(1, 1), "numerically inside the new leader's range, yet not in its history"
    live = [node for node in cluster.nodes.values() if node.alive]
    assert {tuple(node.durable.history()) for node in live} == {(make_zxid(1, 1), make_zxid(2, 1))}
    assert all(lost not in dict(node.app.entries) for node in cluster.nodes.values())
    cluster.check_agreement()


def test_partitioned_leader_steps_down_and_rejoins_as_follower() -> None:
    cluster = Cluster(3)
    old_leader = cluster.settle()
    cluster.propose(b"a")
    cluster.tick(2)
    cluster.isolate(old_leader)
    [orphan] = cluster.propose(b"only on the old leader")
    cluster.tick(5)
    assert cluster.nodes[old_leader].peer.role is not Role.LEADING, "no quorum within syncLimit"
    new_leader = cluster.settle(ignore=(old_leader,))
    assert new_leader != old_leader
    cluster.propose(b"b")
    cluster.heal()
    cluster.settle()
    cluster.tick(2)
    assert cluster.nodes[old_leader].peer.role is Role.FOLLOWING
    for node in cluster.nodes.values():
        assert [txn for _, txn in node.app.entries] == [b"a", b"b"]
        assert orphan not in node.durable.history()


def test_minority_cannot_commit() -> None:
    cluster = Cluster(3)
    leader = cluster.settle()
    followers = [server for server in cluster.voters if server != leader]
    for follower in followers:
        cluster.kill(follower)
    [zxid] = cluster.propose(b"x")
    assert cluster.nodes[leader].peer.last_committed_zxid < zxid
    assert cluster.nodes[leader].app.entries == []


def test_standalone_commits_once_persisted() -> None:
    cluster = Cluster(1)
    assert cluster.settle() == 1
    node = cluster.nodes[1]
    node.disk_stalled = True
    [zxid] = cluster.propose(b"x")
    assert node.app.entries == [], "not durable yet"
    node.disk_stalled = False
    cluster.tick()
    assert node.app.entries == [(zxid, b"x")]
    cluster.kill(1)
    cluster.restart(1)
    cluster.settle()
    assert node.app.entries == [(zxid, b"x")] and cluster.nodes[1].peer.epoch == 2


def test_barrier_round_confirms_through_followers() -> None:
    cluster = Cluster(3)
    leader = cluster.nodes[cluster.settle()]
    barrier = leader.peer.barrier()
    assert leader.barriers == []
    cluster.pump()  # the leader's ping goes out with its output; the followers answer
    assert leader.barriers == [barrier]
