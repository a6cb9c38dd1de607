"""Snapshots of the data tree: whole files, written atomically, verified on load.

Theory of operation
-------------------
A snapshot is the tree's serialized state after applying every txn up to some zxid.
Recovery is *newest valid snapshot + replay of the log after its zxid*, so once a
snapshot is durable the log up to its zxid may be purged.

File format (all integers big-endian)::

    magic    8 bytes   b"COORDSNP"
    version  1 byte    1
    zxid     8 bytes   the last txn the payload includes
    length   8 bytes   payload length
    digest  32 bytes   sha256 over version, zxid, length and the payload
    payload  length bytes, opaque (produced and read by the tree)

The digest covers the header fields as well as the payload (not the payload alone):
the zxid in the header is the one we trust, so a flipped bit in it must be caught
like a flipped bit in the data, or recovery would replay the log from the wrong place.

**The header is the truth** (docs/correctness.md, rule 4). Files are *named*
``snapshot.<zxid as 16 hex digits>`` for the operator's benefit, but nothing here
takes a zxid from a name: a file whose name disagrees with its header is used at the
header's zxid (ZOOKEEPER-582 lost data by trusting names).

**Atomic, durable writes.** :meth:`SnapshotStore.write` writes a hidden temp file in
the same directory, ``fsync``\\ s it, renames it into place and ``fsync``\\ s the
directory. A crash leaves either no snapshot or a complete one, plus maybe a stale
temp file that :meth:`~SnapshotStore.purge` removes. When ``write`` returns, the log
may be purged through the snapshot's zxid.

**Damage.** :meth:`SnapshotStore.latest` checks every candidate fully (header, exact
length, digest) from the newest down, logs a warning for each bad one and falls back
to the next older one; the log still holds what the older snapshot lacks as long as
:meth:`~SnapshotStore.purge` never removed a snapshot that is needed, which it makes
sure of by keeping the newest ``keep`` snapshots *that verify* and deleting only
snapshots older than those. Damaged files are never deleted on sight (they are
evidence); they go once newer valid snapshots have made them old.

Threads: the methods are blocking (file I/O); call them through
``trio.to_thread.run_sync``. Concurrent calls are safe (purge never removes the temp
file of a write in progress in this process).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import itertools
import logging
import os
import struct
import threading
from pathlib import Path
from typing import Final

from coord.errors import StorageError, StorageFullError

__all__ = ["SnapshotStore"]

log = logging.getLogger(__name__)

MAGIC: Final = b"COORDSNP"
VERSION: Final = 1
_HEADER = struct.Struct(">8sBQQ32s")  # magic, version, zxid, length, digest
_SIGNED = struct.Struct(">BQQ")  # the header fields the digest covers, with the payload
_PREFIX: Final = "snapshot."
_TEMP_PREFIX: Final = ".snapshot."
_TEMP_SUFFIX: Final = ".tmp"
_ZXID_LIMIT: Final = 1 << 64
_READ_CHUNK: Final = 1 << 20


def _digest(zxid: int, payload: bytes | memoryview) -> bytes:
    hasher = hashlib.sha256(_SIGNED.pack(VERSION, zxid, len(payload)))
    hasher.update(payload)
    return hasher.digest()


SnapshotList = list[tuple[int, Path]]
"""Snapshots as ``(zxid, path)``, by zxid ascending."""


class SnapshotStore:
    """The snapshot files of one server, in one directory (normally ``data_dir/snapshots``)."""

    def __init__(self, directory: Path) -> None:
        """Use ``directory`` for snapshots, creating it (durably) if needed."""
        self.directory = Path(directory)
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            _fsync_directory(self.directory.parent)
        self._lock = threading.Lock()
        self._writing: set[str] = set()
        self._temp_ids = itertools.count()

    def write(self, zxid: int, payload: bytes) -> Path:
        """Durably store a snapshot covering every txn up to and including ``zxid``.

        Returns:
            The snapshot's path. When this returns the snapshot is on stable storage,
            so the log may be purged through ``zxid``.

        Raises:
            ValueError: ``zxid`` is outside 0..2**64-1.
            StorageFullError: no space left on the device; nothing was stored.
            StorageError: another I/O error; nothing was stored.
        """
        if not 0 <= zxid < _ZXID_LIMIT:
            raise ValueError(f"zxid {zxid} is out of range")
        payload_view = memoryview(payload).cast("B")
        header = _HEADER.pack(MAGIC, VERSION, zxid, len(payload_view), _digest(zxid, payload_view))
        final = self.directory / f"{_PREFIX}{zxid:016x}"
        with self._lock:
            temp_name = f"{_TEMP_PREFIX}{zxid:016x}.{os.getpid()}.{next(self._temp_ids)}{_TEMP_SUFFIX}"
            self._writing.add(temp_name)
        temp = self.directory / temp_name
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as file:
                file.write(header)
                file.write(payload_view)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, final)
            _fsync_directory(self.directory)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFullError(f"no space for snapshot {zxid:#x} in {self.directory}: {exc}") from exc
            raise StorageError(f"cannot write snapshot {zxid:#x} in {self.directory}: {exc}") from exc
        finally:
            with self._lock:
                self._writing.discard(temp_name)
        log.info("wrote snapshot %s (%d bytes of payload)", final, len(payload_view))
        return final

    def latest(self) -> tuple[int, bytes] | None:
        """The newest snapshot that verifies, as ``(zxid, payload)``; None if there is none.

        Damaged snapshots are skipped with a warning in favour of older ones.
        """
        for zxid, path in reversed(self._candidates()):
            loaded = self._load(path)
            if loaded is not None:
                if loaded[0] != zxid:  # replaced between the two reads: still header-true
                    log.warning("snapshot %s changed while being read; using its zxid %#x", path, loaded[0])
                return loaded
        return None

    def list(self) -> SnapshotList:
        """Snapshots whose header looks valid, as ``(zxid, path)`` by header zxid ascending.

        Cheap: reads headers only; the digest is checked by :meth:`latest` and :meth:`purge`.
        """
        return self._candidates()

    def purge(self, keep: int) -> builtins.list[int]:
        """Delete old snapshots, keeping the newest ``keep`` that verify.

        Only snapshots older than the oldest kept one are deleted (damaged newer files
        stay until they are old too); if fewer than ``keep`` verify, none is deleted.
        Stale temp files of interrupted writes are removed as well.

        Args:
            keep: how many valid snapshots to keep, at least 1.

        Returns:
            The header zxids of the deleted snapshots, ascending.
        """
        if keep < 1:
            raise ValueError(f"keep={keep}: at least one snapshot must be kept")
        self._remove_stale_temp_files()
        candidates = self._candidates()
        kept: set[Path] = set()
        cutoff: int | None = None
        for zxid, path in reversed(candidates):
            if self._load(path) is not None:
                kept.add(path)
                cutoff = zxid
                if len(kept) == keep:
                    break
        if cutoff is None or len(kept) < keep:
            return []
        deleted: builtins.list[int] = []
        for zxid, path in candidates:
            if zxid > cutoff:
                break
            if path in kept:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot delete old snapshot %s: %s", path, exc)
                continue
            deleted.append(zxid)
        if deleted:
            log.info("purged %d snapshots, the newest kept from %#x", len(deleted), cutoff)
        return deleted

    # --- internals ---------------------------------------------------------------

    def _candidates(self) -> SnapshotList:
        found: SnapshotList = []
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            raise StorageError(f"cannot list snapshots in {self.directory}: {exc}") from exc
        for name in names:
            if not name.startswith(_PREFIX):
                continue
            path = self.directory / name
            zxid = _read_header_zxid(path)
            if zxid is not None:
                found.append((zxid, path))
        found.sort()
        return found

    def _load(self, path: Path) -> tuple[int, bytes] | None:
        """Read and fully verify one snapshot; None (with a warning) if it is bad."""
        try:
            with open(path, "rb") as file:
                raw_header = file.read(_HEADER.size)
                if len(raw_header) < _HEADER.size:
                    log.warning("skipping snapshot %s: torn header (%d bytes)", path, len(raw_header))
                    return None
                magic, version, zxid, length, digest = _HEADER.unpack(raw_header)
                if magic != MAGIC or version != VERSION:
                    log.warning("skipping snapshot %s: bad magic or version %d", path, version)
                    return None
                size = os.fstat(file.fileno()).st_size
                if size != _HEADER.size + length:  # checked first: a damaged length may be huge
                    log.warning(
                        "skipping snapshot %s: %d bytes long, header says %d", path, size, _HEADER.size + length
                    )
                    return None
                payload = file.read(length + 1)
        except OSError as exc:
            log.warning("skipping snapshot %s: cannot read it: %s", path, exc)
            return None
        if len(payload) != length:
            log.warning("skipping snapshot %s: payload is %d bytes, header says %d", path, len(payload), length)
            return None
        if _digest(zxid, payload) != digest:
            log.warning("skipping snapshot %s (zxid %#x): digest mismatch, the file is damaged", path, zxid)
            return None
        return zxid, payload

    def _remove_stale_temp_files(self) -> None:
        with self._lock:
            writing = set(self._writing)
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            raise StorageError(f"cannot list snapshots in {self.directory}: {exc}") from exc
        for name in names:
            if name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX) and name not in writing:
                try:
                    (self.directory / name).unlink()
                    log.info("removed stale snapshot temp file %s", name)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("cannot remove stale temp file %s: %s", name, exc)


def _read_header_zxid(path: Path) -> int | None:
    """The header zxid if the header looks valid and the file has the stated length."""
    try:
        with open(path, "rb") as file:
            raw_header = file.read(_HEADER.size)
            size = os.fstat(file.fileno()).st_size
    except OSError as exc:
        log.warning("ignoring snapshot %s: cannot read it: %s", path, exc)
        return None
    if len(raw_header) < _HEADER.size:
        log.warning("ignoring snapshot %s: torn header (%d bytes)", path, len(raw_header))
        return None
    magic, version, zxid, length, _ = _HEADER.unpack(raw_header)
    if magic != MAGIC or version != VERSION:
        log.warning("ignoring snapshot %s: bad magic or unknown version %d", path, version)
        return None
    if size != _HEADER.size + length:
        log.warning("ignoring snapshot %s: %d bytes long, header says %d", path, size, _HEADER.size + length)
        return None
    return int(zxid)


def _fsync_directory(directory: Path) -> None:
    """Make renames and new entries in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
