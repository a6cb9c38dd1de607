"""The wire codec: frames, strict shapes, path rules, error codes."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coord import errors, protocol
from coord.protocol import (
    AddWatchMode,
    AddWatchRequest,
    CheckRequest,
    CloseSessionRequest,
    CreateMode,
    CreateRequest,
    DeleteRequest,
    ExistsRequest,
    FrameReader,
    GetChildrenRequest,
    GetDataRequest,
    MultiRequest,
    PingRequest,
    ProtocolError,
    RemoveWatchesRequest,
    SetDataRequest,
    SetWatchesRequest,
    SyncRequest,
    WatcherType,
)

ALL_REQUESTS = [
    CreateRequest(path="/a", data=b"x", mode=CreateMode.EPHEMERAL_SEQUENTIAL, makepath=True),
    CreateRequest(path="/t", mode=CreateMode.PERSISTENT_WITH_TTL, ttl_ms=500),
    DeleteRequest(path="/a", version=3),
    ExistsRequest(path="/a", watch=True),
    GetDataRequest(path="/a", watch=False),
    SetDataRequest(path="/a", data=b"y", version=-1),
    GetChildrenRequest(path="/", watch=True, include_stat=True),
    SyncRequest(path="/"),
    PingRequest(),
    MultiRequest(
        ops=(
            CreateRequest(path="/m"),
            CheckRequest(path="/m", version=0),
            SetDataRequest(path="/m", data=b"1"),
            DeleteRequest(path="/m"),
        )
    ),
    AddWatchRequest(path="/w", mode=AddWatchMode.PERSISTENT_RECURSIVE),
    RemoveWatchesRequest(path="/w", watcher_type=WatcherType.ANY),
    SetWatchesRequest(
        relative_zxid=7, data=("/a",), exist=("/b",), child=("/",), persistent=(), persistent_recursive=("/r",)
    ),
    CloseSessionRequest(),
]


@pytest.mark.parametrize("request_", ALL_REQUESTS, ids=lambda r: type(r).__name__)
def test_every_request_round_trips_through_a_frame(request_: protocol.Request) -> None:
    frame = protocol.encode_frame(protocol.encode_request(42, request_))
    reader = FrameReader(protocol.frame_bytes_max())
    reader.feed(frame)
    (body,) = list(reader)
    assert protocol.decode_request(protocol.decode_body(body)) == (42, request_)


def test_frame_reader_splits_a_stream_fed_byte_by_byte() -> None:
    frames = b"".join(protocol.encode_frame([i, 11]) for i in range(5))
    reader = FrameReader(1000)
    bodies = []
    for index in range(len(frames)):
        reader.feed(frames[index : index + 1])
        bodies.extend(reader)
    assert [protocol.decode_request(protocol.decode_body(body))[0] for body in bodies] == list(range(5))
    assert reader.buffered == 0


def test_frame_reader_rejects_an_oversized_length_before_the_body_arrives() -> None:
    reader = FrameReader(100)
    reader.feed(protocol.HEADER.pack(101))
    with pytest.raises(ProtocolError, match="over the limit"):
        list(reader)


@pytest.mark.parametrize(
    "body",
    [
        cbor2.dumps(cbor2.CBORTag(1, 5)),  # a datetime
        cbor2.dumps(2**70),  # a bignum (tag 2)
        cbor2.dumps(cbor2.CBORTag(4242, 5)),  # an unknown tag
        cbor2.dumps([1, 2]) + b"\x00",  # stray bytes
        b"\xff",  # a lone break
        b"",  # nothing
        cbor2.dumps(1.5),  # a float
        cbor2.dumps([[[[[[[[[[1]]]]]]]]]]),  # too deep
    ],
)
def test_decode_body_refuses_what_no_client_sends(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_body(body)


@pytest.mark.parametrize(
    ("item", "has_xid", "code"),
    [
        ("hello", False, errors.BadArgumentsError.code),
        ([1], False, errors.BadArgumentsError.code),
        (["x", 4, "/a", False], False, errors.BadArgumentsError.code),
        ([1, 999], True, errors.UnimplementedError.code),
        ([1, 4, "/a"], True, errors.BadArgumentsError.code),
        ([1, 4, b"/a", False], True, errors.BadArgumentsError.code),
        ([1, 4, "/a", 1], True, errors.BadArgumentsError.code),
        ([1, 13, "/a", 1], True, errors.BadArgumentsError.code),  # check outside multi
        ([1, 14, [[4, "/a", False]]], True, errors.BadArgumentsError.code),  # get inside multi
        ([1, 1, "/a", b"", 99, 0, False], True, errors.BadArgumentsError.code),  # bad create mode
        ([1, 5, "/a", b"", 2**64], True, errors.BadArgumentsError.code),
    ],
)
def test_bad_request_shapes_are_rejected_with_or_without_xid(item: object, has_xid: bool, code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_request(item)
    assert (caught.value.xid is not None) == has_xid
    assert caught.value.code == code


@pytest.mark.parametrize(
    "path",
    ["/", "/a", "/a/b", "/a.b", "/...", "/a b/c", "/zookeeper", "/ünïcode"],
)
def test_valid_paths_pass(path: str) -> None:
    assert protocol.validate_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "a",
        "a/b",
        "/a/",
        "//a",
        "/a//b",
        "/a/./b",
        "/a/../b",
        "/.",
        "/..",
        "/a\x00b",
        "/a\x1fb",
        "/\u0085",
        "/\ud800",
    ],
)
def test_invalid_paths_raise_bad_arguments(path: str) -> None:
    with pytest.raises(errors.BadArgumentsError):
        protocol.validate_path(path)


def test_sequential_path_may_end_in_slash() -> None:
    assert protocol.validate_path("/queue/", sequential=True) == "/queue/"
    with pytest.raises(errors.BadArgumentsError):
        protocol.validate_path("/queue/")


def test_path_helpers() -> None:
    assert protocol.parent_of("/a/b") == "/a"
    assert protocol.parent_of("/a") == "/"
    assert protocol.basename("/a/b") == "b"
    assert protocol.join("/", "a") == "/a"
    assert protocol.join("/a", "b") == "/a/b"
    assert protocol.is_reserved("/coord/x") and protocol.is_reserved("/coord")
    assert not protocol.is_reserved("/coordinates")


def test_error_codes_map_back_to_their_classes() -> None:
    for cls in (
        errors.NoNodeError,
        errors.NodeExistsError,
        errors.BadVersionError,
        errors.NotEmptyError,
        errors.SessionExpiredError,
        errors.ConnectionLossError,
        errors.NoChildrenForEphemeralsError,
        errors.RolledBackError,
        errors.RuntimeInconsistencyError,
        errors.StorageFullError,
    ):
        assert errors.error_for_code(cls.code) is cls
        assert isinstance(errors.make_error(cls.code, "m"), cls)
    assert errors.error_for_code(-12345) is errors.CoordSystemError
    assert errors.NoNodeError.code == -101 and errors.NodeExistsError.code == -110


def test_handshake_round_trip_and_rejects() -> None:
    connect = protocol.ConnectRequest(last_zxid=5, session_id=9, password=b"p" * 16, timeout_ms=3000)
    assert protocol.decode_handshake(protocol.decode_body(protocol.encode_frame(connect.to_wire())[4:])) == connect
    assert isinstance(protocol.decode_handshake({"type": "status"}), protocol.StatusRequest)
    for bad in [[], {"type": "nope"}, {"type": "connect"}, {1: 2}, {"type": "connect", **{k: "x" for k in "ab"}}]:
        with pytest.raises(ProtocolError):
            protocol.decode_handshake(bad)
    response = protocol.ConnectResponse(session_id=1, password=b"x", timeout_ms=10, zxid=3, server_id=2)
    assert protocol.decode_handshake_reply(response.to_wire()) == response
    assert protocol.decode_handshake_reply(protocol.handshake_error(-112, "gone")) == (-112, "gone")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_anything_but_protocol_error(garbage: bytes) -> None:
    try:
        item = protocol.decode_body(garbage)
        protocol.decode_request(item)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**64), max_value=2**64)
        | st.text(max_size=5)
        | st.binary(max_size=5),
        lambda children: st.lists(children, max_size=6),
        max_leaves=20,
    )
)
def test_random_shapes_decode_or_raise_protocol_error(item: object) -> None:
    try:
        xid, request = protocol.decode_request(item)
    except ProtocolError:
        return
    # Whatever was accepted re-encodes to an equal request.
    assert protocol.decode_request(protocol.encode_request(xid, request)) == (xid, request)


def test_frame_reader_consumes_a_frame_even_when_the_consumer_stops_early() -> None:
    reader = FrameReader(1000)
    reader.feed(protocol.encode_frame([1, 11]) + protocol.encode_frame([2, 11]))
    for body in reader:
        first = protocol.decode_request(protocol.decode_body(body))[0]
        break
    (body,) = list(reader)
    assert (first, protocol.decode_request(protocol.decode_body(body))[0]) == (1, 2)
