"""The snapshot file: its header, its digest, and reading it back verified, in pieces.

File format (all integers big-endian)::

    magic    8 bytes   b"COORDSNP"
    version  1 byte    1
    zxid     8 bytes   the last txn the payload includes
    length   8 bytes   payload length
    digest  32 bytes   sha256 over version, zxid, length and the payload
    payload  length bytes, opaque (produced and read by the tree)

These are the file-level helpers of :class:`~coord.storage.snapshot.SnapshotStore`
(which owns the directory: naming, atomic writes, staging a received snapshot,
purging): a file is never trusted before its digest matched, and it is read in
bounded pieces (a payload can be hundreds of megabytes), through
:class:`PayloadReader`, which hashes what it hands on so that a reader can decode and
verify in one pass. Blocking: call through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from coord.errors import StorageError, StorageFullError

if TYPE_CHECKING:
    from hashlib import _Hash as Hasher

log = logging.getLogger("coord.storage.snapshot")

MAGIC: Final = b"COORDSNP"
VERSION: Final = 1
HEADER: Final = struct.Struct(">8sBQQ32s")  # magic, version, zxid, length, digest
SIGNED: Final = struct.Struct(">BQQ")  # the header fields the digest covers, with the payload
READ_CHUNK: Final = 1 << 20


class PayloadReader:
    """A snapshot's payload read from an open file in pieces, hashed as it goes by."""

    def __init__(self, file: BinaryIO, length: int, *hashers: Hasher) -> None:
        self.hashers = hashers
        self._file = file
        self._remaining = length
        self._short = False

    def pieces(self) -> Iterator[bytes]:
        """The rest of the payload, a piece at a time (it stops early if the file is short)."""
        while self._remaining:
            piece = self._file.read(min(READ_CHUNK, self._remaining))
            if not piece:
                self._short = True
                return
            for hasher in self.hashers:
                hasher.update(piece)
            self._remaining -= len(piece)
            yield piece

    def finish(self) -> bool:
        """Read (and hash) what the consumer left; whether the file held the whole payload."""
        for _ in self.pieces():
            pass
        return not self._short


def read_header(path: Path, file: BinaryIO) -> tuple[int, int, bytes] | None:
    """``(zxid, length, digest)`` from the header of an open snapshot if it looks valid
    and the file has the stated length; None (with a warning) if not."""
    raw_header = file.read(HEADER.size)
    if len(raw_header) < HEADER.size:
        log.warning("skipping snapshot %s: torn header (%d bytes)", path, len(raw_header))
        return None
    magic, version, zxid, length, digest = HEADER.unpack(raw_header)
    if magic != MAGIC or version != VERSION:
        log.warning("skipping snapshot %s: bad magic or version %d", path, version)
        return None
    size = os.fstat(file.fileno()).st_size
    if size != HEADER.size + length:  # checked first: a damaged length may be huge
        log.warning("skipping snapshot %s: %d bytes long, header says %d", path, size, HEADER.size + length)
        return None
    return zxid, length, digest


def verifies(path: Path, zxid: int) -> bool:
    """Whether the snapshot file of ``zxid`` verifies completely (read in pieces)."""
    try:
        with open(path, "rb", buffering=0) as file:
            return verify_file(path, file, zxid) is not None
    except OSError as exc:
        log.warning("skipping snapshot %s: cannot read it: %s", path, exc)
        return False


def verify_file(path: Path, file: BinaryIO, zxid: int) -> int | None:
    """The payload length of an open snapshot of ``zxid`` that verifies completely,
    reading it in pieces; None (with a warning) if it does not."""
    try:
        header = read_header(path, file)
        if header is None:
            return None
        found, length, digest = header
        if found != zxid:
            log.warning("skipping snapshot %s: its zxid is now %#x, not %#x", path, found, zxid)
            return None
        reader = PayloadReader(file, length, hashlib.sha256(SIGNED.pack(VERSION, zxid, length)))
        if not reader.finish():
            log.warning("skipping snapshot %s: shorter than its header says", path)
            return None
    except OSError as exc:
        log.warning("skipping snapshot %s: cannot read it: %s", path, exc)
        return None
    if reader.hashers[0].digest() != digest:
        log.warning("skipping snapshot %s (zxid %#x): digest mismatch, the file is damaged", path, zxid)
        return None
    return length


def read_header_zxid(path: Path) -> int | None:
    """The header zxid if the header looks valid and the file has the stated length
    (:func:`read_header`'s checks); None (with a warning) if not."""
    try:
        with open(path, "rb") as file:
            header = read_header(path, file)
    except OSError as exc:
        log.warning("skipping snapshot %s: cannot read it: %s", path, exc)
        return None
    return None if header is None else header[0]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (``os.pwrite`` may write less)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def storage_error(exc: OSError, doing: str, zxid: int, directory: Path) -> StorageError | StorageFullError:
    """The error to raise for an I/O error: StorageFullError for a full disk."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"no space for snapshot {zxid:#x} in {directory}: {exc}")
    return StorageError(f"cannot {doing} snapshot {zxid:#x} in {directory}: {exc}")


def fsync_directory(directory: Path) -> None:
    """Make renames and new entries in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
