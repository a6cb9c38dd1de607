"""How the durable log lays out its data in LMDB, and how a damaged record is recognised.

The layout is the log's on-disk contract: a server must read what an older run of it
wrote, so it lives apart from :class:`~coord.storage.log.TxnLog`'s behaviour, in one
place, with the check that says whether a stored record is still what was written.

One LMDB environment per server (``data_dir/log/``) holds two named databases:

- ``log``: key = zxid as 8 bytes big-endian (so LMDB's byte order is zxid order and
  appends always go to the right edge of the B+tree), value = CRC32 (4 bytes,
  big-endian) of *key and txn*, then the txn bytes. The txn is opaque here.
- ``meta``: small durable integers (``accepted_epoch``, ``current_epoch``, and the
  log's own ``log.*`` keys), each 8 bytes big-endian.

**Corruption.** LMDB commits are atomic (copy-on-write pages, then one meta page
switch), so a crash never leaves a torn record: what a reader sees is exactly some
committed prefix of appends. A checksum that does not match therefore means that
*durable* data - possibly acknowledged to a quorum - was damaged on the medium or
by something writing into our files, so decoding it raises :class:`CorruptLogError`
naming the zxid rather than skipping it.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

import lmdb

from coord.errors import DataInconsistencyError, StorageError
from coord.zxid import describe_zxid, log_follows

ACCEPTED_EPOCH: Final = "accepted_epoch"
"""Meta key of the last epoch this server accepted (NEWEPOCH), durable before ACKEPOCH."""
CURRENT_EPOCH: Final = "current_epoch"
"""Meta key of the epoch whose history this server holds (NEWLEADER), durable before its ACK."""

_FORMAT: Final = 1
_RESERVED_PREFIX: Final = "log."
_META_FORMAT: Final = b"log.format"
_META_BASE: Final = b"log.base_zxid"

_KEY = struct.Struct(">Q")
_CRC = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ZXID_LIMIT: Final = 1 << 64


class CorruptLogError(DataInconsistencyError):
    """Durable log data is damaged (bad checksum, gap, undecodable record).

    Acknowledged data may be affected, so this is never skipped: the server must
    refuse to start, loudly, until an operator repairs or wipes this server's data.
    """

    def __init__(self, message: str, *, zxid: int | None = None) -> None:
        super().__init__(message)
        self.zxid = zxid


def _checksum(key: bytes | memoryview, txn: bytes | memoryview) -> int:
    # The key is covered too, so a record that ends up under the wrong key is caught.
    return zlib.crc32(txn, zlib.crc32(key))


def _encode_entry(key: bytes, txn: bytes) -> bytes:
    """The stored value of an entry: the checksum of key and txn, then the txn."""
    return _CRC.pack(_checksum(key, txn)) + txn


def _decode_entry(key: bytes | memoryview, value: bytes | memoryview, *, verify: bool) -> tuple[int, bytes]:
    """Split a stored record into ``(zxid, txn)``, checking its checksum if asked."""
    if len(key) != _KEY.size:
        raise CorruptLogError(f"a log key is {len(key)} bytes long, not {_KEY.size}: {bytes(key).hex()}")
    zxid = _KEY.unpack(key)[0]
    if len(value) < _CRC.size:
        raise CorruptLogError(f"log entry {describe_zxid(zxid)} is truncated ({len(value)} bytes)", zxid=zxid)
    txn = bytes(value[_CRC.size :])
    if verify and _CRC.unpack(value[: _CRC.size])[0] != _checksum(key, txn):
        raise CorruptLogError(f"log entry {describe_zxid(zxid)} fails its checksum: damaged on disk", zxid=zxid)
    return zxid, txn


def _decode_u64(raw: bytes, name: str) -> int:
    if len(raw) != _U64.size:
        raise CorruptLogError(f"meta value {name!r} is {len(raw)} bytes long, not {_U64.size}")
    return int(_U64.unpack(raw)[0])


def _gap_error(previous: int, zxid: int) -> CorruptLogError:
    """The error for a stored entry that does not follow the one before it."""
    return CorruptLogError(
        f"log entry {describe_zxid(zxid)} does not follow {describe_zxid(previous)}: a gap",
        zxid=zxid,
    )


def _verify_entries(txn: lmdb.Transaction, log_db: lmdb._Database, meta_db: lmdb._Database) -> int:
    """Check every entry's checksum and that it follows the one before (the first: the base).

    Returns:
        The number of entries checked.

    Raises:
        CorruptLogError: at the first bad entry, naming its zxid.
    """
    count = 0
    raw_base = txn.get(_META_BASE, db=meta_db)
    previous = 0 if raw_base is None else _decode_u64(bytes(raw_base), "log.base_zxid")
    for key, value in txn.cursor(db=log_db).iternext(keys=True, values=True):
        zxid, _ = _decode_entry(key, value, verify=True)
        if not log_follows(previous, zxid):
            raise _gap_error(previous, zxid)
        previous = zxid
        count += 1
    return count


def _read_error(exc: lmdb.Error) -> DataInconsistencyError | StorageError:
    if isinstance(exc, lmdb.CorruptedError | lmdb.PageNotFoundError | lmdb.InvalidError):
        return CorruptLogError(f"the log's LMDB file is damaged: {exc}")
    return StorageError(f"cannot read the log: {exc}")
