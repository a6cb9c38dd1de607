"""Decoding one big CBOR array element by element, from bytes that arrive in pieces.

A snapshot of the data tree is one CBOR array of hundreds of megabytes. It reaches a
follower in chunks and is read back from disk in pieces, and neither side may hold it
whole: :func:`array_items` decodes the array one element at a time from an iterable of
``bytes`` pieces of any sizes (they need not line up with the elements), so at most
about one element and one piece are in memory at once.

Why a file-like object that pretends to seek: cbor2's C decoder calls ``fp.read`` for
every item it decodes (a tree node is some thirty reads), which through a Python
``read`` method would cost more than the decoding itself. For a *seekable* file it
reads ahead ``read_size`` bytes at a time instead and, when :meth:`decode` returns,
seeks back over what it did not use. :class:`PieceReader` allows exactly that
backward seek (within the bytes of its last read), which is all the decoder needs, so
a 64 KiB read-ahead makes the Python calls negligible.

The outer array's head is parsed here rather than by cbor2, which would decode the
whole array in one call.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import IO, Any, Final, cast

import cbor2

__all__ = ["PieceReader", "array_items"]

_READ_AHEAD: Final = 64 << 10
"""Bytes the decoder reads at once (cbor2's ``read_size``): few Python calls, little memory."""

_ARRAY: Final = 4  # CBOR major type 4: array
_LENGTH_BYTES: Final = {24: 1, 25: 2, 26: 4, 27: 8}  # additional info -> bytes of the length that follow
_INDEFINITE: Final = 31  # additional info of an indefinite-length array, whose elements end at a break
_BREAK: Final = b"\xff"


class PieceReader:
    """A read-only binary file over an iterator of ``bytes`` pieces.

    Reads return exactly the bytes asked for unless the pieces run out. The only seek
    it allows is back (or forward) within the bytes the last :meth:`read` returned,
    which is how cbor2's decoder gives back its unused read-ahead.
    """

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._data = b""  # the bytes at hand: the last read's and the ones after them
        self._pos = 0  # the next byte of _data to return
        self._mark = 0  # where in _data the last read's bytes start (the lowest seek target)
        self._offset = 0  # the stream offset of _data[0]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all the rest if negative); fewer only at the end."""
        data, pos = self._data, self._pos
        if size is None or size < 0:
            wanted = None
        elif len(data) - pos >= size:
            self._mark = pos
            self._pos = pos + size
            return data[pos : pos + size]
        else:
            wanted = size - (len(data) - pos)
        # Not enough at hand: gather more pieces after what is left of the current data.
        parts = [data[pos:]] if pos < len(data) else []  # (one part is joined without a copy)
        for piece in self._pieces:
            parts.append(piece)
            if wanted is not None:
                wanted -= len(piece)
                if wanted <= 0:
                    break
        self._offset += pos
        self._data = data = b"".join(parts)
        self._mark = 0
        self._pos = len(data) if size is None or size < 0 else min(size, len(data))
        return data[: self._pos] if self._pos < len(data) else data

    def tell(self) -> int:
        return self._offset + self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_SET:
            target = offset - self._offset
        else:
            raise io.UnsupportedOperation("a piece reader cannot seek from its end")
        if not self._mark <= target <= len(self._data):
            raise io.UnsupportedOperation("a piece reader seeks only within the bytes of its last read")
        self._pos = target
        return self._offset + target


def _read_exactly(reader: PieceReader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise ValueError(f"the stream ends inside the array head ({len(data)} of {size} bytes)")
    return data


def array_items(pieces: Iterable[bytes]) -> Iterator[Any]:
    """The elements of the one CBOR array that ``pieces`` hold, decoded lazily, in order
    (each as :func:`cbor2.loads` would decode it).

    The array may have a definite length or an indefinite one (ended by a break
    byte): a writer that streams elements it has not counted yet uses the latter.

    Raises (when the element concerned is asked for):
        ValueError: the stream does not start with an array head, or ends early, or
            an element is malformed (the message is cbor2's), or bytes follow the
            last element.
    """
    reader = PieceReader(pieces)
    initial = _read_exactly(reader, 1)[0]
    major, info = initial >> 5, initial & 0x1F
    if major != _ARRAY:
        raise ValueError(f"not a CBOR array (initial byte {initial:#04x})")
    count: int | None
    if info < 24:
        count = info
    elif info in _LENGTH_BYTES:
        count = int.from_bytes(_read_exactly(reader, _LENGTH_BYTES[info]), "big")
    elif info == _INDEFINITE:
        count = None
    else:
        raise ValueError(f"not a well-formed CBOR array head (initial byte {initial:#04x})")
    # cbor2 asks for a file (IO[bytes]) and uses only read, seekable and seek of it.
    decoder = cbor2.CBORDecoder(cast("IO[bytes]", reader), read_size=_READ_AHEAD)
    decoded = 0
    while count is None or decoded < count:
        if count is None:
            peek = reader.read(1)
            if peek == _BREAK:
                break
            if not peek:
                raise ValueError(f"the stream ends inside the array, after {decoded} elements")
            reader.seek(-1, io.SEEK_CUR)
        try:
            item = decoder.decode()
        except cbor2.CBORDecodeError as error:
            raise ValueError(str(error)) from error
        decoded += 1
        yield item
    if reader.read(1):
        raise ValueError(f"bytes remain after the last of the array's {decoded} elements")
