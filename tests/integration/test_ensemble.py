"""A real 3-node ensemble in-process: election, replication, failover, catch-up.

Real servers on loopback, real LMDB in temp dirs, real ZAB over real sockets.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import trio

import client
from coord.testing import open_ensemble
from tests.polling import wait_until


def connect_to(ensemble, server_id: int):  # type: ignore[no-untyped-def]
    return client.connect(ensemble.server(server_id).connect_string, session_timeout=10.0)


async def test_elects_one_leader_and_replicates_writes_made_on_any_server(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_ensemble(3, data_dir=tmp_path) as ensemble:
            leader = await ensemble.wait_for_leader()
            roles = sorted(server.role for server in ensemble.servers.values() if server)
            assert roles == ["follower", "follower", "leader"]
            for server_id in (1, 2, 3):
                async with connect_to(ensemble, server_id) as zk:
                    await zk.create(f"/from-{server_id}", b"%d" % server_id)
            # Every server holds every write, in the same order.
            await wait_until(lambda: len({s.tree.last_zxid for s in ensemble.servers.values() if s}) == 1, timeout=20)
            digests = {server.tree.digest() for server in ensemble.servers.values() if server}
            assert len(digests) == 1
            for server_id in (1, 2, 3):
                async with connect_to(ensemble, server_id) as zk:
                    await zk.sync("/")
                    assert sorted(await zk.get_children("/")) == ["coord", "from-1", "from-2", "from-3"]
            assert ensemble.leader_id() == leader


async def test_killing_the_leader_elects_a_new_one_and_writes_resume(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with open_ensemble(3, data_dir=tmp_path) as ensemble:
            old = await ensemble.wait_for_leader()
            async with client.connect(ensemble.connect_string) as zk:
                await zk.create("/before", b"1")
            await ensemble.kill(old)
            new = await ensemble.wait_for_leader()
            assert new != old
            survivors = [server_id for server_id in (1, 2, 3) if server_id != old]
            async with connect_to(ensemble, survivors[0]) as zk:
                assert (await zk.get("/before"))[0] == b"1"  # the acknowledged write survived
                await zk.create("/after", b"2")
            # The old leader comes back as a follower and catches up (DIFF).
            await ensemble.restart(old)
            await ensemble.wait_for_leader()
            async with connect_to(ensemble, old) as zk:
                await zk.sync("/")
                assert (await zk.get("/after"))[0] == b"2"
            await wait_until(lambda: len({s.tree.digest() for s in ensemble.servers.values() if s}) == 1, timeout=20)


async def test_client_keeps_its_session_and_ephemerals_across_its_servers_death(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with open_ensemble(3, data_dir=tmp_path) as ensemble:
            leader = await ensemble.wait_for_leader()
            follower = next(server_id for server_id in (1, 2, 3) if server_id != leader)
            others = ",".join(ensemble.server(i).connect_string for i in (1, 2, 3) if i != follower)
            connect_string = ensemble.server(follower).connect_string + "," + others
            async with client.connect(connect_string, session_timeout=10.0) as zk:
                await wait_until(lambda: zk.server_address is not None, timeout=20)
                session_id = zk.session_id
                await zk.create("/eph", b"mine", ephemeral=True)
                watch = client.Watch()
                await zk.get("/eph", watch=watch)
                assert zk.server_address is not None
                await ensemble.kill(ensemble.server_id_at(zk.server_address))
                # The client fails over within its session timeout and keeps everything.
                assert (await client.Retry(max_tries=50, delay=0.05, max_delay=0.5)(zk.get, "/eph"))[0] == b"mine"
                assert zk.session_id == session_id
                async with client.connect(others) as other:
                    await client.Retry(max_tries=50, delay=0.05, max_delay=0.5)(other.set, "/eph", b"changed")
                event = await watch.wait()
                assert event.type is client.EventType.NODE_DATA_CHANGED


async def test_follower_back_from_a_long_absence_catches_up_by_snapshot(tmp_path: Path) -> None:
    # Frequent snapshots, one kept: the leader's log soon no longer reaches back to
    # where the absent follower stopped, so it must send a snapshot (SNAP).
    with trio.fail_after(120):
        async with open_ensemble(3, data_dir=tmp_path, snapshot_every_txns=20, snapshots_retained=1) as ensemble:
            leader = await ensemble.wait_for_leader()
            absent = next(server_id for server_id in (1, 2, 3) if server_id != leader)
            async with connect_to(ensemble, leader) as zk:
                await zk.create("/early", b"e")
            await wait_until(lambda: ensemble.server(absent).tree.get_node("/early") is not None, timeout=20)
            stopped_at = ensemble.server(absent).tree.last_zxid
            await ensemble.kill(absent)
            async with connect_to(ensemble, leader) as zk:
                for n in range(120):
                    await zk.create(f"/while-away-{n:03d}", b"%d" % n)
            leader_log = ensemble.server(leader).status()["log"]
            assert leader_log["first_zxid"] > stopped_at + 1 or leader_log["base_zxid"] > stopped_at
            await ensemble.restart(absent)
            await ensemble.wait_for_leader()
            returned = ensemble.server(absent)
            await wait_until(lambda: returned.tree.get_node("/while-away-119") is not None, timeout=20)
            assert any(zxid > stopped_at for zxid, _path in returned._snapshots.list())  # it got a snapshot
            await wait_until(lambda: len({s.tree.digest() for s in ensemble.servers.values() if s}) == 1, timeout=20)


async def test_uncommitted_proposal_of_a_cut_off_leader_is_truncated(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with open_ensemble(3, data_dir=tmp_path) as ensemble:
            old = await ensemble.wait_for_leader()
            async with connect_to(ensemble, old) as zk:
                await zk.create("/committed", b"c")
                # Cut the leader off from its followers only: its client can still ask
                # it to write, it logs the proposal, but no quorum will ever ack it.
                ensemble.server(old).peer_gate.isolate()
                async with trio.open_nursery() as nursery:

                    async def doomed_write() -> None:
                        with contextlib.suppress(
                            client.ConnectionLossError, client.NotLeaderError, client.SessionExpiredError
                        ):
                            await zk.create("/never", b"n")

                    nursery.start_soon(doomed_write)
                    await wait_until(
                        lambda: ensemble.server(old).zab.last_durable_zxid > ensemble.server(old).tree.last_zxid,
                        timeout=20,
                    )
                    uncommitted = ensemble.server(old).zab.last_durable_zxid
                    await ensemble.kill(old)
                    nursery.cancel_scope.cancel()
            new = await ensemble.wait_for_leader()
            assert new != old
            async with connect_to(ensemble, new) as zk:
                await zk.create("/new-epoch", b"x")
            await ensemble.restart(old)
            await ensemble.wait_for_leader()
            returned = ensemble.server(old)
            await wait_until(lambda: returned.tree.get_node("/new-epoch") is not None, timeout=20)
            # The dead leader's proposal was truncated from its log, never applied anywhere.
            assert returned._log.get(uncommitted) is None
            for server in ensemble.servers.values():
                assert server is not None and server.tree.get_node("/never") is None
            await wait_until(lambda: len({s.tree.digest() for s in ensemble.servers.values() if s}) == 1, timeout=20)
