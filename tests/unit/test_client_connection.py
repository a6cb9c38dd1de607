"""The client's trio shell against a scripted fake server over memory streams.

No sockets: ``connect(open_stream=...)`` hands the client one end of a
``trio.testing.memory_stream_pair`` per connection attempt, and a small fake server
speaks the wire protocol on the other end. Time is a MockClock with autojump, so
pings, read timeouts, backoff and session expiry run instantly and exactly.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import client
from client import (
    ConnectionClosedError,
    ConnectionLossError,
    ConnectionState,
    EventType,
    NoNodeError,
    SessionExpiredError,
    Watch,
    WatchEvent,
)
from coord.errors import NotLeaderError, ServerBehindError
from coord.protocol import (
    WATCH_XID,
    CloseSessionRequest,
    ConnectRequest,
    ConnectResponse,
    CreateRequest,
    ExistsRequest,
    FrameReader,
    GetDataRequest,
    PingRequest,
    Request,
    SetDataRequest,
    SetWatchesRequest,
    Stat,
    SyncRequest,
    decode_body,
    decode_handshake,
    decode_request,
    encode_frame,
    handshake_error,
)
from tests.polling import wait_until

SESSION = 0x5E55
STAT = Stat(1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1)


def _close(stream: trio.StapledStream[Any, Any]) -> None:
    stream.send_stream.close()
    stream.receive_stream.close()


class FakeServer:
    """One scripted server per address; all share the same session and store.

    ``down`` addresses refuse connections (``unknown`` ones do not resolve); ``refuse`` maps an address to the error
    code its handshake answers; ``silent`` makes every connection stop answering.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.down: set[tuple[str, int]] = set()
        self.unknown: set[tuple[str, int]] = set()  # their names do not resolve
        self.refused = 0  # connection attempts refused
        self.refuse: dict[tuple[str, int], int] = {}
        self.expired = False
        self.silent = False
        self.timeout_ms = 3000
        self.zxid = 100
        self.handshakes: list[tuple[tuple[str, int], ConnectRequest]] = []
        self.requests: list[tuple[int, Request]] = []  # (connection number, request)
        self.connections: list[trio.StapledStream[Any, Any]] = []
        self.opened = 0
        self.writes: list[int] = []  # bytes per client send_all, all connections
        self.data: dict[str, bytes] = {"/x": b"hello"}
        self.hold: trio.Event | None = None  # while set and not fired, replies wait
        self.connected = trio.Event()

    async def open_stream(self, host: str, port: int) -> trio.abc.Stream:
        address = (host, port)
        await trio.lowlevel.checkpoint()
        if address in self.down:
            self.refused += 1
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"connection refused by {host}:{port}")
        if address in self.unknown:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        client_end, server_end = trio.testing.memory_stream_pair()
        original_send_all = client_end.send_all

        async def counting_send_all(data: bytes | bytearray | memoryview) -> None:
            self.writes.append(len(data))
            await original_send_all(data)

        client_end.send_all = counting_send_all  # type: ignore[method-assign]
        self.connections.append(server_end)
        self.opened += 1
        self.nursery.start_soon(self._serve, server_end, address, self.opened)
        return client_end

    def drop_connections(self) -> None:
        for stream in self.connections:
            _close(stream)
        self.connections.clear()

    async def push_event(self, kind: EventType, path: str) -> None:
        self.zxid += 1
        await self.connections[-1].send_all(encode_frame([WATCH_XID, self.zxid, 0, [int(kind), path]]))

    async def _serve(self, stream: trio.StapledStream[Any, Any], address: tuple[str, int], number: int) -> None:
        reader = FrameReader(1 << 24)
        try:
            frames = await self._frames(stream, reader)
            handshake = decode_handshake(decode_body(next(frames)))
            assert isinstance(handshake, ConnectRequest)
            self.handshakes.append((address, handshake))
            if address in self.refuse or (self.expired and handshake.session_id):
                code = self.refuse.get(address, SessionExpiredError.code)
                await stream.send_all(encode_frame(handshake_error(code, "refused")))
                _close(stream)
                return
            answer = ConnectResponse(
                session_id=SESSION, password=b"pw", timeout_ms=self.timeout_ms, zxid=self.zxid, server_id=number
            )
            await stream.send_all(encode_frame(answer.to_wire()))
            self.connected.set()
            while True:
                for body in frames:
                    xid, request = decode_request(decode_body(body))
                    self.requests.append((number, request))
                    if self.silent:
                        continue
                    if self.hold is not None:
                        await self.hold.wait()
                    await stream.send_all(encode_frame(self._answer(xid, request)))
                    if isinstance(request, CloseSessionRequest):
                        _close(stream)
                        return
                frames = await self._frames(stream, reader)
        except (trio.BrokenResourceError, trio.ClosedResourceError, StopIteration):
            _close(stream)

    async def _frames(self, stream: trio.StapledStream[Any, Any], reader: FrameReader) -> Any:
        while True:
            data = await stream.receive_some()
            if not data:
                raise trio.BrokenResourceError("client closed")
            reader.feed(bytes(data))
            frames = list(reader)
            if frames:
                return iter(frames)

    def _answer(self, xid: int, request: Request) -> list[Any]:
        match request:
            case GetDataRequest(path=path):
                if path not in self.data:
                    return [xid, self.zxid, NoNodeError.code, path]
                return [xid, self.zxid, 0, [self.data[path], STAT.to_wire()]]
            case SetDataRequest(path=path, data=data):
                self.zxid += 1
                self.data[path] = data
                return [xid, self.zxid, 0, STAT.to_wire()]
            case CreateRequest(path=path, data=data):
                self.zxid += 1
                self.data[path] = data
                return [xid, self.zxid, 0, [path, STAT.to_wire()]]
            case SyncRequest(path=path):
                return [xid, self.zxid, 0, path]
            case _:
                return [xid, self.zxid, 0, None]

    def requests_of(self, kind: type) -> list[Any]:
        return [request for _, request in self.requests if isinstance(request, kind)]


@asynccontextmanager
async def fake_ensemble(**settings: Any) -> AsyncIterator[FakeServer]:
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        for key, value in settings.items():
            setattr(server, key, value)
        yield server
        nursery.cancel_scope.cancel()


def open_client(server: FakeServer, hosts: str = "a:1", **kwargs: Any) -> Any:
    kwargs.setdefault("session_timeout", 3.0)
    return client.connect(hosts, open_stream=server.open_stream, rng=random.Random(0), **kwargs)


async def test_connect_negotiates_a_session(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble(timeout_ms=4000) as server, open_client(server, session_timeout=5.0) as zk:
        assert zk.state is ConnectionState.CONNECTED
        assert zk.session_id == SESSION
        assert zk.client_id == (SESSION, b"pw")
        assert zk.session_timeout == 4.0
        assert zk.last_zxid == 0  # nothing seen yet; the handshake's zxid does not count
        (_, handshake), *_ = server.handshakes
        assert handshake == ConnectRequest(session_id=0, password=b"", last_zxid=0, timeout_ms=5000)
        assert await zk.get("/x") == (b"hello", STAT)
        assert zk.last_zxid == 100


async def test_concurrent_calls_share_one_connection_and_coalesce_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_ensemble() as server, open_client(server) as zk:
        results: dict[int, str] = {}

        async def create(index: int) -> None:
            results[index] = await zk.create(f"/n{index}", b"v")

        async with trio.open_nursery() as nursery:
            for index in range(200):
                nursery.start_soon(create, index)
        assert results == {index: f"/n{index}" for index in range(200)}
        assert len(server.connections) == 1
        assert len(server.writes) < 20  # 200 requests went out in a handful of send_alls


async def test_an_idle_client_pings_every_third_of_the_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble(timeout_ms=3000) as server, open_client(server) as zk:
        start = trio.current_time()
        await trio.sleep(10.0)
        pings = server.requests_of(PingRequest)
        assert 9 <= len(pings) <= 10
        assert zk.state is ConnectionState.CONNECTED
        assert trio.current_time() - start == pytest.approx(10.0)


async def test_a_silent_server_is_dropped_after_two_thirds_of_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_ensemble(timeout_ms=3000) as server, open_client(server, "a:1,b:2") as zk:
        states = zk.states()
        assert await states.__anext__() is ConnectionState.CONNECTED
        server.silent = True
        start = trio.current_time()
        with pytest.raises(ConnectionLossError):
            await zk.get("/x")
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.01)
        assert await states.__anext__() is ConnectionState.SUSPENDED
        server.silent = False
        assert await states.__anext__() is ConnectionState.CONNECTED
        assert len(server.handshakes) == 2
        assert server.handshakes[1][0] != server.handshakes[0][0]  # the next host first
        assert server.handshakes[1][1].session_id == SESSION


async def test_a_dropped_connection_fails_calls_in_flight_and_reconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_ensemble() as server, open_client(server) as zk:
        await zk.set("/x", b"v2")
        server.hold = trio.Event()
        async with trio.open_nursery() as nursery:

            async def doomed() -> None:
                with pytest.raises(ConnectionLossError, match="connection lost"):
                    await zk.get("/x")

            nursery.start_soon(doomed)
            await trio.testing.wait_all_tasks_blocked()
            server.hold = None
            server.drop_connections()
        assert await zk.get("/x") == (b"v2", STAT)
        assert zk.state is ConnectionState.CONNECTED
        _, handshake = server.handshakes[-1]
        assert (handshake.session_id, handshake.password, handshake.last_zxid) == (SESSION, b"pw", 101)


async def test_calls_made_while_suspended_wait_for_the_reconnect(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server, open_client(server, max_reconnect_delay=0.5) as zk:
        server.down.add(("a", 1))
        server.drop_connections()
        await wait_until(lambda: zk.state is ConnectionState.SUSPENDED, timeout=1.0)
        assert zk.state is ConnectionState.SUSPENDED
        async with trio.open_nursery() as nursery:
            result: list[Any] = []

            async def read() -> None:
                result.append(await zk.get("/x"))

            nursery.start_soon(read)
            await trio.sleep(1.0)
            assert result == []
            server.down.clear()
        assert result == [(b"hello", STAT)]


async def test_watches_are_restored_first_after_a_reconnect(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server, open_client(server) as zk:
        watch = Watch()
        await zk.get("/x", watch=watch)
        async with zk.add_watch("/tree", recursive=True) as events:
            states = zk.states()
            server.drop_connections()
            assert [await states.__anext__() for _ in range(3)] == [
                ConnectionState.CONNECTED,
                ConnectionState.SUSPENDED,
                ConnectionState.CONNECTED,
            ]
            assert await zk.sync("/") == "/"
            number, first = server.requests[-2]
            assert number == 2
            assert first == SetWatchesRequest(relative_zxid=100, data=("/x",), persistent_recursive=("/tree",))
            await server.push_event(EventType.NODE_CREATED, "/tree/a")
            assert await events.__anext__() == WatchEvent(EventType.NODE_CREATED, "/tree/a")
            await server.push_event(EventType.NODE_DATA_CHANGED, "/x")
            assert await watch.wait() == WatchEvent(EventType.NODE_DATA_CHANGED, "/x")


async def test_a_server_behind_the_client_is_skipped(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server:
        server.refuse[("a", 1)] = ServerBehindError.code
        async with open_client(server, "a:1,b:2") as zk:
            assert zk.server_address == ("b", 2)


async def test_a_refused_reconnect_loses_the_session(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server, open_client(server) as zk:
        watch = Watch()
        await zk.get("/x", watch=watch)
        server.expired = True
        server.drop_connections()
        with pytest.raises(SessionExpiredError):
            await watch.wait()
        assert zk.state is ConnectionState.LOST
        with pytest.raises(SessionExpiredError):
            await zk.get("/x")
        with pytest.raises(SessionExpiredError):
            await zk.wait_connected()


async def test_the_session_is_lost_when_no_server_answers_within_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_ensemble(timeout_ms=3000) as server, open_client(server, "a:1,b:2") as zk:
        await zk.get("/x")
        start = trio.current_time()
        server.down.update({("a", 1), ("b", 2)})
        server.drop_connections()
        states = [state async for state in zk.states()]
        assert states == [ConnectionState.CONNECTED, ConnectionState.SUSPENDED, ConnectionState.LOST] or states == [
            ConnectionState.SUSPENDED,
            ConnectionState.LOST,
        ]
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)
        with pytest.raises(SessionExpiredError, match="session timeout"):
            await zk.exists("/x")


async def test_connect_gives_up_after_connect_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server:
        server.down.add(("a", 1))
        start = trio.current_time()
        with pytest.raises(ConnectionLossError, match="within 4s"):
            async with open_client(server, connect_timeout=4.0):
                pytest.fail("connected to nothing")  # pragma: no cover
        assert trio.current_time() - start == pytest.approx(4.0)


async def test_a_cancelled_call_does_not_disturb_the_next(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server, open_client(server) as zk:
        server.hold = trio.Event()
        with trio.move_on_after(1.0) as scope:
            await zk.set("/x", b"maybe")
        assert scope.cancelled_caught
        release = server.hold
        server.hold = None
        release.set()
        assert await zk.get("/x") == (b"maybe", STAT)  # the set happened; its reply was dropped
        assert zk.state is ConnectionState.CONNECTED
        assert len(server.handshakes) == 1


async def test_a_call_cancelled_before_it_is_sent_sends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server, open_client(server) as zk:
        with trio.CancelScope() as scope:
            scope.cancel()
            await zk.set("/x", b"never")
        assert await zk.get("/x") == (b"hello", STAT)
        assert server.requests_of(SetDataRequest) == []


async def test_close_ends_the_session_and_everything_waiting_on_it(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server, open_client(server) as zk:
        states = zk.states()
        watch = Watch()
        await zk.get("/x", watch=watch)
        await zk.close()
        assert server.requests_of(CloseSessionRequest) == [CloseSessionRequest()]
        assert zk.state is ConnectionState.LOST
        with pytest.raises(ConnectionClosedError):
            await zk.get("/x")
        with pytest.raises(ConnectionClosedError):
            await watch.wait()
        assert [state async for state in states] == [ConnectionState.CONNECTED, ConnectionState.LOST]
        await zk.close()  # idempotent
    assert len(server.requests_of(CloseSessionRequest)) == 1


async def test_leaving_the_block_closes_even_when_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server:
        with trio.CancelScope() as scope:
            async with open_client(server) as zk:
                scope.cancel()
                await trio.sleep_forever()
        assert zk.state is ConnectionState.LOST
        assert server.requests_of(CloseSessionRequest) == [CloseSessionRequest()]


async def test_client_side_errors_send_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server, open_client(server, data_bytes_max=10) as zk:
        with pytest.raises(client.BadArgumentsError):
            await zk.create("relative")
        with pytest.raises(client.BadArgumentsError):
            await zk.set("/x", "text")  # type: ignore[arg-type]
        with pytest.raises(client.BadArgumentsError):
            await zk.set("/x", b"x" * 11)
        with pytest.raises(client.BadArgumentsError):
            await zk.get("/x", watch=lambda event: None)  # type: ignore[arg-type]
        assert server.requests == []


async def test_an_exception_in_the_block_is_not_wrapped_in_a_group(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server:
        with pytest.raises(NoNodeError, match="/missing"):
            async with open_client(server) as zk:
                await zk.get("/missing")
        with pytest.raises(KeyError):
            async with open_client(server):
                raise KeyError("mine")


async def test_calls_waiting_for_the_reconnect_go_out_after_set_watches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_ensemble() as server, open_client(server) as zk:
        watch = Watch()
        await zk.exists("/missing", watch=watch)
        states = zk.states()
        assert await states.__anext__() is ConnectionState.CONNECTED
        server.down.add(("a", 1))
        server.drop_connections()
        assert await states.__anext__() is ConnectionState.SUSPENDED
        async with trio.open_nursery() as nursery:
            for path in ("/x", "/y"):
                nursery.start_soon(zk.exists, path)
            await trio.testing.wait_all_tasks_blocked()
            server.down.clear()
        on_new_connection = [request for number, request in server.requests if number == 2]
        assert on_new_connection[0] == SetWatchesRequest(relative_zxid=100, exist=("/missing",))
        assert {type(request) for request in on_new_connection[1:]} <= {ExistsRequest, PingRequest}
        assert len(server.requests_of(ExistsRequest)) == 3


async def test_fail_fast_gives_up_at_once_when_every_server_refuses(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server:
        server.down.update({("a", 1), ("b", 2)})
        start = trio.current_time()
        with pytest.raises(ConnectionLossError, match=r"^could not connect to a:1,b:2: connection refused$"):
            async with open_client(server, "a:1,b:2", connect_timeout=30.0, fail_fast=True):
                pytest.fail("connected to nothing")  # pragma: no cover
        assert trio.current_time() - start < 0.5  # a few short rounds, not the 30 s
        assert server.refused == 2 * 3  # each server, three rounds


async def test_fail_fast_names_each_server_when_they_fail_differently(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_ensemble() as server:
        server.down.add(("a", 1))
        server.unknown.add(("nosuch", 2))
        expected = r"^could not connect to a:1 \(connection refused\), nosuch:2 \(unknown host\)$"
        with pytest.raises(ConnectionLossError, match=expected):
            async with open_client(server, "a:1,nosuch:2", connect_timeout=30.0, fail_fast=True):
                pytest.fail("connected to nothing")  # pragma: no cover


async def test_fail_fast_still_waits_for_a_server_that_answers(autojump_clock: trio.testing.MockClock) -> None:
    # b accepts connections but refuses sessions for now (no quorum): worth waiting for.
    async with fake_ensemble() as server:
        server.down.add(("a", 1))
        server.refuse[("b", 2)] = NotLeaderError.code
        start = trio.current_time()
        with pytest.raises(ConnectionLossError, match="within 4s"):
            async with open_client(server, "a:1,b:2", connect_timeout=4.0, fail_fast=True):
                pytest.fail("connected to nothing")  # pragma: no cover
        assert trio.current_time() - start == pytest.approx(4.0)


async def test_fail_fast_connects_to_a_server_that_comes_up_within_the_rounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_ensemble() as server:
        server.down.add(("a", 1))

        async def come_up() -> None:
            await wait_until(lambda: server.refused >= 2, timeout=60, interval=0.001)
            server.down.clear()

        server.nursery.start_soon(come_up)
        async with open_client(server, fail_fast=True) as zk:
            assert await zk.get("/x") == (b"hello", STAT)


async def test_without_fail_fast_refused_connections_are_retried_until_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_ensemble() as server:
        server.down.add(("a", 1))
        start = trio.current_time()
        with pytest.raises(ConnectionLossError, match="within 5s"):
            async with open_client(server, connect_timeout=5.0):
                pytest.fail("connected to nothing")  # pragma: no cover
        assert trio.current_time() - start == pytest.approx(5.0)


async def test_fail_fast_does_not_give_up_a_session_whose_server_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_ensemble(timeout_ms=3000) as server, open_client(server, fail_fast=True) as zk:
        await zk.get("/x")
        server.down.add(("a", 1))
        server.drop_connections()
        # more refused rounds than fail_fast allows the first connection
        await wait_until(lambda: server.refused >= 6, timeout=60)
        assert zk.state is ConnectionState.SUSPENDED
        server.down.clear()
        await zk.wait_connected()
        assert await zk.get("/x") == (b"hello", STAT)
