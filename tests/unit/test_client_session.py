"""The client's sans-IO session core: requests, replies, events and watches, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client._registry import SET_WATCHES_BYTES_MAX
from client._session import (
    CHECK,
    CREATE,
    DELETE,
    SET_DATA,
    SYNC,
    Pending,
    SessionCore,
)
from client._watch import Watch, WatchEvent, WatchStream
from coord.errors import (
    BadArgumentsError,
    BadVersionError,
    ConnectionLossError,
    NodeExistsError,
    NoNodeError,
    RolledBackError,
    RuntimeInconsistencyError,
    ServerBehindError,
    SessionExpiredError,
)
from coord.protocol import (
    WATCH_XID,
    AddWatchMode,
    AddWatchRequest,
    CheckRequest,
    ConnectRequest,
    ConnectResponse,
    CreateRequest,
    DeleteRequest,
    EventType,
    ExistsRequest,
    FrameReader,
    GetChildrenRequest,
    GetDataRequest,
    MultiRequest,
    PingRequest,
    RemoveWatchesRequest,
    SetDataRequest,
    SetWatchesRequest,
    Stat,
    SyncRequest,
    WatcherType,
    decode_body,
    decode_handshake,
    decode_request,
    encode_frame,
    handshake_error,
)

STAT = Stat(5, 6, 1000, 2000, 1, 0, 0, 0, 3, 0, 5)
SESSION = 0x1234


def make_core(**kwargs: Any) -> tuple[SessionCore, list[Any]]:
    woken: list[Any] = []
    core = SessionCore(timeout_ms=10_000, wake=woken.append, **kwargs)
    return core, woken


def connected_core(**kwargs: Any) -> tuple[SessionCore, list[Any]]:
    core, woken = make_core(**kwargs)
    core.begin_connection()
    answer = core.receive_handshake(encode_frame(handshake_answer().to_wire()))
    assert answer is not None
    core.connection_made(answer)
    core.take_outgoing()
    return core, woken


def handshake_answer(session_id: int = SESSION, zxid: int = 7) -> ConnectResponse:
    return ConnectResponse(session_id=session_id, password=b"secret", timeout_ms=6000, zxid=zxid, server_id=1)


def reply(xid: int, result: Any = None, *, zxid: int = 10, err: int = 0) -> bytes:
    return encode_frame([xid, zxid, err, result])


def event(kind: EventType, path: str, *, zxid: int = 11) -> bytes:
    return encode_frame([WATCH_XID, zxid, 0, [int(kind), path]])


def handshake_of(frame: bytes) -> ConnectRequest:
    request = decode_handshake(decode_body(frame[4:]))
    assert isinstance(request, ConnectRequest)
    return request


def sent_requests(core: SessionCore) -> list[tuple[int, Any]]:
    reader = FrameReader(1 << 24)
    reader.feed(bytes(core.take_outgoing()))
    return [decode_request(decode_body(body)) for body in reader]


def get(core: SessionCore, path: str, watch: Watch | None = None) -> Pending:
    return core.send(GetDataRequest(path=path, watch=watch is not None), path, watch)


def exists(core: SessionCore, path: str, watch: Watch | None = None) -> Pending:
    return core.send(ExistsRequest(path=path, watch=watch is not None), path, watch)


def children(core: SessionCore, path: str, watch: Watch | None = None) -> Pending:
    return core.send(GetChildrenRequest(path=path, watch=watch is not None), path, watch)


# --- handshake ----------------------------------------------------------------------


def test_first_handshake_asks_for_a_new_session() -> None:
    core, _ = make_core()
    request = handshake_of(core.begin_connection())
    assert request.session_id == 0
    assert request.password == b""
    assert request.last_zxid == 0
    assert request.timeout_ms == 10_000


def test_handshake_answer_may_arrive_in_pieces() -> None:
    core, _ = make_core()
    core.begin_connection()
    frame = encode_frame(handshake_answer().to_wire())
    assert core.receive_handshake(frame[:3]) is None
    assert core.receive_handshake(frame[3:10]) is None
    assert core.receive_handshake(frame[10:]) == handshake_answer()


def test_frames_that_come_with_the_handshake_answer_are_kept() -> None:
    core, _ = connected_core()
    watch = Watch()
    armed = get(core, "/x", watch)
    core.receive(reply(armed.xid, [b"", STAT.to_wire()]))
    core.connection_lost(ConnectionLossError("gone"))
    core.begin_connection()
    data = encode_frame(handshake_answer().to_wire()) + event(EventType.NODE_DELETED, "/x", zxid=30)
    answer = core.receive_handshake(data)
    assert answer is not None
    core.connection_made(answer)
    core.receive(b"")
    assert watch._event == WatchEvent(EventType.NODE_DELETED, "/x")
    assert core.last_zxid == 30


def test_reconnect_handshake_carries_session_and_last_zxid() -> None:
    core, _ = connected_core()
    slot = get(core, "/a")
    core.receive(reply(slot.xid, [b"x", STAT.to_wire()], zxid=42))
    core.connection_lost(ConnectionLossError("gone"))
    request = handshake_of(core.begin_connection())
    assert (request.session_id, request.password, request.last_zxid) == (SESSION, b"secret", 42)
    assert request.timeout_ms == 6000  # the negotiated one


def test_handshake_zxid_does_not_raise_last_zxid() -> None:
    # last_zxid is what this client has seen; SetWatches relies on it to replay changes.
    core, _ = make_core()
    core.begin_connection()
    answer = core.receive_handshake(encode_frame(handshake_answer(zxid=999).to_wire()))
    assert answer is not None
    core.connection_made(answer)
    assert core.last_zxid == 0
    assert core.session_id == SESSION
    assert core.timeout_ms == 6000


def test_server_behind_refusal_raises_its_error() -> None:
    core, _ = make_core()
    core.begin_connection()
    with pytest.raises(ServerBehindError, match="behind"):
        core.receive_handshake(encode_frame(handshake_error(ServerBehindError.code, "server is behind")))
    assert core.expired is None


def test_session_expired_refusal_marks_the_session_expired() -> None:
    core, _ = connected_core()
    core.connection_lost(ConnectionLossError("gone"))
    core.begin_connection()
    with pytest.raises(SessionExpiredError):
        core.receive_handshake(encode_frame(handshake_error(SessionExpiredError.code, "expired")))
    assert isinstance(core.expired, SessionExpiredError)


def test_a_different_session_on_reconnect_counts_as_expired() -> None:
    core, _ = connected_core()
    core.connection_lost(ConnectionLossError("gone"))
    core.begin_connection()
    with pytest.raises(SessionExpiredError):
        core.receive_handshake(encode_frame(handshake_answer(session_id=SESSION + 1).to_wire()))
    assert core.expired is not None


# --- requests and replies -------------------------------------------------------------


def test_requests_are_framed_with_increasing_xids() -> None:
    core, _ = connected_core()
    first = get(core, "/a")
    second = core.send(SyncRequest(path="/b"), "/b")
    assert second.xid == first.xid + 1
    assert [item for item in sent_requests(core)] == [
        (first.xid, GetDataRequest(path="/a")),
        (second.xid, decode_request([second.xid, SYNC, "/b"])[1]),
    ]
    assert core.outgoing == b""


def test_xids_wrap_around_before_the_32_bit_limit() -> None:
    core, _ = connected_core()
    core._xid = (1 << 31) - 2
    assert get(core, "/a").xid == (1 << 31) - 1
    assert get(core, "/a").xid == 1


def test_replies_complete_requests_in_order_and_wake_their_waiters() -> None:
    core, woken = connected_core()
    slots = [
        core.send(CreateRequest(path="/a", data=b"v"), "/a"),
        get(core, "/a"),
        core.send(SetDataRequest(path="/a", data=b"w"), "/a"),
        exists(core, "/b"),
        children(core, "/"),
        core.send(SyncRequest(path="/"), "/"),
        core.send(DeleteRequest(path="/a"), "/a"),
    ]
    for index, slot in enumerate(slots):
        slot.waiter = f"task{index}"
    results = [
        ["/a", STAT.to_wire()],
        [b"v", STAT.to_wire()],
        STAT.to_wire(),
        None,
        [["a", "b"], STAT.to_wire()],
        "/",
        None,
    ]
    core.receive(b"".join(reply(slot.xid, result) for slot, result in zip(slots, results, strict=True)))
    assert [slot.value for slot in slots] == [
        ("/a", STAT),
        (b"v", STAT),
        STAT,
        None,
        (["a", "b"], STAT),
        "/",
        None,
    ]
    assert all(slot.done and slot.error is None for slot in slots)
    assert woken == [f"task{index}" for index in range(len(slots))]
    assert not core.pending


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_replies_split_at_any_boundary_decode_the_same(cuts: list[int]) -> None:
    core, _ = connected_core()
    slots = [get(core, f"/n{index}") for index in range(5)]
    data = b"".join(reply(slot.xid, [b"x" * slot.xid, STAT.to_wire()]) for slot in slots)
    offset = 0
    for cut in cuts:
        core.receive(data[offset : offset + cut])
        offset += cut
    core.receive(data[offset:])
    assert [slot.value for slot in slots] == [(b"x" * slot.xid, STAT) for slot in slots]


def test_an_error_reply_raises_the_typed_error_naming_the_path() -> None:
    core, _ = connected_core()
    missing = get(core, "/missing")
    taken = core.send(CreateRequest(path="/taken"), "/taken")
    stale = core.send(SetDataRequest(path="/v", data=b"", version=3), "/v")
    core.receive(
        reply(missing.xid, None, err=NoNodeError.code)
        + reply(taken.xid, "node exists", err=NodeExistsError.code)
        + reply(stale.xid, "/v", err=BadVersionError.code)
    )
    assert isinstance(missing.error, NoNodeError) and "/missing" in str(missing.error)
    assert isinstance(taken.error, NodeExistsError) and str(taken.error) == "node exists: /taken"
    assert isinstance(stale.error, BadVersionError) and str(stale.error) == "/v"


def test_every_frame_raises_last_zxid_but_never_lowers_it() -> None:
    core, _ = connected_core()
    first, second = get(core, "/a"), get(core, "/a")
    core.receive(reply(first.xid, [b"", STAT.to_wire()], zxid=50))
    assert core.last_zxid == 50
    core.receive(event(EventType.NODE_CREATED, "/z", zxid=60))
    assert core.last_zxid == 60
    core.receive(reply(second.xid, [b"", STAT.to_wire()], zxid=55))
    assert core.last_zxid == 60


def test_a_reply_for_another_xid_breaks_the_connection() -> None:
    core, _ = connected_core()
    slot = get(core, "/a")
    with pytest.raises(Exception, match="oldest outstanding"):
        core.receive(reply(slot.xid + 1, [b"", STAT.to_wire()]))


def test_a_reply_with_nothing_outstanding_breaks_the_connection() -> None:
    core, _ = connected_core()
    with pytest.raises(Exception, match="no request outstanding"):
        core.receive(reply(1, None))


def test_a_malformed_result_breaks_the_connection_and_fails_its_request() -> None:
    core, woken = connected_core()
    slot = get(core, "/a")
    slot.waiter = "task"
    with pytest.raises(Exception, match="malformed"):
        core.receive(reply(slot.xid, [b"", [1, 2, 3]]))
    assert isinstance(slot.error, ConnectionLossError)
    assert woken == ["task"]


def test_a_cancelled_caller_is_not_woken_but_the_reply_is_consumed() -> None:
    core, woken = connected_core()
    abandoned, live = get(core, "/a"), get(core, "/a")
    live.waiter = "live"
    core.receive(reply(abandoned.xid, [b"", STAT.to_wire()]) + reply(live.xid, [b"", STAT.to_wire()]))
    assert woken == ["live"]
    assert live.value == (b"", STAT)


def test_a_frame_over_the_limit_is_refused_before_sending() -> None:
    core, _ = connected_core(data_bytes_max=100)
    with pytest.raises(BadArgumentsError, match="over the limit"):
        core.send(SetDataRequest(path="/a", data=b"x" * (200 * 1024)), "/a")
    assert core.outgoing == b""
    assert not core.pending


def test_connection_lost_fails_pending_requests_and_keeps_watches() -> None:
    core, woken = connected_core()
    watch = Watch()
    armed = get(core, "/w", watch)
    core.receive(reply(armed.xid, [b"", STAT.to_wire()]))
    slot = get(core, "/a")
    slot.waiter = "task"
    core.connection_lost(ConnectionLossError("connection lost: reset"))
    assert isinstance(slot.error, ConnectionLossError)
    assert woken == ["task"]
    assert not core.pending
    assert core.watches.data == {"/w": [watch]}
    assert not watch.is_fired


def test_a_session_expired_reply_marks_the_session_expired() -> None:
    core, _ = connected_core()
    slot = get(core, "/a")
    core.receive(reply(slot.xid, "session expired", err=SessionExpiredError.code))
    assert isinstance(slot.error, SessionExpiredError)
    assert core.expired is not None


# --- multi --------------------------------------------------------------------------


def multi(core: SessionCore) -> Pending:
    ops = (
        CreateRequest(path="/a"),
        SetDataRequest(path="/b", data=b"x"),
        DeleteRequest(path="/c"),
        CheckRequest(path="/d", version=1),
    )
    kinds = [(CREATE, "/a"), (SET_DATA, "/b"), (DELETE, "/c"), (CHECK, "/d")]
    return core.send(MultiRequest(ops=ops), "", None, kinds)


def test_a_successful_multi_gives_kazoo_results() -> None:
    core, _ = connected_core()
    slot = multi(core)
    core.receive(reply(slot.xid, [True, [["/a", STAT.to_wire()], STAT.to_wire(), None, None]]))
    assert slot.value == ["/a", STAT, True, True]


def test_a_failed_multi_gives_an_error_instance_per_op() -> None:
    core, _ = connected_core()
    slot = multi(core)
    core.receive(reply(slot.xid, [False, [0, 0, NoNodeError.code, -2]]))
    assert slot.error is None
    kinds = [type(result) for result in slot.value]
    assert kinds == [RolledBackError, RolledBackError, NoNodeError, RuntimeInconsistencyError]
    assert "/c" in str(slot.value[2])


def test_a_failed_multi_is_understood_with_an_error_code_too() -> None:
    core, _ = connected_core()
    slot = multi(core)
    core.receive(reply(slot.xid, [False, [NoNodeError.code, -2, -2, -2]], err=NoNodeError.code))
    assert isinstance(slot.value[0], NoNodeError)


# --- one-shot watches ---------------------------------------------------------------


def test_a_data_watch_is_armed_by_the_reply_and_fires_once() -> None:
    core, _ = connected_core()
    watch = Watch()
    slot = get(core, "/x", watch)
    assert core.watches.data == {}
    core.receive(reply(slot.xid, [b"", STAT.to_wire()]))
    assert core.watches.data == {"/x": [watch]}
    core.receive(event(EventType.NODE_DATA_CHANGED, "/x", zxid=20))
    assert watch.is_fired
    assert watch._event == WatchEvent(EventType.NODE_DATA_CHANGED, "/x")
    assert watch._event.zxid == 20
    assert core.watches.data == {}
    core.receive(event(EventType.NODE_DELETED, "/x"))
    assert watch._event.type is EventType.NODE_DATA_CHANGED


def test_a_failed_get_arms_nothing() -> None:
    core, _ = connected_core()
    watch = Watch()
    slot = get(core, "/x", watch)
    core.receive(reply(slot.xid, None, err=NoNodeError.code))
    assert not core.watches


def test_exists_on_a_missing_node_arms_an_exist_watch_fired_by_creation() -> None:
    core, _ = connected_core()
    watch = Watch()
    slot = exists(core, "/x", watch)
    core.receive(reply(slot.xid, None))
    assert core.watches.exist == {"/x": [watch]}
    core.receive(event(EventType.NODE_CREATED, "/x"))
    assert watch._event == WatchEvent(EventType.NODE_CREATED, "/x")


def test_exists_on_an_existing_node_arms_a_data_watch() -> None:
    core, _ = connected_core()
    watch = Watch()
    slot = exists(core, "/x", watch)
    core.receive(reply(slot.xid, STAT.to_wire()))
    assert core.watches.data == {"/x": [watch]}


def test_child_watches_fire_on_children_changes_and_deletion_only() -> None:
    core, _ = connected_core()
    changed, deleted = Watch(), Watch()
    first, second = children(core, "/p", changed), children(core, "/q", deleted)
    core.receive(reply(first.xid, [[], STAT.to_wire()]) + reply(second.xid, [[], STAT.to_wire()]))
    core.receive(event(EventType.NODE_DATA_CHANGED, "/p"))
    assert not changed.is_fired
    core.receive(event(EventType.NODE_CHILDREN_CHANGED, "/p") + event(EventType.NODE_DELETED, "/q"))
    assert changed._event == WatchEvent(EventType.NODE_CHILDREN_CHANGED, "/p")
    assert deleted._event == WatchEvent(EventType.NODE_DELETED, "/q")


def test_one_event_fires_every_local_watch_on_the_path() -> None:
    core, _ = connected_core()
    watches = [Watch(), Watch(), Watch()]
    slots = [get(core, "/x", watches[0]), exists(core, "/x", watches[1]), children(core, "/x", watches[2])]
    core.receive(
        reply(slots[0].xid, [b"", STAT.to_wire()])
        + reply(slots[1].xid, STAT.to_wire())
        + reply(slots[2].xid, [[], None])
    )
    core.receive(event(EventType.NODE_DELETED, "/x"))
    assert all(watch._event == WatchEvent(EventType.NODE_DELETED, "/x") for watch in watches)
    assert not core.watches


def test_an_event_for_an_unwatched_path_is_ignored() -> None:
    core, _ = connected_core()
    core.receive(event(EventType.NODE_DELETED, "/nobody"))
    assert not core.watches


# --- persistent watches ---------------------------------------------------------------


def add_watch(core: SessionCore, path: str, *, recursive: bool) -> WatchStream:
    stream = WatchStream(path, recursive=recursive)
    slot = core.send(AddWatchRequest(path=path, mode=AddWatchMode(int(recursive))), path, stream, recursive)
    core.receive(reply(slot.xid, None))
    return stream


def drain(stream: WatchStream) -> list[WatchEvent]:
    events = []
    while stream._events:
        events.append(stream.receive_nowait())
    return events


def test_a_persistent_watch_hears_every_event_on_its_path_only() -> None:
    core, _ = connected_core()
    stream = add_watch(core, "/p", recursive=False)
    core.receive(
        event(EventType.NODE_DATA_CHANGED, "/p")
        + event(EventType.NODE_CHILDREN_CHANGED, "/p")
        + event(EventType.NODE_CREATED, "/p/child")
        + event(EventType.NODE_DATA_CHANGED, "/p")
    )
    assert drain(stream) == [
        WatchEvent(EventType.NODE_DATA_CHANGED, "/p"),
        WatchEvent(EventType.NODE_CHILDREN_CHANGED, "/p"),
        WatchEvent(EventType.NODE_DATA_CHANGED, "/p"),
    ]
    assert core.watches.persistent == {"/p": [stream]}


def test_a_recursive_watch_hears_its_subtree_but_not_children_changes() -> None:
    core, _ = connected_core()
    stream = add_watch(core, "/p", recursive=True)
    root = add_watch(core, "/", recursive=True)
    core.receive(
        event(EventType.NODE_CREATED, "/p/a/b")
        + event(EventType.NODE_CHILDREN_CHANGED, "/p/a")
        + event(EventType.NODE_DELETED, "/p")
        + event(EventType.NODE_CREATED, "/pq")
    )
    assert drain(stream) == [
        WatchEvent(EventType.NODE_CREATED, "/p/a/b"),
        WatchEvent(EventType.NODE_DELETED, "/p"),
    ]
    assert len(drain(root)) == 3


def test_an_add_watch_whose_caller_gave_up_is_not_registered() -> None:
    core, _ = connected_core()
    stream = WatchStream("/p", recursive=False)
    slot = core.send(AddWatchRequest(path="/p", mode=AddWatchMode.PERSISTENT), "/p", stream, False)
    stream._end()
    core.receive(reply(slot.xid, None))
    assert not core.watches


def test_forget_stream_reports_whether_it_was_the_last_on_its_path() -> None:
    core, _ = connected_core()
    first = add_watch(core, "/p", recursive=False)
    second = add_watch(core, "/p", recursive=False)
    assert core.watches.forget_stream(first) is False
    assert core.watches.forget_stream(second) is True
    assert core.watches.forget_stream(second) is False
    assert not core.watches


def test_remove_watches_reply_tells_the_local_watchers() -> None:
    core, _ = connected_core()
    data, child = Watch(), Watch()
    slots = [get(core, "/x", data), children(core, "/x", child)]
    core.receive(reply(slots[0].xid, [b"", STAT.to_wire()]) + reply(slots[1].xid, [[], None]))
    stream = add_watch(core, "/x", recursive=False)
    removal = core.send(RemoveWatchesRequest(path="/x", watcher_type=WatcherType.DATA), "/x", None, WatcherType.DATA)
    core.receive(reply(removal.xid, None))
    assert data._event == WatchEvent(EventType.DATA_WATCH_REMOVED, "/x")
    assert not child.is_fired
    removal = core.send(RemoveWatchesRequest(path="/x", watcher_type=WatcherType.ANY), "/x", None, WatcherType.ANY)
    core.receive(reply(removal.xid, None))
    assert child._event == WatchEvent(EventType.CHILD_WATCH_REMOVED, "/x")
    assert drain(stream) == [WatchEvent(EventType.PERSISTENT_WATCH_REMOVED, "/x")]
    assert stream.is_ended
    assert not core.watches


# --- reconnect and expiry -----------------------------------------------------------


def test_reconnect_restores_watches_with_set_watches_first() -> None:
    core, _ = connected_core()
    data, exist, child = Watch(), Watch(), Watch()
    slots = [get(core, "/d", data), exists(core, "/e", exist), children(core, "/c", child)]
    core.receive(
        reply(slots[0].xid, [b"", STAT.to_wire()], zxid=30)
        + reply(slots[1].xid, None, zxid=31)
        + reply(slots[2].xid, [[], None], zxid=32)
    )
    add_watch(core, "/p", recursive=False)
    add_watch(core, "/r", recursive=True)
    core.connection_lost(ConnectionLossError("gone"))
    core.begin_connection()
    answer = core.receive_handshake(encode_frame(handshake_answer().to_wire()))
    assert answer is not None
    core.connection_made(answer)
    get(core, "/after")
    requests = sent_requests(core)
    assert [request for _, request in requests] == [
        SetWatchesRequest(
            relative_zxid=32,
            data=("/d",),
            exist=("/e",),
            child=("/c",),
            persistent=("/p",),
            persistent_recursive=("/r",),
        ),
        GetDataRequest(path="/after"),
    ]
    # the server replays a change missed while disconnected as an event
    set_watches_xid = requests[0][0]
    core.receive(event(EventType.NODE_DATA_CHANGED, "/d", zxid=40) + reply(set_watches_xid, None, zxid=40))
    assert data._event == WatchEvent(EventType.NODE_DATA_CHANGED, "/d")


def test_reconnect_without_watches_sends_no_set_watches() -> None:
    core, _ = connected_core()
    core.connection_lost(ConnectionLossError("gone"))
    core.begin_connection()
    answer = core.receive_handshake(encode_frame(handshake_answer().to_wire()))
    assert answer is not None
    core.connection_made(answer)
    assert core.outgoing == b""


def test_many_watches_are_restored_in_several_set_watches_requests() -> None:
    core, _ = connected_core()
    paths = [f"/node-with-a-rather-long-name-{index:06d}" for index in range(20_000)]
    for path in paths:
        core.watches.exist[path] = [Watch()]
    core.connection_lost(ConnectionLossError("gone"))
    core.begin_connection()
    answer = core.receive_handshake(encode_frame(handshake_answer().to_wire()))
    assert answer is not None
    core.connection_made(answer)
    requests = [request for _, request in sent_requests(core)]
    assert len(requests) > 1
    assert all(isinstance(request, SetWatchesRequest) for request in requests)
    assert [path for request in requests for path in request.exist] == paths
    assert all(sum(len(path) for path in request.exist) <= SET_WATCHES_BYTES_MAX for request in requests)


def test_watches_that_already_fired_elsewhere_are_not_restored() -> None:
    core, _ = connected_core()
    watch = Watch()
    slots = [get(core, "/a", watch), get(core, "/b", watch)]
    core.receive(reply(slots[0].xid, [b"", STAT.to_wire()]) + reply(slots[1].xid, [b"", STAT.to_wire()]))
    core.receive(event(EventType.NODE_DELETED, "/a"))
    core.connection_lost(ConnectionLossError("gone"))
    core.begin_connection()
    answer = core.receive_handshake(encode_frame(handshake_answer().to_wire()))
    assert answer is not None
    core.connection_made(answer)
    assert sent_requests(core) == []


def test_expire_fails_requests_watches_and_streams() -> None:
    core, woken = connected_core()
    watch = Watch()
    slot = get(core, "/x", watch)
    core.receive(reply(slot.xid, [b"", STAT.to_wire()]))
    stream = add_watch(core, "/p", recursive=True)
    pending = core.send(PingRequest(), "")
    pending.waiter = "task"
    core.expire(SessionExpiredError("gone for good"))
    assert isinstance(pending.error, SessionExpiredError)
    assert woken == ["task"]
    assert isinstance(watch._error, SessionExpiredError)
    assert isinstance(stream._error, SessionExpiredError)
    assert not core.watches
