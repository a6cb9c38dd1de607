"""The lock recipes against real servers: exclusion, fairness, no herd, loss, cancellation.

Every test is bounded by ``trio.fail_after`` and waits on events or polls a condition
against a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import itertools
import signal
from pathlib import Path

import pytest
import trio

import client
from coord.testing import open_ensemble
from recipes import (
    LEASE_FRACTION,
    Lock,
    LockLostError,
    LockTimeoutError,
    ReadWriteLock,
    Semaphore,
)
from recipes._guard import lease_of
from tests.integration.test_recipes_helpers import Switchboard, avoid_first, connect, start_holder
from tests.polling import wait_until

PATH = "/locks/resource"


async def children(zk: client.Client, path: str = PATH) -> list[str]:
    try:
        return await zk.get_children(path)
    except client.NoNodeError:
        return []


def assert_disjoint(intervals: list[tuple[int, int]]) -> None:
    """(start, end) stamps of one monotonic counter: no two may overlap."""
    ordered = sorted(intervals)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert end < start, f"two holders at once: {ordered}"


async def test_lock_excludes_under_contention(tmp_path: Path) -> None:
    clock = itertools.count()
    intervals: list[tuple[int, int]] = []
    tokens: list[int] = []
    holders = 0

    async def contender(index: int, ensemble_string: str) -> None:
        nonlocal holders
        async with connect(ensemble_string) as zk:
            lock = Lock(zk, PATH, f"c{index}")
            for _ in range(5):
                async with lock:
                    start = next(clock)
                    holders += 1
                    assert holders == 1
                    assert lock.token is not None
                    tokens.append(lock.token)
                    await zk.get(PATH)  # give the others every chance to interleave
                    await trio.sleep(0)
                    holders -= 1
                    intervals.append((start, next(clock)))

    with trio.fail_after(60):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with trio.open_nursery() as nursery:
                for index in range(6):
                    nursery.start_soon(contender, index, ensemble.connect_string)
            async with connect(ensemble) as zk:
                assert await children(zk) == []
    assert len(intervals) == 30
    assert_disjoint(intervals)
    assert tokens == sorted(tokens) and len(set(tokens)) == 30  # the fencing token only grows


async def test_lock_is_granted_in_fifo_order_and_wakes_one_waiter_per_release(tmp_path: Path) -> None:
    waiters = 6
    granted: list[int] = []
    locks: list[Lock] = []
    release_next = [trio.Event() for _ in range(waiters)]

    async def waiter(servers: str, index: int, *, task_status: trio.TaskStatus[None]) -> None:
        async with connect(servers) as zk:
            lock = Lock(zk, PATH, f"w{index}")
            locks.append(lock)
            task_status.started()
            await lock.acquire()
            granted.append(index)
            await release_next[index].wait()
            await lock.release()

    with trio.fail_after(60):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk_holder:
                holder = Lock(zk_holder, PATH, "holder")
                assert await holder.acquire()
                async with trio.open_nursery() as nursery:
                    for index in range(waiters):
                        await nursery.start(waiter, ensemble.connect_string, index)
                        # The next waiter starts only once this one is queued.
                        await wait_until(lambda n=index: _count(zk_holder, n + 2))
                    assert await holder.contenders() == ["holder"] + [f"w{i}" for i in range(waiters)]
                    # Each waiter watches its predecessor and nothing else.
                    assert ensemble.server(1).status()["watches"] == waiters

                    await holder.release()
                    for index in range(waiters):
                        await wait_until(lambda n=index: len(granted) == n + 1)
                        # Every release so far woke exactly one waiter: the next in line.
                        assert sum(lock.wakeups for lock in locks) == index + 1
                        assert [lock.wakeups for lock in locks[index + 1 :]] == [0] * (waiters - index - 1)
                        release_next[index].set()
    assert granted == list(range(waiters))


async def _count(zk: client.Client, expected: int) -> bool:
    return len(await children(zk)) == expected


async def test_nonblocking_and_timed_out_acquires_leave_no_node(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk_a, connect(ensemble) as zk_b:
                holder = Lock(zk_a, PATH, "a")
                async with holder:
                    other = Lock(zk_b, PATH, "b")
                    assert await other.acquire(blocking=False) is False
                    assert len(await children(zk_b)) == 1
                    with pytest.raises(LockTimeoutError):
                        await other.acquire(timeout=0.2)
                    assert len(await children(zk_b)) == 1
                    with trio.move_on_after(0.2):
                        await other.acquire()
                    assert len(await children(zk_b)) == 1
                    with pytest.raises(LockTimeoutError):
                        async with other.hold(blocking=False):
                            pass  # pragma: no cover
                    assert not other.is_acquired and other.node is None
                    with pytest.raises(RuntimeError):
                        await holder.acquire()  # not re-entrant
                assert await children(zk_b) == []
                async with other:  # usable again after the failed attempts
                    assert await other.contenders() == ["b"]


async def test_a_lost_create_reply_is_found_again_and_a_cancelled_one_is_deleted(tmp_path: Path) -> None:
    """The create reaches the server but its reply is lost in a connection drop: the
    lock finds its node by its guid instead of queueing twice; and if the acquire is
    cancelled at that moment, the node is still deleted."""
    with trio.fail_after(40):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            board = Switchboard()
            async with (
                connect(ensemble, session_timeout=5.0, open_stream=board.open_stream) as zk,
                connect(ensemble) as observer,
            ):
                await zk.ensure_path(PATH)
                lock = Lock(zk, PATH, "gated")
                board.hold()  # the create goes out, its reply is kept back
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lock.acquire)
                    await wait_until(lambda: _count(observer, 1))
                    board.cut()  # the reply is lost: ConnectionLossError, reconnect
                    board.release()
                await wait_until(lambda: lock.is_acquired)
                assert [lock.node.rsplit("/", 1)[1]] == await children(observer)  # type: ignore[union-attr]
                await lock.release()
                assert await children(observer) == []

                # Again, but the acquire is cancelled while the reply is held back.
                board.hold()
                scope = trio.CancelScope()

                async def cancel_once_created() -> None:
                    await wait_until(lambda: _count(observer, 1))
                    scope.cancel()  # the acquire now cleans up (shielded) ...
                    # ... its first request is out (behind the cancelled create's), the reply held back ...
                    await wait_until(lambda: len(zk._core.pending) >= 2)
                    board.cut()  # ... across a connection drop
                    board.release()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_once_created)
                    with scope:
                        await lock.acquire()
                assert scope.cancelled_caught
                assert not lock.is_acquired
                assert await children(observer) == []


async def test_session_expiry_cancels_the_holder_and_passes_the_lock_on(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk_a, connect(ensemble) as zk_b, trio.open_nursery() as nursery:
                holder = Lock(zk_a, PATH, "a")
                waiter = Lock(zk_b, PATH, "b")
                reached_the_end = False
                with pytest.raises(LockLostError, match="session"):
                    async with holder:
                        first_token = holder.token
                        nursery.start_soon(waiter.acquire)
                        await wait_until(lambda: _count(zk_b, 2))
                        await ensemble.expire_session(zk_a.session_id)
                        await trio.sleep_forever()  # cancelled by the guard
                        reached_the_end = True  # pragma: no cover
                assert not reached_the_end
                assert not holder.is_acquired
                await wait_until(lambda: waiter.is_acquired)
                assert waiter.token is not None and first_token is not None and waiter.token > first_token
                await waiter.release()


async def test_release_reports_a_lock_whose_node_vanished(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk, connect(ensemble) as admin:
                lock = Lock(zk, PATH, "a")
                await lock.acquire()
                await admin.delete(lock.node)  # type: ignore[arg-type]
                with pytest.raises(LockLostError, match="already deleted"):
                    await lock.release()
                # Released inside its own block: the block runs on, unguarded.
                async with lock:
                    assert await lock.release()
                    await trio.sleep(0.05)
                    await zk.sync("/")
                    ran_on = True
                assert ran_on and await zk.get_children(PATH) == []
                # Guarded: a deleted node cancels the block.
                with pytest.raises(LockLostError, match="deleted"):
                    async with lock:
                        await admin.delete(lock.node)  # type: ignore[arg-type]
                        await trio.sleep_forever()


async def test_holder_process_killed_frees_the_lock_after_its_session_timeout(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with trio.open_nursery() as nursery, connect(ensemble) as zk:
                process = await start_holder(nursery, ensemble.connect_string, "lock", PATH, session_timeout=1.0)
                lock = Lock(zk, PATH, "survivor")
                assert await lock.acquire(blocking=False) is False
                killed_at = trio.current_time()
                process.send_signal(signal.SIGKILL)
                assert await lock.acquire(timeout=10)
                assert trio.current_time() - killed_at < 5  # the session timeout plus a tick or two
                await lock.release()


async def test_the_guard_ends_the_hold_before_a_partitioned_session_can_expire(tmp_path: Path) -> None:
    """A silent partition: nothing arrives, not even an EOF. The block must be
    cancelled 3/4 of the session timeout after the last confirmed write, while the
    session (so the lock) is still certainly alive on the server."""
    timeout = 2.0
    with trio.fail_after(30):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            board = Switchboard()
            async with (
                connect(ensemble, session_timeout=timeout, open_stream=board.open_stream) as zk,
                connect(ensemble) as observer,
            ):
                lock = Lock(zk, PATH, "partitioned")
                node_alive_at_loss = None
                with pytest.raises(LockLostError, match="no write confirmed"):
                    async with lock:
                        node = lock.node
                        assert node is not None
                        board.hold()
                        board.refusing = True
                        try:
                            await trio.sleep_forever()
                        finally:
                            lost_at = trio.current_time()
                            with trio.CancelScope(shield=True):
                                node_alive_at_loss = await observer.exists(node) is not None
                confirmed_at = lease_of(zk).confirmed_at
                assert lost_at - confirmed_at == pytest.approx(timeout * LEASE_FRACTION, abs=0.15)
                assert node_alive_at_loss  # given up while the lock was still ours: nobody else had it
                await wait_until(lambda: _count(observer, 0), timeout=10)  # and then the session expires


async def test_holders_keep_their_lock_when_their_server_dies(tmp_path: Path) -> None:
    """Three servers; the holder's server is killed (the leader or not). The holder
    keeps the lock: it reconnects elsewhere well within its lease, and its heartbeats
    go on. The waiter still gets the lock when the holder releases."""
    with trio.fail_after(60):
        async with open_ensemble(3, data_dir=tmp_path) as ensemble:
            # The holder starts on a follower: killing the leader too would also test
            # leader election, whose liveness is not what this test is about.
            leader = ensemble.server(await ensemble.wait_for_leader()).connect_string
            async with (
                connect(ensemble, session_timeout=8.0, open_stream=avoid_first(leader)) as zk_a,
                connect(ensemble, session_timeout=8.0) as zk_b,
                trio.open_nursery() as nursery,
            ):
                holder = Lock(zk_a, PATH, "a")
                waiter = Lock(zk_b, PATH, "b")
                async with holder:
                    nursery.start_soon(waiter.acquire)
                    await wait_until(lambda: _count(zk_a, 2))
                    address = zk_a.server_address
                    assert address is not None
                    await ensemble.kill(ensemble.server_id_at(address))
                    await ensemble.wait_for_leader()
                    await wait_until(lambda: zk_a.connected and zk_a.server_address != address)
                    heartbeats = lease_of(zk_a).heartbeats
                    await wait_until(lambda: lease_of(zk_a).heartbeats > heartbeats, timeout=10)  # the lease goes on
                    assert holder.is_acquired and not waiter.is_acquired
                    token = holder.token
                await wait_until(lambda: waiter.is_acquired, timeout=30)
                assert waiter.token is not None and token is not None and waiter.token > token
                await waiter.release()


async def test_read_write_lock_shares_reads_and_excludes_writes(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk1, connect(ensemble) as zk2, connect(ensemble) as zk3:
                reader1 = ReadWriteLock(zk1, PATH, "r1").read_lock
                reader2 = ReadWriteLock(zk2, PATH, "r2").read_lock
                writer = ReadWriteLock(zk3, PATH, "w").write_lock
                late_reader = ReadWriteLock(zk2, PATH, "r3").read_lock
                assert await reader1.acquire(blocking=False)
                assert await reader2.acquire(blocking=False)  # readers share
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(writer.acquire)
                    await wait_until(lambda: _count(zk1, 3))
                    nursery.start_soon(late_reader.acquire)  # queued behind the writer
                    await wait_until(lambda: _count(zk1, 4))
                    await reader1.release()
                    assert not writer.is_acquired
                    await reader2.release()
                    await wait_until(lambda: writer.is_acquired)
                    assert not late_reader.is_acquired
                    assert await writer.contenders() == ["w", "r3"]
                    await writer.release()
                    await wait_until(lambda: late_reader.is_acquired)
                await late_reader.release()


async def test_semaphore_admits_at_most_max_leases(tmp_path: Path) -> None:
    clock = itertools.count()
    inside = 0
    most_inside = 0
    intervals = []

    async def user(servers: str, index: int) -> None:
        nonlocal inside, most_inside
        async with connect(servers) as zk:
            semaphore = Semaphore(zk, "/sem", f"u{index}", max_leases=2)
            for _ in range(3):
                async with semaphore:
                    inside += 1
                    most_inside = max(most_inside, inside)
                    start = next(clock)
                    assert len(await semaphore.lease_holders()) <= 2
                    await trio.sleep(0.01)
                    inside -= 1
                    intervals.append((start, next(clock)))

    with trio.fail_after(60):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with trio.open_nursery() as nursery:
                for index in range(5):
                    nursery.start_soon(user, ensemble.connect_string, index)
            async with connect(ensemble) as zk:
                assert await zk.get_children("/sem/leases") == []
                with pytest.raises(ValueError, match="max_leases"):
                    await Semaphore(zk, "/sem", max_leases=3).acquire()
                first = Semaphore(zk, "/sem", "first", max_leases=2)
                second = Semaphore(zk, "/sem", "second", max_leases=2)
                third = Semaphore(zk, "/sem", "third", max_leases=2)
                assert await first.acquire(blocking=False)
                assert await second.acquire(blocking=False)
                assert sorted(await first.lease_holders()) == ["first", "second"]
                assert await third.acquire(blocking=False) is False
                with pytest.raises(LockTimeoutError):
                    await third.acquire(timeout=0.2)
                assert await first.release()
                async with third:
                    assert sorted(await third.lease_holders()) == ["second", "third"]
                assert await second.release()
                assert await zk.get_children("/sem/leases") == []
                assert await zk.get_children("/sem/lock") == []
    assert len(intervals) == 15
    assert most_inside <= 2
