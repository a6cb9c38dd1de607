"""The client and the pipeline encode through coord.protocol: the bytes on the wire are
the same as the arrays they used to build by hand (kept here, literally, as the reference)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from client._session import SessionCore
from client._transaction import Transaction
from coord import protocol
from coord.protocol import (
    WATCH_XID,
    AddWatchMode,
    AddWatchRequest,
    CloseSessionRequest,
    CreateMode,
    CreateRequest,
    DeleteRequest,
    EventType,
    ExistsRequest,
    GetChildrenRequest,
    GetDataRequest,
    MultiRequest,
    Op,
    PingRequest,
    RemoveWatchesRequest,
    SetDataRequest,
    SyncRequest,
    WatcherType,
    WatchEvent,
)

CREATE, DELETE, SET_DATA, CHECK, MULTI = (int(op) for op in (Op.CREATE, Op.DELETE, Op.SET_DATA, Op.CHECK, Op.MULTI))


def hand_built_frame(item: list[Any]) -> bytes:
    """How the client and the pipeline framed their hand-built arrays."""
    body = cbor2.dumps(item)
    return protocol.HEADER.pack(len(body)) + body


def sent_by_the_core(request: protocol.Request) -> tuple[int, bytes]:
    core = SessionCore(timeout_ms=10_000)
    core._xid = 41
    slot = core.send(request)
    return slot.xid, bytes(core.take_outgoing())


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (
            CreateRequest(path="/a", data=b"v", mode=int(CreateMode.EPHEMERAL_SEQUENTIAL), ttl_ms=0, makepath=False),  # type: ignore[arg-type]
            [CREATE, "/a", b"v", int(CreateMode.EPHEMERAL_SEQUENTIAL), 0, False],
        ),
        (
            CreateRequest(path="/t", mode=int(CreateMode.PERSISTENT_WITH_TTL), ttl_ms=500, makepath=True),  # type: ignore[arg-type]
            [CREATE, "/t", b"", int(CreateMode.PERSISTENT_WITH_TTL), 500, True],
        ),
        (CreateRequest(path="/p", makepath=True), [CREATE, "/p", b"", 0, 0, True]),  # ensure_path
        (GetDataRequest(path="/a", watch=True), [int(Op.GET_DATA), "/a", True]),
        (SetDataRequest(path="/a", data=b"w", version=3), [SET_DATA, "/a", b"w", 3]),
        (DeleteRequest(path="/a", version=-1), [DELETE, "/a", -1]),
        (ExistsRequest(path="/a", watch=False), [int(Op.EXISTS), "/a", False]),
        (GetChildrenRequest(path="/", watch=True, include_stat=True), [int(Op.GET_CHILDREN), "/", True, True]),
        (SyncRequest(path="/a"), [int(Op.SYNC), "/a"]),
        (AddWatchRequest(path="/w", mode=AddWatchMode.PERSISTENT_RECURSIVE), [int(Op.ADD_WATCH), "/w", 1]),
        (
            RemoveWatchesRequest(path="/w", watcher_type=WatcherType.PERSISTENT),
            [int(Op.REMOVE_WATCHES), "/w", int(WatcherType.PERSISTENT)],
        ),
        (PingRequest(), [int(Op.PING)]),
        (CloseSessionRequest(), [int(Op.CLOSE_SESSION)]),
    ],
)
def test_client_requests_are_the_bytes_of_the_hand_built_arrays(request_: protocol.Request, fields: list[Any]) -> None:
    xid, sent = sent_by_the_core(request_)
    assert sent == hand_built_frame([xid, *fields])


async def test_a_transaction_is_the_bytes_of_the_hand_built_multi() -> None:
    class Recorder:
        _data_bytes_max = 1 << 20

        async def _call(self, request: protocol.Request, path: str, watch: Any, extra: Any) -> list[Any]:
            self.request = request
            return []

    recorder = Recorder()
    transaction = Transaction(recorder)  # type: ignore[arg-type]
    transaction.create("/a", b"x", sequence=True)
    transaction.set_data("/b", b"y", 4)
    transaction.delete("/c")
    transaction.check("/d", 2)
    await transaction.commit()
    assert isinstance(recorder.request, MultiRequest)
    xid, sent = sent_by_the_core(recorder.request)
    ops = [
        [CREATE, "/a", b"x", int(CreateMode.PERSISTENT_SEQUENTIAL), 0, False],
        [SET_DATA, "/b", b"y", 4],
        [DELETE, "/c", -1],
        [CHECK, "/d", 2],
    ]
    assert sent == hand_built_frame([xid, MULTI, ops])


@pytest.mark.parametrize(
    ("xid", "zxid", "err", "result"),
    [
        (7, 0x100000003, 0, ["/a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]),
        (8, 0x100000003, -101, "no node: /missing"),
        (-(1 << 31), 1 << 40, 0, None),
        (9, 0x200000001, 0, [True, [["/x", None], True]]),
    ],
)
def test_replies_are_the_bytes_of_the_hand_built_arrays(xid: int, zxid: int, err: int, result: Any) -> None:
    assert protocol.encode_frame(protocol.encode_reply(xid, zxid, err, result)) == hand_built_frame(
        [xid, zxid, err, result]
    )


@pytest.mark.parametrize("event_type", list(EventType))
def test_watch_events_are_the_bytes_of_the_hand_built_arrays(event_type: EventType) -> None:
    event = WatchEvent(type=event_type, path="/w/x", zxid=0x300000005)
    assert protocol.encode_frame(protocol.encode_event(event)) == hand_built_frame(
        [WATCH_XID, 0x300000005, 0, [int(event_type), "/w/x"]]
    )
