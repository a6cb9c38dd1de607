"""Watch, WatchStream and StateStream: the objects users await."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from client import ConnectionState, EventType, SessionExpiredError, Watch, WatchEvent, WatchStream
from client._state import StateStream

CHANGED = WatchEvent(EventType.NODE_DATA_CHANGED, "/x", 5)


def test_watch_events_compare_without_their_zxid() -> None:
    assert WatchEvent(EventType.NODE_DATA_CHANGED, "/x") == CHANGED
    assert CHANGED.zxid == 5
    assert WatchEvent(EventType.NODE_DELETED, "/x") != CHANGED


async def test_a_watch_wakes_every_waiter_with_its_first_event() -> None:
    watch = Watch()
    seen: list[WatchEvent] = []

    async def waiter() -> None:
        seen.append(await watch.wait())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not watch.is_fired
        watch._fire(CHANGED)
        watch._fire(WatchEvent(EventType.NODE_DELETED, "/x"))
    assert seen == [CHANGED, CHANGED]
    assert await watch.wait() == CHANGED


async def test_a_failed_watch_raises_a_fresh_error_each_time() -> None:
    watch = Watch()
    error = SessionExpiredError("lost")
    watch._fail(error)
    for _ in range(2):
        with pytest.raises(SessionExpiredError, match="lost") as caught:
            await watch.wait()
        assert caught.value is not error


async def test_a_watch_stream_delivers_events_in_order_then_ends() -> None:
    stream = WatchStream("/x", recursive=False)
    events = [WatchEvent(EventType.NODE_DATA_CHANGED, "/x", n) for n in range(3)]
    received: list[WatchEvent] = []

    async def consume() -> None:
        async for event in stream:
            received.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        for event in events:
            stream._put(event)
        await trio.testing.wait_all_tasks_blocked()
        stream._end()
    assert [event.zxid for event in received] == [0, 1, 2]


async def test_a_watch_stream_delivers_queued_events_before_its_error() -> None:
    stream = WatchStream("/x", recursive=True)
    stream._put(CHANGED)
    stream._fail(SessionExpiredError("lost"))
    assert await stream.__anext__() == CHANGED
    with pytest.raises(SessionExpiredError):
        await stream.__anext__()
    with pytest.raises(trio.WouldBlock):
        WatchStream("/y", recursive=False).receive_nowait()


async def test_a_state_stream_yields_the_current_state_then_changes_until_lost() -> None:
    stream = StateStream(ConnectionState.CONNECTED)
    stream._put(ConnectionState.SUSPENDED)
    stream._put(ConnectionState.CONNECTED)
    stream._put(ConnectionState.LOST)
    assert [state async for state in stream] == [
        ConnectionState.CONNECTED,
        ConnectionState.SUSPENDED,
        ConnectionState.CONNECTED,
        ConnectionState.LOST,
    ]
    assert [state async for state in StateStream(ConnectionState.LOST)] == [ConnectionState.LOST]


def test_connection_states_have_kazoo_names() -> None:
    assert ConnectionState.SUSPENDED == "SUSPENDED"
    assert [state.value for state in ConnectionState] == ["CONNECTED", "SUSPENDED", "LOST"]
