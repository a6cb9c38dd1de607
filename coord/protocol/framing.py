"""Frames: a 4-byte big-endian length, then exactly one CBOR item.

The length is checked against the limit *before* the body is read
(:class:`FrameReader`), so a hostile peer cannot make the server buffer more than
one frame's worth; each body is then decoded on its own by the strict decoder
(:mod:`coord.cbor`: no tags, no trailing bytes, bounded depth). The limits live
here because the frame size follows from the largest value a znode may hold.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Final

import cbor2

from coord.cbor import StrictCBORError, decode_strict
from coord.protocol.shapes import ProtocolError

DATA_BYTES_MAX_DEFAULT: Final = 1 << 20
"""Largest znode value accepted by default (1 MiB, as ZooKeeper's jute.maxbuffer)."""

FRAME_OVERHEAD_BYTES: Final = 64 * 1024
"""Room in a frame beyond the data limit for paths, names and fields."""

HEADER = struct.Struct(">I")


def frame_bytes_max(data_bytes_max: int = DATA_BYTES_MAX_DEFAULT) -> int:
    """The largest frame body accepted when values may be ``data_bytes_max`` long."""
    return data_bytes_max + FRAME_OVERHEAD_BYTES


def encode_frame(item: Any) -> bytes:
    """One frame: length prefix and CBOR body."""
    body = cbor2.dumps(item)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Any:
    """Decode one frame body: exactly one CBOR item, no tags, bounded depth.

    Raises:
        ProtocolError: the body is not exactly one acceptable CBOR item.
    """
    try:
        item = decode_strict(body, max_depth=8)
    except StrictCBORError as error:
        raise ProtocolError(str(error)) from None
    if type(item) is float:
        raise ProtocolError("floats are not allowed")
    return item


class FrameReader:
    """Sans-IO splitter of a byte stream into frame bodies.

    Feed it what the socket gave; iterate it for the complete frames so far. The
    length prefix is checked against ``frame_bytes_max`` as soon as its 4 bytes are
    in, before any of the body is buffered beyond what already arrived.
    """

    __slots__ = ("_buffer", "_frame_bytes_max")

    def __init__(self, frame_bytes_max: int) -> None:
        self._buffer = bytearray()
        self._frame_bytes_max = frame_bytes_max

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def needed(self) -> int:
        """Bytes still needed before the next frame is complete (0 if it is)."""
        if len(self._buffer) < 4:
            return 4 - len(self._buffer)
        (length,) = HEADER.unpack_from(self._buffer)
        return max(0, 4 + int(length) - len(self._buffer))

    def ready(self) -> bool:
        """Whether a complete frame is buffered.

        Raises:
            ProtocolError: the next frame's length prefix is over the limit.
        """
        buffer = self._buffer
        if len(buffer) < 4:
            return False
        length: int = HEADER.unpack_from(buffer)[0]
        if length > self._frame_bytes_max:
            raise ProtocolError(f"frame of {length} bytes is over the limit of {self._frame_bytes_max}")
        return len(buffer) >= 4 + length

    def __iter__(self) -> Iterator[bytes]:
        buffer = self._buffer
        offset = 0
        try:
            while len(buffer) - offset >= 4:
                (length,) = HEADER.unpack_from(buffer, offset)
                if length > self._frame_bytes_max:
                    raise ProtocolError(f"frame of {length} bytes is over the limit of {self._frame_bytes_max}")
                end = offset + 4 + length
                if len(buffer) < end:
                    break
                body = bytes(buffer[offset + 4 : end])
                # Consume before yielding: a consumer that stops early (returns from
                # its loop) must not see this frame again.
                offset = end
                yield body
        finally:
            del buffer[:offset]
