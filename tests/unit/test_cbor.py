"""coord.cbor: the one strict CBOR decoder, and how the client protocol and the peer codec map its error."""

from __future__ import annotations

import cbor2
import pytest

from coord import protocol
from coord.cbor import StrictCBORError, decode_strict
from coord.zab import decode_message


def nested(depth: int) -> bytes:
    item: list[object] = []
    for _ in range(depth - 1):
        item = [item]
    return cbor2.dumps(item)


def test_one_item_decodes() -> None:
    assert decode_strict(cbor2.dumps([1, "a", b"b", {"k": None}]), max_depth=4) == [1, "a", b"b", {"k": None}]


@pytest.mark.parametrize(
    "data",
    [
        cbor2.dumps(cbor2.CBORTag(1, 0)),  # a datetime tag cbor2 would decode itself
        cbor2.dumps(cbor2.CBORTag(4242, [1])),  # an unknown tag
        cbor2.dumps(1 << 64),  # a bignum (tag 2)
        b"\xa2\x01\x01\x01\x02",  # a duplicate map key
        b"\x82\x01",  # truncated
        b"\xff",  # not CBOR
        nested(6),  # too deep
    ],
)
def test_refused_items_are_malformed(data: bytes) -> None:
    with pytest.raises(StrictCBORError, match=r"^malformed CBOR: ") as caught:
        decode_strict(data, max_depth=4)
    assert caught.value.stray == 0


def test_the_depth_is_the_callers() -> None:
    assert decode_strict(nested(6), max_depth=8) == [[[[[[]]]]]]


def test_trailing_bytes_are_counted() -> None:
    with pytest.raises(StrictCBORError, match=r"^2 stray bytes after the CBOR item$") as caught:
        decode_strict(cbor2.dumps([13, 1]) + b"\x00\x00", max_depth=4)
    assert caught.value.stray == 2


def test_each_caller_maps_the_error_to_its_own() -> None:
    data = cbor2.dumps([13, 1]) + b"\x00"
    with pytest.raises(protocol.ProtocolError, match=r"^1 stray bytes after the CBOR item$"):
        protocol.decode_body(data)
    with pytest.raises(ValueError, match=r"^1 stray bytes after the message$") as caught:
        decode_message(data)
    assert type(caught.value) is ValueError
    tagged = cbor2.dumps(cbor2.CBORTag(1, 0))
    with pytest.raises(protocol.ProtocolError, match=r"^malformed CBOR: .*CBOR tags are not allowed"):
        protocol.decode_body(tagged)
    with pytest.raises(ValueError, match=r"^malformed CBOR: .*CBOR tags are not allowed"):
        decode_message(tagged)
