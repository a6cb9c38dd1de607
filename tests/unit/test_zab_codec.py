"""The ZAB peer codec: every message round-trips; anything malformed is a ValueError."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coord.zab import (
    MESSAGE_TYPES,
    Ack,
    AckEpoch,
    AckNewLeader,
    AppToFollower,
    AppToLeader,
    Commit,
    Diff,
    FollowerInfo,
    Message,
    NewEpoch,
    NewLeader,
    Notification,
    Ping,
    PingAck,
    Proposal,
    Role,
    Snap,
    SnapAck,
    SnapChunk,
    SnapEnd,
    SyncEntries,
    Trunc,
    UpToDate,
    decode_message,
    encode_message,
    make_zxid,
)
from coord.zxid import COUNTER_MAX, EPOCH_MAX, ZXID_MAX

zxids = st.integers(min_value=0, max_value=ZXID_MAX)
epochs = st.integers(min_value=0, max_value=EPOCH_MAX)
counts = st.integers(min_value=0, max_value=(1 << 63) - 1)
blobs = st.binary(max_size=64)


@st.composite
def batches(draw: st.DrawFn) -> tuple[int, tuple[bytes, ...]]:
    txns = tuple(draw(st.lists(blobs, min_size=1, max_size=5)))
    epoch = draw(epochs)
    first = draw(st.integers(min_value=1, max_value=COUNTER_MAX + 1 - len(txns)))
    return make_zxid(epoch, first), txns


def _proposal(batch: tuple[int, tuple[bytes, ...]]) -> Proposal:
    return Proposal(zxid=batch[0], txns=batch[1])


def _sync_entries(handshake: int, previous: int, batch: tuple[int, tuple[bytes, ...]]) -> SyncEntries:
    return SyncEntries(handshake=handshake, previous_zxid=previous, zxid=batch[0], txns=batch[1])


MESSAGES: dict[type, st.SearchStrategy[Message]] = {
    Notification: st.builds(
        Notification,
        leader=counts,
        zxid=zxids,
        epoch=epochs,
        election_round=counts,
        state=st.sampled_from(Role),
    ),
    FollowerInfo: st.builds(
        FollowerInfo, accepted_epoch=epochs, last_zxid=zxids, delivered_zxid=zxids, handshake=counts
    ),
    NewEpoch: st.builds(NewEpoch, epoch=epochs, handshake=counts),
    AckEpoch: st.builds(AckEpoch, current_epoch=epochs, last_zxid=zxids, handshake=counts, is_first_ack=st.booleans()),
    Diff: st.builds(Diff, handshake=counts, zxid=zxids),
    Trunc: st.builds(Trunc, handshake=counts, zxid=zxids),
    Snap: st.builds(Snap, handshake=counts, zxid=zxids),
    SnapChunk: st.builds(SnapChunk, handshake=counts, offset=counts, data=blobs),
    SnapEnd: st.builds(SnapEnd, handshake=counts, size=counts, digest=st.binary(min_size=32, max_size=32)),
    SnapAck: st.builds(SnapAck, handshake=counts, offset=counts),
    SyncEntries: st.builds(_sync_entries, counts, zxids, batches()),
    NewLeader: st.builds(NewLeader, epoch=epochs, zxid=zxids, handshake=counts),
    AckNewLeader: st.builds(AckNewLeader, epoch=epochs, handshake=counts),
    UpToDate: st.builds(UpToDate, epoch=epochs, zxid=zxids, handshake=counts),
    Proposal: st.builds(_proposal, batches()),
    Ack: st.builds(Ack, zxid=zxids),
    Commit: st.builds(Commit, zxid=zxids),
    Ping: st.builds(Ping, epoch=epochs, seq=counts, commit_zxid=zxids),
    PingAck: st.builds(PingAck, epoch=epochs, seq=counts),
    AppToFollower: st.builds(AppToFollower, epoch=epochs, commit_zxid=zxids, payload=blobs),
    AppToLeader: st.builds(AppToLeader, epoch=epochs, payload=blobs),
}


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=lambda kind: kind.__name__)
@given(data=st.data())
def test_message_round_trips(kind: type, data: st.DataObject) -> None:
    message = data.draw(MESSAGES[kind])
    assert decode_message(encode_message(message)) == message


@given(message=st.one_of(*MESSAGES.values()))
def test_decoded_message_has_exact_types(message: Message) -> None:
    decoded = decode_message(encode_message(message))
    assert type(decoded) is type(message)
    if isinstance(decoded, Proposal | SyncEntries):
        assert type(decoded.txns) is tuple


def _item(message: Message) -> list:
    return cbor2.loads(encode_message(message))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",  # not CBOR
        cbor2.dumps({"type": 13}),  # a map, not an array
        cbor2.dumps([]),
        cbor2.dumps([99, 1]),  # unknown message type
        cbor2.dumps(["13", 1]),  # the type is not an int
        cbor2.dumps([13]),  # too few fields
        cbor2.dumps([13, 1, 2]),  # too many fields
        cbor2.dumps([13, -1]),  # negative zxid
        cbor2.dumps([13, 1 << 64]),  # zxid out of range (a bignum tag, refused)
        cbor2.dumps([13, True]),  # bool is not an int
        cbor2.dumps([13, 1.0]),  # float is not an int
        cbor2.dumps([12, make_zxid(1, 1), []]),  # an empty batch
        cbor2.dumps([12, make_zxid(1, 1), ["x"]]),  # text, not bytes
        cbor2.dumps([12, make_zxid(1, 0), [b"x"]]),  # counter 0 names no txn
        cbor2.dumps([12, make_zxid(1, COUNTER_MAX), [b"x", b"y"]]),  # the batch leaves its epoch
        cbor2.dumps([1, 1, 2, 3, 4, 9]),  # not a peer state
        cbor2.dumps([3, EPOCH_MAX + 1, 5]),  # epoch out of range
        cbor2.dumps([4, 1, 1, 1, 1]),  # an int where a flag belongs
        cbor2.dumps([13, 1]) + b"\x00",  # trailing bytes
        cbor2.dumps(cbor2.CBORTag(4242, [13, 1])),  # a tag
        cbor2.dumps([17, 1, 1, cbor2.CBORTag(1, 5)]),  # a tag inside
        cbor2.dumps([12, 1, [[[[b"deep"]]]]]),  # too deep
    ],
)
def test_malformed_message_is_rejected(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_message(data)


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(ValueError):
        encode_message("not a message")  # type: ignore[arg-type]


def test_wire_shape_is_a_tagged_array_in_field_order() -> None:
    assert _item(Ack(zxid=7)) == [13, 7]
    assert _item(Proposal(zxid=make_zxid(2, 1), txns=(b"a", b"b"))) == [12, make_zxid(2, 1), [b"a", b"b"]]
    assert _item(Notification(leader=3, zxid=5, epoch=2, election_round=9, state=Role.LEADING)) == [1, 3, 5, 2, 9, 2]
