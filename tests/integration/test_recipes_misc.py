"""Barriers, counter, queue, party and the watch iterators against a real server."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio
import trio.testing

import client
from coord.testing import open_ensemble
from recipes import Barrier, ChildrenWatch, Counter, DataWatch, DoubleBarrier, Party, Queue
from tests.integration.test_recipes_helpers import connect
from tests.polling import wait_until


async def test_barrier_holds_waiters_until_it_is_removed(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk, connect(ensemble) as other:
                barrier = Barrier(zk, "/barrier")
                assert await barrier.wait(timeout=0.1)  # not up: no wait
                await barrier.create()
                assert await Barrier(other, "/barrier").wait(timeout=0.1) is False
                passed = []
                async with trio.open_nursery() as nursery:

                    async def waiter(index: int) -> None:
                        await Barrier(other, "/barrier").wait()
                        passed.append(index)

                    for index in range(3):
                        nursery.start_soon(waiter, index)
                    await trio.testing.wait_all_tasks_blocked()
                    assert passed == []
                    assert await barrier.remove()
                assert sorted(passed) == [0, 1, 2]
                assert await barrier.remove() is False


async def test_double_barrier_enters_together_and_leaves_together(tmp_path: Path) -> None:
    clock = itertools.count()
    stamps: dict[str, dict[str, int]] = {}
    participants = 4

    async def participant(servers: str, index: int, delay_steps: int) -> None:
        name = f"p{index}"
        async with connect(servers) as zk:
            for _ in range(delay_steps):
                await zk.sync("/")  # arrive late, without sleeping
            stamps[name] = {"arrive": next(clock)}
            async with DoubleBarrier(zk, "/double", participants, name) as barrier:
                assert barrier.participating
                stamps[name]["entered"] = next(clock)
                for _ in range(index * 3):
                    await zk.sync("/")  # work of uneven length
                stamps[name]["leave"] = next(clock)
            stamps[name]["left"] = next(clock)

    with trio.fail_after(30):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            for _round in range(2):  # the path can be used again
                stamps.clear()
                async with trio.open_nursery() as nursery:
                    for index in range(participants):
                        nursery.start_soon(participant, ensemble.connect_string, index, 5 * index)
                assert min(s["entered"] for s in stamps.values()) > max(s["arrive"] for s in stamps.values())
                assert min(s["left"] for s in stamps.values()) > max(s["leave"] for s in stamps.values())
                async with connect(ensemble) as zk:
                    assert await zk.get_children("/double") == []


async def test_double_barrier_cancelled_enter_leaves_no_node(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk:
                barrier = DoubleBarrier(zk, "/double", 2)
                with trio.move_on_after(0.2):
                    await barrier.enter()
                assert not barrier.participating
                assert await zk.get_children("/double") == []
                with pytest.raises(ValueError):
                    DoubleBarrier(zk, "/double", 2, "ready")


async def test_counter_counts_every_concurrent_change_exactly_once(tmp_path: Path) -> None:
    async def adder(servers: str) -> None:
        async with connect(servers) as zk:
            counter = Counter(zk, "/counter")
            for _ in range(15):
                before = counter.post_value
                value = await counter.add(2)
                assert counter.post_value == value and counter.pre_value == value - 2
                assert before is None or value > before

    with trio.fail_after(30):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(adder, ensemble.connect_string)
            async with connect(ensemble) as zk:
                counter = Counter(zk, "/counter")
                assert await counter.get() == 120
                assert await counter.subtract(20) == 100
                floats = Counter(zk, "/floats", default=0.5)
                assert await floats.get() == 0.5
                assert await floats.add(1.25) == 1.75
                with pytest.raises(TypeError):
                    await counter.add("1")  # type: ignore[arg-type]


async def test_queue_is_fifo_by_priority_and_each_item_goes_to_one_consumer(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk:
                queue = Queue(zk, "/queue")
                assert await queue.get(block=False) is None
                assert await queue.get(timeout=0.1) is None
                await queue.put_all([b"a", b"b", b"c"])
                await queue.put(b"urgent", priority=1)
                assert await queue.length() == 4
                assert [await queue.get() for _ in range(4)] == [b"urgent", b"a", b"b", b"c"]

                items = [f"item-{index}".encode() for index in range(40)]
                taken: list[bytes] = []

                async def consumer(servers: str) -> None:
                    async with connect(servers) as consumer_zk:
                        consumer_queue = Queue(consumer_zk, "/queue")
                        while True:
                            item = await consumer_queue.get()
                            if item == b"stop":
                                return
                            taken.append(item)

                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(consumer, ensemble.connect_string)
                    for item in items:
                        await queue.put(item)
                    await wait_until(lambda: len(taken) == len(items))
                    await queue.put_all([b"stop"] * 4, priority=999)
                assert sorted(taken) == sorted(items)  # each exactly once
                assert await queue.length() == 0


async def test_party_lists_its_members_and_loses_dead_ones(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk:
                party = Party(zk, "/party", "me")
                assert await party.members() == [] and await party.count() == 0
                async with party:
                    async with connect(ensemble) as other_zk:
                        await Party(other_zk, "/party", "other").join()
                        assert sorted(await party.members()) == ["me", "other"]
                    # the other member's session ended: it left by itself
                    assert await party.members() == ["me"]
                    await party.join()  # joining twice is fine
                    assert await party.count() == 1
                assert await party.members() == []
                assert await party.leave() is False


async def test_data_and_children_watches_follow_every_change(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk, connect(ensemble) as writer:
                values = DataWatch(zk, "/config")
                assert await values.__anext__() == (None, None)
                await writer.create("/config", b"v1")
                data, stat = await values.__anext__()
                assert stat is not None and (data, stat.version) == (b"v1", 0)
                assert values.event is not None and values.event.type is client.EventType.NODE_CREATED
                await writer.set("/config", b"v2")
                data, stat = await values.__anext__()
                assert stat is not None and (data, stat.version) == (b"v2", 1)
                await writer.set("/config", b"v3")
                await writer.set("/config", b"v4")  # changes are coalesced: the latest is read
                data, _stat = await values.__anext__()
                assert data in (b"v3", b"v4")
                if data == b"v3":
                    assert (await values.__anext__())[0] == b"v4"
                await writer.delete("/config")
                assert await values.__anext__() == (None, None)

                with pytest.raises(client.NoNodeError):
                    await ChildrenWatch(zk, "/workers").__anext__()
                await writer.create("/workers")
                seen: list[list[str] | str] = []
                async with trio.open_nursery() as nursery:

                    async def follow() -> None:
                        async for names in ChildrenWatch(zk, "/workers"):
                            seen.append(names)
                        seen.append("ended")

                    nursery.start_soon(follow)
                    await wait_until(lambda: seen == [[]])
                    await writer.create("/workers/w1")
                    await wait_until(lambda: seen[-1] == ["w1"])
                    await writer.create("/workers/w2")
                    await wait_until(lambda: seen[-1] == ["w1", "w2"])
                    await writer.delete("/workers", recursive=True)
                    await wait_until(lambda: seen[-1] == "ended")
