"""Snapshots of the data tree: whole files, written atomically, verified on load.

Theory of operation
-------------------
A snapshot is the tree's serialized state after applying every txn up to some zxid.
Recovery is *newest valid snapshot + replay of the log after its zxid*, so once a
snapshot is durable the log up to its zxid may be purged.

The file is a header (magic, version, zxid, payload length, sha256 digest) and the
payload, the tree's image; its format is :mod:`coord.storage.snapshot_file`'s.

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

**Streamed snapshots (staging).** A snapshot received from the leader (a SNAP) is far
too big to hold in memory, so it arrives in chunks: :meth:`SnapshotStore.stage` writes
each chunk at its offset into a hidden temp file (named like ``write``'s, so that the
purge at start-up removes one left by a crash), after room reserved for the header;
each call is ``fsync``\\ ed before it returns. Chunks must come in order: a chunk at
offset 0 starts a new staging (dropping any earlier one), any other must start exactly
where the staged bytes end, or the call is refused. :meth:`~SnapshotStore.commit_staged`
then reads the staged payload back in 1 MiB pieces, checks its size and its sha256
against what the leader announced (a mismatch discards the staging), writes the real
header over the reserved room, ``fsync``\\ s, renames the file into place and
``fsync``\\ s the directory, as ``write`` does: the result is byte for byte the file
``write`` would have made, and only from then on may the log be purged. A staging
lives only as long as this object: a restarted server never resumes one (its temp
file is stale and goes at the next purge); the leader sends the SNAP again.
:meth:`~SnapshotStore.read_pieces` reads a snapshot back the same way, in bounded
pieces, for a tree to be rebuilt without the whole payload in memory.

**Damage.** :meth:`SnapshotStore.latest` checks every candidate fully (header, exact
length, digest) from the newest down, logs a warning for each bad one and falls back
to the next older one; the log still holds what the older snapshot lacks as long as
:meth:`~SnapshotStore.purge` never removed a snapshot that is needed, which it makes
sure of by keeping the newest ``keep`` snapshots *that verify* and deleting only
snapshots older than those. Damaged files are never deleted on sight (they are
evidence); they go once newer valid snapshots have made them old.

Threads: the methods are blocking (file I/O); call them through
``trio.to_thread.run_sync``. Concurrent calls are safe (purge never removes the temp
file of a write or of the staging in progress in this process), except that the
staging methods (``stage``, ``commit_staged``, ``discard_staged``) are meant for one
thread, the record writer, which calls them in order.
"""

from __future__ import annotations

import builtins
import hashlib
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from coord.errors import StorageError
from coord.storage.snapshot_file import (
    HEADER,
    MAGIC,
    READ_CHUNK,
    SIGNED,
    VERSION,
    PayloadReader,
    fsync_directory,
    pwrite_all,
    read_header,
    read_header_zxid,
    storage_error,
    verifies,
    verify_file,
)

__all__ = ["MAGIC", "SnapshotStore", "fsync_directory"]

T = TypeVar("T")

log = logging.getLogger(__name__)

_PREFIX: Final = "snapshot."
_TEMP_PREFIX: Final = ".snapshot."
_TEMP_SUFFIX: Final = ".tmp"
_ZXID_LIMIT: Final = 1 << 64


SnapshotList = list[tuple[int, Path]]
"""Snapshots as ``(zxid, path)``, by zxid ascending."""


@dataclass(slots=True)
class _Staging:
    """The snapshot being received: its temp file and how much of it is written."""

    zxid: int
    name: str  # the temp file's name in the snapshot directory
    size: int = 0  # payload bytes staged so far (the file holds the header room first)


class SnapshotStore:
    """The snapshot files of one server, in one directory (normally ``data_dir/snapshots``)."""

    def __init__(self, directory: Path) -> None:
        """Use ``directory`` for snapshots, creating it (durably) if needed."""
        self.directory = Path(directory)
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            fsync_directory(self.directory.parent)
        self._lock = threading.Lock()
        self._writing: set[str] = set()  # temp files in use: never stale (the staging's too)
        self._temp_ids = itertools.count()
        self._staging: _Staging | None = None

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
        return self.write_pieces(zxid, (payload,))

    def write_pieces(self, zxid: int, pieces: Iterable[bytes]) -> Path:
        """Like :meth:`write`, for a payload given as pieces (a large tree's periodic
        snapshot, serialised a chunk at a time): never the whole payload in memory.

        The pieces go to a temp file behind room for the header; then the payload is
        read back once for the digest (which covers its length, known only at the end),
        the header written, the file fsynced and renamed, the directory fsynced.

        Returns:
            The snapshot's path (as :meth:`write`).

        Raises:
            ValueError: ``zxid`` is outside 0..2**64-1.
            StorageFullError: no space left on the device; nothing was stored.
            StorageError: another I/O error; nothing was stored.
        """
        if not 0 <= zxid < _ZXID_LIMIT:
            raise ValueError(f"zxid {zxid} is out of range")
        with self._lock:
            name = f"{_TEMP_PREFIX}{zxid:016x}.{os.getpid()}.{next(self._temp_ids)}{_TEMP_SUFFIX}"
            self._writing.add(name)
        staging = _Staging(zxid, name)
        temp = self.directory / name
        try:
            hasher = hashlib.sha256()
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as file:
                file.write(bytes(HEADER.size))
                for piece in pieces:
                    file.write(piece)
                    hasher.update(piece)
                    staging.size += len(piece)
            final = self._install_staged(staging, staging.size, hasher.digest())
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise storage_error(exc, "write", zxid, self.directory) from exc
        except BaseException:  # a StorageError, or the pieces failed: nothing stays behind
            temp.unlink(missing_ok=True)
            raise
        finally:
            with self._lock:
                self._writing.discard(name)
        log.info("wrote snapshot %s (%d bytes of payload)", final, staging.size)
        return final

    def stage(self, zxid: int, offset: int, data: bytes) -> None:
        """Durably write ``data`` at ``offset`` of the payload of a snapshot being received.

        ``offset`` 0 starts a new staging for ``zxid`` (discarding any earlier one,
        whatever its zxid); any other offset must be where the bytes staged so far for
        the same ``zxid`` end. Nothing counts until :meth:`commit_staged`.

        Raises:
            ValueError: ``zxid`` is outside 0..2**64-1.
            StorageError: ``offset`` does not continue the staging of ``zxid`` (a bug
                upstream; nothing was written), or an I/O error (the staging is
                discarded: start again at offset 0).
            StorageFullError: no space left on the device (the staging is discarded).
        """
        if not 0 <= zxid < _ZXID_LIMIT:
            raise ValueError(f"zxid {zxid} is out of range")
        staging = self._staging
        if offset != 0 and (staging is None or staging.zxid != zxid or staging.size != offset):
            have = "nothing is staged" if staging is None else f"{staging.size} bytes are staged of {staging.zxid:#x}"
            raise StorageError(f"cannot stage snapshot {zxid:#x} at offset {offset}: {have}")
        try:
            if offset == 0:
                self.discard_staged()
                staging = self._start_staging(zxid)
            assert staging is not None
            fd = os.open(self.directory / staging.name, os.O_WRONLY)
            try:
                pwrite_all(fd, data, HEADER.size + offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.discard_staged()
            raise storage_error(exc, "stage", zxid, self.directory) from exc
        staging.size = offset + len(data)

    def commit_staged(
        self, zxid: int, size: int, digest: bytes, *, load: Callable[[Iterator[bytes]], object] | None = None
    ) -> Path:
        """Install the staged snapshot of ``zxid``: it must be exactly ``size`` bytes
        whose sha256 is ``digest``, and ``load`` (if given) must accept its payload.
        Either way the staging is over.

        ``load`` gets the payload in pieces in the same pass that checks the digest (a
        follower decodes the tree of a SNAP as it installs it): if it raises
        ``ValueError``, nothing is installed, and the follower's old state stays.

        Returns:
            The snapshot's path. As after :meth:`write`, the snapshot is on stable
            storage when this returns (the log may be purged through ``zxid``), and
            the file is the one ``write`` would have made of the same payload.

        Raises:
            StorageError: nothing of ``zxid`` is staged, or the staged payload has
                another size or digest, or ``load`` refused it, or an I/O error; the
                staging is discarded and no snapshot was stored.
            StorageFullError: no space left on the device; no snapshot was stored.
        """
        staging = self._staging
        try:
            if staging is None or staging.zxid != zxid:
                have = "nothing is staged" if staging is None else f"the staging is of {staging.zxid:#x}"
                raise StorageError(f"cannot commit snapshot {zxid:#x}: {have}")
            final = self._install_staged(staging, size, digest, load)
        except OSError as exc:
            self.discard_staged()
            raise storage_error(exc, "commit", zxid, self.directory) from exc
        except StorageError:
            self.discard_staged()
            raise
        self._staging = None
        with self._lock:
            self._writing.discard(staging.name)
        log.info("wrote snapshot %s (%d bytes of payload, received in chunks)", final, size)
        return final

    def discard_staged(self) -> None:
        """Remove the snapshot being staged, if any (idempotent)."""
        staging, self._staging = self._staging, None
        if staging is None:
            return
        try:
            (self.directory / staging.name).unlink(missing_ok=True)
        except OSError as exc:  # it is stale now: the next purge removes it
            log.warning("cannot remove the snapshot staging %s: %s", staging.name, exc)
        finally:
            with self._lock:
                self._writing.discard(staging.name)

    def read_pieces(self, zxid: int, piece_bytes: int = READ_CHUNK) -> Iterator[bytes]:
        """The payload of the valid snapshot whose header zxid is ``zxid``, in pieces
        of at most ``piece_bytes``, never the whole of it in memory.

        A generator: nothing is read until the first piece is asked for. Then the file
        is verified completely first (header, length, digest, reading it in pieces),
        and only a file that verifies is read again to yield its payload, through the
        same open file (a purge or a rewrite meanwhile cannot swap it). So a damaged
        file yields nothing, and the errors come from the first ``next()``, except an
        I/O error (or the file changing in place) in the second pass.

        Raises:
            ValueError: ``piece_bytes`` is not positive.
            StorageError: no snapshot of ``zxid`` verifies (or an I/O error while
                yielding).
        """
        if piece_bytes < 1:
            raise ValueError(f"piece_bytes={piece_bytes}: must be positive")
        for found, path in reversed(self._candidates()):
            if found != zxid:
                continue
            try:
                with open(path, "rb", buffering=0) as file:
                    length = verify_file(path, file, zxid)
                    if length is None:
                        continue
                    file.seek(HEADER.size)
                    while length:
                        piece = file.read(min(piece_bytes, length))
                        if not piece:
                            raise StorageError(f"snapshot {path} shrank while being read")
                        length -= len(piece)
                        yield piece
                    return
            except OSError as exc:
                raise StorageError(f"cannot read snapshot {path}: {exc}") from exc
        raise StorageError(f"no valid snapshot {zxid:#x} in {self.directory}")

    def latest(self) -> tuple[int, bytes] | None:
        """The newest snapshot that verifies, as ``(zxid, payload)``; None if there is none.

        Damaged snapshots are skipped with a warning in favour of older ones.
        """
        return self.load_latest(b"".join)

    def load_latest(self, load: Callable[[Iterator[bytes]], T]) -> tuple[int, T] | None:
        """The newest snapshot that verifies, as ``(zxid, load(pieces of its payload))``;
        None if there is none.

        One pass over the file: ``load`` decodes the payload from pieces as they are
        read, while the same pass computes the digest, and its result counts only once
        the digest matched. A damaged file (bad header, short, digest mismatch,
        unreadable) is skipped with a warning in favour of older ones, as by
        :meth:`latest`, even when ``load`` gave up on its bytes first.

        Raises:
            ValueError: from ``load``, for a file that verifies (its bytes are as
                written, but not what ``load`` reads).
        """
        for _, path in reversed(self._candidates()):
            try:
                with open(path, "rb", buffering=0) as file:
                    header = read_header(path, file)
                    if header is None:
                        continue
                    zxid, length, digest = header
                    reader = PayloadReader(file, length, hashlib.sha256(SIGNED.pack(VERSION, zxid, length)))
                    try:
                        result = load(reader.pieces())
                    except ValueError as error:
                        if reader.finish() and reader.hashers[0].digest() == digest:
                            raise ValueError(
                                f"the snapshot {zxid:#x} in {self.directory} does not decode: {error}"
                            ) from error
                        log.warning("skipping snapshot %s (zxid %#x): damaged (short or digest mismatch)", path, zxid)
                        continue
                    if not reader.finish():
                        log.warning("skipping snapshot %s: shorter than its header says", path)
                        continue
                    if reader.hashers[0].digest() != digest:
                        log.warning("skipping snapshot %s (zxid %#x): digest mismatch, the file is damaged", path, zxid)
                        continue
                    return zxid, result
            except OSError as exc:
                log.warning("skipping snapshot %s: cannot read it: %s", path, exc)
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
            if verifies(path, zxid):
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
            zxid = read_header_zxid(path)
            if zxid is not None:
                found.append((zxid, path))
        found.sort()
        return found

    def _start_staging(self, zxid: int) -> _Staging:
        """Create the temp file of a new staging, holding zeros where the header goes."""
        with self._lock:
            name = f"{_TEMP_PREFIX}{zxid:016x}.{os.getpid()}.{next(self._temp_ids)}.staged{_TEMP_SUFFIX}"
            self._writing.add(name)
        self._staging = staging = _Staging(zxid, name)
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            pwrite_all(fd, bytes(HEADER.size), 0)
        finally:
            os.close(fd)
        fsync_directory(self.directory)
        return staging

    def _install_staged(
        self, staging: _Staging, size: int, digest: bytes, load: Callable[[Iterator[bytes]], object] | None = None
    ) -> Path:
        """Check the staged payload (and ``load`` it), write its header, rename it into place (see commit_staged)."""
        zxid = staging.zxid
        if staging.size != size:
            raise StorageError(f"snapshot {zxid:#x} is {staging.size} bytes as staged, but {size} were announced")
        temp = self.directory / staging.name
        with open(temp, "r+b", buffering=0) as file:
            found = os.fstat(file.fileno()).st_size - HEADER.size
            if found != size:
                raise StorageError(f"the staging of snapshot {zxid:#x} holds {found} bytes, not {size}")
            payload_hash = hashlib.sha256()
            signed_hash = hashlib.sha256(SIGNED.pack(VERSION, zxid, size))
            file.seek(HEADER.size)
            reader = PayloadReader(file, size, payload_hash, signed_hash)
            problem: ValueError | None = None
            if load is not None:
                try:
                    load(reader.pieces())
                except ValueError as error:
                    problem = error
            if not reader.finish():
                raise StorageError(f"the staging of snapshot {zxid:#x} shrank while being read")
            if payload_hash.digest() != digest:
                raise StorageError(f"snapshot {zxid:#x} as staged does not match the announced sha256 (damaged)")
            if problem is not None:
                raise StorageError(f"snapshot {zxid:#x} as staged does not decode: {problem}")
            pwrite_all(file.fileno(), HEADER.pack(MAGIC, VERSION, zxid, size, signed_hash.digest()), 0)
            os.fsync(file.fileno())
        final = self.directory / f"{_PREFIX}{zxid:016x}"
        os.replace(temp, final)
        fsync_directory(self.directory)
        return final

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
