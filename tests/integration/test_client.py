"""The client against a real standalone server on loopback (LMDB in tmp_path).

Every test is bounded by ``trio.fail_after``; nothing sleeps to synchronise: tests
wait on watches, state changes, or poll a condition against a deadline.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import client
from client import (
    BadArgumentsError,
    BadVersionError,
    ConnectionClosedError,
    ConnectionLossError,
    ConnectionState,
    EventType,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    NoWatcherError,
    Retry,
    RolledBackError,
    RuntimeInconsistencyError,
    SessionExpiredError,
    Watch,
    WatcherType,
    WatchEvent,
    ZnodeStat,
)
from coord.server import Server
from coord.testing import open_ensemble

TEST_TIMEOUT_S = 20.0


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A one-server embedded ensemble (sessions tick every 100 ms: timeouts from 200 ms)."""
    async with open_ensemble(1, data_dir=tmp_path, session_tick_ms=100, max_session_timeout_ms=20_000) as ensemble:
        await ensemble.wait_for_leader()
        yield ensemble.server(1)


def connect(server: Server, **kwargs: Any) -> Any:
    kwargs.setdefault("session_timeout", 10.0)
    kwargs.setdefault("rng", random.Random(1))
    return client.connect(server.connect_string, **kwargs)


async def next_state(states: client.StateStream, timeout: float = 10.0) -> ConnectionState:
    with trio.fail_after(timeout):
        return await states.__anext__()


class Gate:
    """An ``open_stream`` that can be closed, to hold a client disconnected."""

    def __init__(self) -> None:
        self.is_open = True

    async def open_stream(self, host: str, port: int) -> trio.abc.Stream:
        if not self.is_open:
            await trio.lowlevel.checkpoint()
            raise OSError("gate closed")
        return await trio.open_tcp_stream(host, port)


# --- CRUD ---------------------------------------------------------------------------


async def test_crud_round_trip_with_stats(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk:
            assert await zk.create("/app", b"v1") == "/app"
            data, stat = await zk.get("/app")
            assert data == b"v1"
            assert isinstance(stat, ZnodeStat)
            assert (stat.version, stat.data_length, stat.num_children, stat.ephemeral_owner) == (0, 2, 0, 0)
            assert stat.czxid == stat.mzxid == stat.pzxid
            assert stat.czxid <= zk.last_zxid
            assert stat.ctime == stat.mtime > 0

            new_stat = await zk.set("/app", b"value two")
            assert new_stat.version == 1
            assert new_stat.data_length == 9
            assert new_stat.mzxid > stat.mzxid
            assert new_stat.czxid == stat.czxid
            assert await zk.get("/app") == (b"value two", new_stat)

            path, child_stat = await zk.create("/app/child", include_data=True)
            assert path == "/app/child"
            assert child_stat.data_length == 0
            parent = await zk.exists("/app")
            assert parent is not None
            assert (parent.num_children, parent.cversion, parent.pzxid) == (1, 1, child_stat.czxid)
            assert await zk.get_children("/app") == ["child"]
            names, stat_with_children = await zk.get_children("/app", include_data=True)
            assert names == ["child"]
            assert stat_with_children == parent

            await zk.delete("/app/child")
            await zk.delete("/app", version=1)
            assert await zk.exists("/app") is None
            assert await zk.sync("/") == "/"


async def test_makepath_ensure_path_and_recursive_delete(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk:
            assert await zk.create("/a/b/c", b"deep", makepath=True) == "/a/b/c"
            assert await zk.get("/a/b/c") == (b"deep", (await zk.get("/a/b/c"))[1])
            await zk.ensure_path("/a/b/c")
            await zk.ensure_path("/x/y")
            await zk.ensure_path("/")
            assert await zk.exists("/x/y") is not None
            for index in range(5):
                await zk.create(f"/a/b/n{index}/leaf", makepath=True)
            await zk.delete("/a", recursive=True)
            assert await zk.exists("/a") is None
            await zk.delete("/never-there", recursive=True)  # fine
            await zk.delete("/", recursive=True)
            assert await zk.get_children("/") == ["coord"]


async def test_large_values_up_to_the_limit(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk:
            value = bytes(range(256)) * 4096  # 1 MiB
            await zk.create("/big", value)
            assert (await zk.get("/big"))[0] == value
            with pytest.raises(BadArgumentsError, match="over the limit"):
                await zk.set("/big", value + b"!")


# --- errors -------------------------------------------------------------------------


async def test_each_error_is_raised_for_its_case_and_names_the_path(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk:
            await zk.create("/e", b"")
            await zk.create("/e/child", b"")
            await zk.create("/eph", b"", ephemeral=True)
            cases: list[tuple[type[Exception], str, Awaitable[Any]]] = [
                (NoNodeError, "/missing", zk.get("/missing")),
                (NoNodeError, "/missing/child", zk.create("/missing/child")),
                (NoNodeError, "/missing", zk.set("/missing", b"")),
                (NoNodeError, "/missing", zk.delete("/missing")),
                (NoNodeError, "/missing", zk.get_children("/missing")),
                (NodeExistsError, "/e", zk.create("/e")),
                (BadVersionError, "/e", zk.set("/e", b"", version=7)),
                (BadVersionError, "/e/child", zk.delete("/e/child", version=7)),
                (NotEmptyError, "/e", zk.delete("/e")),
                (NoChildrenForEphemeralsError, "/eph/child", zk.create("/eph/child")),
                (BadArgumentsError, "/coord", zk.create("/coord/mine")),
                (BadArgumentsError, "relative", zk.get("relative")),
                (BadArgumentsError, "/e/", zk.create("/e/")),
            ]
            for error_type, path, call in cases:
                with pytest.raises(error_type) as caught:
                    await call
                assert path in str(caught.value), (error_type, str(caught.value))
            assert await zk.exists("/e/child") is not None  # nothing above changed anything


async def test_remove_watches_without_a_watch_raises_no_watcher(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk:
            with pytest.raises(NoWatcherError):
                await zk.remove_watches("/", WatcherType.DATA)


# --- node kinds -------------------------------------------------------------------------


async def test_ephemeral_sequential_nodes(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as observer:
            async with connect(server) as zk:
                await zk.create("/q", b"")
                first = await zk.create("/q/job-", b"1", ephemeral=True, sequence=True)
                second = await zk.create("/q/job-", b"2", ephemeral=True, sequence=True)
                plain = await zk.create("/q/", sequence=True)
                assert first == "/q/job-0000000000"
                assert second == "/q/job-0000000001"
                assert plain == "/q/0000000002"
                stat = await observer.exists(first)
                assert stat is not None
                assert stat.ephemeral_owner == zk.session_id
                assert stat.owner_session_id == zk.session_id
            # closing the session removes its ephemerals at once
            assert await observer.get_children("/q") == ["0000000002"]


async def test_ttl_and_container_nodes(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk:
            assert await zk.create("/ttl", b"", ttl=200) == "/ttl"
            assert await zk.create("/box", container=True) == "/box"
            await zk.create("/box/item")
            gone = Watch()
            assert await zk.exists("/ttl", watch=gone) is not None
            assert await gone.wait() == WatchEvent(EventType.NODE_DELETED, "/ttl")
            emptied = Watch()
            await zk.exists("/box", watch=emptied)
            await zk.delete("/box/item")
            assert await emptied.wait() == WatchEvent(EventType.NODE_DELETED, "/box")


# --- transactions -------------------------------------------------------------------------


async def test_a_transaction_applies_all_ops(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk:
            await zk.create("/t", b"")
            await zk.create("/t/old", b"")
            async with zk.transaction() as t:
                t.create("/t/new", b"n")
                t.create("/t/seq-", sequence=True)
                t.set_data("/t", b"updated", version=0)
                t.delete("/t/old")
                t.check("/t", 1)
            path, stat, deleted, checked = t.results[1:]
            assert t.results[0] == "/t/new"
            assert path == "/t/seq-0000000002"
            assert isinstance(stat, ZnodeStat) and stat.version == 1
            assert (deleted, checked) == (True, True)
            assert sorted(await zk.get_children("/t")) == ["new", "seq-0000000002"]
            assert await zk.transaction().commit() == []


async def test_a_failed_transaction_changes_nothing_and_reports_each_op(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk:
            await zk.create("/t", b"")
            t = zk.transaction()
            t.create("/t/a")
            t.set_data("/t", b"x")
            t.check("/t", 5)
            t.delete("/t/a")
            results = await t.commit()
            assert [type(result) for result in results] == [
                RolledBackError,
                RolledBackError,
                BadVersionError,
                RuntimeInconsistencyError,
            ]
            assert "/t" in str(results[2])
            assert await zk.get_children("/t") == []
            assert (await zk.get("/t"))[0] == b""
            with pytest.raises(ValueError, match="already committed"):
                await t.commit()


# --- watches ------------------------------------------------------------------------------


async def test_one_shot_watches_fire_once_with_the_right_event(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk, connect(server) as other:
            await zk.create("/w", b"0")
            data_watch = zk.data_watch("/w")
            await zk.get("/w", watch=data_watch)
            child_watch = Watch()
            await zk.get_children("/w", watch=child_watch)
            exists_watch = Watch()
            assert await zk.exists("/w/new", watch=exists_watch) is None

            await other.set("/w", b"1")
            assert await data_watch.wait() == WatchEvent(EventType.NODE_DATA_CHANGED, "/w")
            assert not child_watch.is_fired
            await other.create("/w/new")
            assert await exists_watch.wait() == WatchEvent(EventType.NODE_CREATED, "/w/new")
            assert await child_watch.wait() == WatchEvent(EventType.NODE_CHILDREN_CHANGED, "/w")

            # one-shot: a later change is not delivered to the fired watch, and a new
            # watch hears only what happens after it was armed
            await other.set("/w", b"2")
            deleted = Watch()
            await zk.exists("/w/new", watch=deleted)
            await other.delete("/w/new")
            assert await deleted.wait() == WatchEvent(EventType.NODE_DELETED, "/w/new")
            assert (await data_watch.wait()).type is EventType.NODE_DATA_CHANGED
            with pytest.raises(BadArgumentsError, match="already fired"):
                await zk.get("/w", watch=data_watch)


async def test_persistent_and_recursive_watches(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk, connect(server) as other:
            await zk.create("/p", b"")
            async with zk.add_watch("/p") as flat, zk.add_watch("/p", recursive=True) as deep:
                await other.set("/p", b"1")
                await other.create("/p/a")
                await other.set("/p/a", b"2")
                await other.set("/p", b"3")
                assert [await flat.__anext__() for _ in range(3)] == [
                    WatchEvent(EventType.NODE_DATA_CHANGED, "/p"),
                    WatchEvent(EventType.NODE_CHILDREN_CHANGED, "/p"),
                    WatchEvent(EventType.NODE_DATA_CHANGED, "/p"),
                ]
                assert [await deep.__anext__() for _ in range(4)] == [
                    WatchEvent(EventType.NODE_DATA_CHANGED, "/p"),
                    WatchEvent(EventType.NODE_CREATED, "/p/a"),
                    WatchEvent(EventType.NODE_DATA_CHANGED, "/p/a"),
                    WatchEvent(EventType.NODE_DATA_CHANGED, "/p"),
                ]
            # leaving the blocks removed the watches on the server
            with pytest.raises(NoWatcherError):
                await zk.remove_watches("/p", WatcherType.PERSISTENT)


async def test_remove_watches_tells_the_watchers(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk:
            await zk.create("/r", b"")
            data, child = Watch(), Watch()
            await zk.get("/r", watch=data)
            await zk.get_children("/r", watch=child)
            await zk.remove_watches("/r", WatcherType.DATA)
            assert await data.wait() == WatchEvent(EventType.DATA_WATCH_REMOVED, "/r")
            assert not child.is_fired
            async with zk.add_watch("/r", recursive=True) as events:
                await zk.remove_watches("/r", WatcherType.ANY)
                assert [event async for event in events] == [WatchEvent(EventType.PERSISTENT_WATCH_REMOVED, "/r")]
            assert await child.wait() == WatchEvent(EventType.CHILD_WATCH_REMOVED, "/r")
            await zk.set("/r", b"after")  # nothing is left to fire


# --- reconnects and sessions --------------------------------------------------------------


async def test_reconnect_keeps_the_session_ephemerals_and_watches(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk, connect(server) as other:
            await zk.create("/eph", b"", ephemeral=True)
            await zk.create("/data", b"0")
            watch = Watch()
            await zk.get("/data", watch=watch)
            session_id = zk.session_id
            states = zk.states()
            assert await next_state(states) is ConnectionState.CONNECTED

            server.drop_connections()
            assert await next_state(states) is ConnectionState.SUSPENDED
            assert await next_state(states) is ConnectionState.CONNECTED
            assert zk.session_id == session_id
            assert (await other.exists("/eph")) is not None
            assert not watch.is_fired

            await other.wait_connected()
            await other.set("/data", b"after the drop")
            assert await watch.wait() == WatchEvent(EventType.NODE_DATA_CHANGED, "/data")
            assert (await zk.exists("/eph")) is not None


async def test_a_change_made_while_disconnected_fires_the_restored_watch(server: Server) -> None:
    gate = Gate()
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server, open_stream=gate.open_stream) as zk, connect(server) as other:
            await zk.create("/data", b"0")
            await zk.create("/kids", b"")
            data_watch, exists_watch, child_watch = Watch(), Watch(), Watch()
            await zk.get("/data", watch=data_watch)
            await zk.exists("/later", watch=exists_watch)
            await zk.get_children("/kids", watch=child_watch)
            async with zk.add_watch("/kids", recursive=True) as events:
                states = zk.states()
                assert await next_state(states) is ConnectionState.CONNECTED
                gate.is_open = False
                server.drop_connections()
                assert await next_state(states) is ConnectionState.SUSPENDED

                # changes while zk cannot reach the server
                await other.set("/data", b"changed while away")
                await other.create("/later")
                await other.create("/kids/a")
                assert not data_watch.is_fired

                gate.is_open = True
                assert await next_state(states) is ConnectionState.CONNECTED
                assert await data_watch.wait() == WatchEvent(EventType.NODE_DATA_CHANGED, "/data")
                assert await exists_watch.wait() == WatchEvent(EventType.NODE_CREATED, "/later")
                assert await child_watch.wait() == WatchEvent(EventType.NODE_CHILDREN_CHANGED, "/kids")

                # the persistent watch is registered again (changes while away are not replayed)
                await other.create("/kids/b")
                assert await events.__anext__() == WatchEvent(EventType.NODE_CREATED, "/kids/b")


async def test_calls_in_flight_during_a_drop_fail_and_retry_succeeds(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk:
            await zk.create("/counter", b"")
            retry = Retry(max_tries=None, delay=0.01, deadline=10.0, rng=random.Random(3))
            losses = 0
            done = 0

            async def worker(index: int) -> None:
                nonlocal losses, done
                for round_ in range(20):
                    try:
                        await zk.set("/counter", f"{index}-{round_}".encode())
                    except ConnectionLossError:
                        losses += 1
                        await retry(zk.set, "/counter", f"{index}-{round_}".encode())
                    done += 1

            async with trio.open_nursery() as nursery:
                for index in range(20):
                    nursery.start_soon(worker, index)
                await trio.testing.wait_all_tasks_blocked()
                server.drop_connections()
            assert done == 400
            assert losses == 20  # every task had a call in flight when the connection dropped
            assert zk.state is ConnectionState.CONNECTED


async def test_session_expiry_makes_the_client_lost(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as observer:
            # a short timeout: if the server's refusal of the reconnect does not reach
            # the client, the client declares the session lost when the timeout passes
            async with connect(server, session_timeout=2.0) as zk:
                await zk.create("/eph", b"", ephemeral=True)
                await zk.create("/persistent", b"")
                watch = Watch()
                await zk.get("/persistent", watch=watch)
                states = zk.states()
                assert await next_state(states) is ConnectionState.CONNECTED
                assert await server.expire_session(zk.session_id)
                assert ConnectionState.LOST in [state async for state in states]
                assert zk.state is ConnectionState.LOST
                with pytest.raises(SessionExpiredError):
                    await zk.get("/")
                with pytest.raises(SessionExpiredError):
                    await watch.wait()
                with pytest.raises(SessionExpiredError):
                    await zk.wait_connected()
            assert await observer.exists("/eph") is None


async def test_a_short_session_times_out_when_the_client_cannot_reconnect(server: Server) -> None:
    gate = Gate()
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server, session_timeout=0.6, open_stream=gate.open_stream) as zk:
            assert zk.session_timeout == pytest.approx(0.6)
            states = zk.states()
            assert await next_state(states) is ConnectionState.CONNECTED
            gate.is_open = False
            server.drop_connections()
            assert await next_state(states) is ConnectionState.SUSPENDED
            assert await next_state(states, timeout=5.0) is ConnectionState.LOST
            with pytest.raises(SessionExpiredError):
                await zk.exists("/")


async def test_idle_sessions_stay_alive_on_pings(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server, session_timeout=0.5) as zk:
            await zk.create("/eph", b"", ephemeral=True)
            states = zk.states()
            assert await next_state(states) is ConnectionState.CONNECTED
            with trio.move_on_after(2.0):  # four session timeouts of nothing but pings
                state = await states.__anext__()
                pytest.fail(f"state changed to {state} while idle")
            assert await zk.exists("/eph") is not None


async def test_close_removes_ephemerals_and_ends_calls(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as observer, connect(server) as zk:
            await zk.create("/eph", b"", ephemeral=True)
            await zk.close()
            assert await observer.exists("/eph") is None
            with pytest.raises(ConnectionClosedError):
                await zk.get("/")


async def test_an_exception_in_the_block_comes_out_unwrapped(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        with pytest.raises(NoNodeError):
            async with connect(server) as zk:
                await zk.get("/missing")


# --- concurrency --------------------------------------------------------------------------


async def test_many_concurrent_tasks_pipeline_on_one_connection(server: Server) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with connect(server) as zk:
            await zk.create("/many", b"")
            created: list[str] = []

            async def worker() -> None:
                for _ in range(20):
                    created.append(await zk.create("/many/n-", b"x", sequence=True))

            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(worker)
            assert len(created) == len(set(created)) == 1000
            children = await zk.get_children("/many")
            assert sorted(children) == [f"n-{index:010d}" for index in range(1000)]
