"""The durable transaction log: zxid → txn bytes in LMDB, group-committed.

Theory of operation
-------------------
One LMDB environment per server (``data_dir/log/``) holds two named databases: ``log``
(zxid -> checksummed txn) and ``meta`` (small durable integers such as
``accepted_epoch`` and ``current_epoch``). Their layout, and the checksum, are in
:mod:`coord.storage.log_format`; how the environment is opened, and how much of its map
appends may fill, in :mod:`coord.storage.log_environment`.

**Group commit.** :meth:`TxnLog.append` writes a whole batch in ONE write
transaction, i.e. one durable commit. An LMDB commit with the durable defaults costs
two waits for the disk whatever the size of the batch (``fdatasync`` of the data
pages, then a synchronous ``O_DSYNC`` write of the meta page that makes them
visible), so the shell drains everything that is waiting into one call: a commit of a
hundred entries costs about what a commit of one does, and throughput grows with
load instead of being capped at one fsync round per txn.

**Durable defaults, on purpose.** The environment is opened with LMDB's durable
settings (:func:`~coord.storage.log_environment.open_environment`, docs/correctness.md,
rule 5), after a check of ``data.mdb`` that turns an empty or truncated file into a
:class:`CorruptLogError`. When :meth:`append` returns, the batch is on stable storage.

**Ordering (docs/correctness.md, rule 6).** A zxid is ``(epoch << 32) | counter``. Each
appended zxid must follow the previous one (the last entry, or the *base* when the
log holds none): strictly greater, and within the same epoch exactly ``counter + 1``.
A new epoch may start at any counter. A violation is a bug in the caller, so
:class:`LogOrderError` is raised and nothing of the batch is written.

The *base* (meta ``log.base_zxid``) is how contiguity survives purging: after
``purge_through(z)`` (the entries up to ``z`` are covered by a snapshot) the next
entry must still follow ``z``, even when the purge emptied the log. A fresh log has
base 0, so its first entry may be any zxid of a nonzero epoch, or ``1``.

**Corruption.** A checksum that does not match means that *durable* data was damaged
(:mod:`coord.storage.log_format`). That is never skipped or repaired silently:
:meth:`read` (``verify=True``) and :meth:`verify` raise :class:`CorruptLogError`
naming the zxid, and the server refuses to start until an operator acts (for
example: wipe this server's data and let it resync from the leader).

**A full map.** LMDB cannot delete from a map that is completely full, so appends stop
short: an append that would eat into the reserve kept for deletes
(:func:`~coord.storage.log_environment.append_limit_pages`) is refused with
:class:`~coord.errors.StorageFullError`, and the reserve stays for ``purge_through``,
``truncate_after`` and ``set_meta``. Should LMDB itself report ``MapFullError``
anyway (free pages still pinned by a long read transaction), that is the same error.
Either way the transaction is aborted, nothing is written, reads keep working, and
appends succeed again once space exists (after :meth:`purge_through`, or after
reopening with a larger ``map_bytes``).

**Errors while writing.** Any other LMDB or OS error makes this ``TxnLog`` refuse
every further write until it is reopened: after a failed ``fsync`` the kernel may
have dropped the dirty pages and marked them clean, so "retry and hope" can report
success for data that is not on disk (the PostgreSQL "fsyncgate" lesson). On reopen
the log is re-read from disk and is exactly some committed prefix. The error is
:class:`~coord.errors.StorageFullError` if the disk is full (the rule of
:mod:`coord.storage.space`), else :class:`~coord.errors.StorageError`.

Threads
-------
Writes (``append``, ``truncate_after``, ``purge_through``, ``set_meta``) may come from
any one thread at a time (the shell runs them through ``trio.to_thread.run_sync``); a
lock serializes them anyway and keeps the cached ``first_zxid`` / ``last_zxid`` in step
with the commits. A write transaction is begun and committed inside one call, on the
calling thread, as LMDB requires. Reads may run concurrently from any thread (py-lmdb
opens the environment with ``MDB_NOTLS``); each sees one consistent committed state.
An unfinished :meth:`read` iterator pins that state (a read transaction), which keeps
LMDB from reusing pages freed since: exhaust or close it promptly.

Left out: compaction of the data file (LMDB reuses freed pages; the file does not
shrink), and growing the map on the fly (``set_mapsize`` needs every transaction of
the process closed; reopen with a larger ``map_bytes`` instead).
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, TypeVar

import lmdb

from coord.errors import StorageError, StorageFullError
from coord.storage.log_environment import append_limit_pages, open_databases, open_environment, pages_in_use
from coord.storage.log_format import (
    _KEY,
    _META_BASE,
    _RESERVED_PREFIX,
    _U64,
    _ZXID_LIMIT,
    _decode_entry,
    _decode_u64,
    _encode_entry,
    _gap_error,
    _read_error,
    _verify_entries,
)
from coord.storage.log_format import ACCEPTED_EPOCH as ACCEPTED_EPOCH
from coord.storage.log_format import CURRENT_EPOCH as CURRENT_EPOCH
from coord.storage.log_format import CorruptLogError as CorruptLogError
from coord.storage.space import disk_is_full
from coord.zxid import describe_zxid, log_follows
from coord.zxid import log_follows as zxid_follows  # its old name here, re-exported by coord.storage

__all__ = [
    "ACCEPTED_EPOCH",
    "CURRENT_EPOCH",
    "CorruptLogError",
    "LogOrderError",
    "TxnLog",
    "zxid_follows",
]

log = logging.getLogger(__name__)

_PURGE_CHUNK: Final = 50_000  # entries deleted per transaction: bounds a txn's dirty pages

_T = TypeVar("_T")


class LogOrderError(ValueError):
    """An append or truncation would break the log's order or contiguity (a caller bug)."""


class TxnLog:
    """The durable, checksummed, contiguous log of one server.

    Use :meth:`open`; see the module docstring for durability, ordering and errors.
    """

    def __init__(self, env: lmdb.Environment, log_db: lmdb._Database, meta_db: lmdb._Database) -> None:
        """Wrap an already opened environment (use :meth:`open`)."""
        self._env = env
        self._main_db = env.open_db(None)
        self._log_db = log_db
        self._meta_db = meta_db
        self._page_bytes: int = env.stat()["psize"]
        self._append_limit_pages = append_limit_pages(env, self._page_bytes)
        self._write_lock = threading.Lock()
        self._write_failure: BaseException | None = None
        self._write_failure_full = False
        self._closed = False
        self._first = 0
        self._last = 0
        self._base = 0
        self._load_bounds()

    # --- lifecycle ---------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, map_bytes: int = 1 << 30) -> TxnLog:
        """Open (creating if needed) the log environment in ``directory``.

        Args:
            directory: the environment's directory, normally ``data_dir/log``.
            map_bytes: the most the data file may grow to (at least 128 KiB); a full
                map makes appends raise :class:`~coord.errors.StorageFullError`. When
                reopening an existing log with a smaller value, LMDB keeps what the
                data file already uses.

        Raises:
            ValueError: ``map_bytes`` is below the minimum.
            CorruptLogError: ``data.mdb`` is empty, truncated or not an LMDB file.
            StorageError: the environment cannot be opened or has an unknown format.
        """
        env = open_environment(directory, map_bytes)
        directory = Path(directory)
        try:
            log_db, meta_db = open_databases(env, directory)
            instance = cls(env, log_db, meta_db)
        except lmdb.MapFullError as exc:
            env.close()
            raise StorageFullError(f"cannot initialise the log in {directory}: {exc}") from exc
        except lmdb.Error as exc:
            env.close()
            raise StorageError(f"cannot initialise the log in {directory}: {exc}") from exc
        except BaseException:
            env.close()
            raise
        log.info(
            "opened log %s: %d entries, first %s, last %s, base %s",
            directory,
            instance.stats()["entries"],
            hex(instance.first_zxid),
            hex(instance.last_zxid),
            hex(instance.base_zxid),
        )
        return instance

    def close(self) -> None:
        """Close the environment. Waits for a write in progress; idempotent.

        Open :meth:`read` iterators become invalid.
        """
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._env.close()

    def __enter__(self) -> TxnLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- cached bounds -----------------------------------------------------------

    @property
    def last_zxid(self) -> int:
        """The zxid of the last entry, 0 when the log holds none.

        Updated after each commit, so whatever it reports is already durable and
        readable (a concurrent reader may briefly see entries past it).
        """
        return self._last

    @property
    def first_zxid(self) -> int:
        """The zxid of the first entry, 0 when the log holds none."""
        return self._first

    @property
    def base_zxid(self) -> int:
        """The zxid the log continues from: entries up to it were purged (0 if never).

        The next append must follow ``last_zxid`` if the log holds entries, else this.
        """
        return self._base

    def _load_bounds(self) -> None:
        try:
            with self._env.begin() as txn:
                cursor = txn.cursor(db=self._log_db)
                self._first = _KEY.unpack(cursor.key())[0] if cursor.first() else 0
                self._last = _KEY.unpack(cursor.key())[0] if cursor.last() else 0
                raw = txn.get(_META_BASE, db=self._meta_db)
                self._base = _decode_u64(raw, "log.base_zxid") if raw is not None else 0
        except lmdb.Error as exc:
            raise _read_error(exc) from exc
        except struct.error as exc:
            raise CorruptLogError(f"a log key is not 8 bytes: {exc}") from exc

    # --- writes ------------------------------------------------------------------

    def append(self, entries: Sequence[tuple[int, bytes]]) -> None:
        """Durably append a batch of ``(zxid, txn)`` entries in one commit (group commit).

        Args:
            entries: in zxid order, each following the one before it and the first
                following the log (see :func:`~coord.zxid.log_follows`). Empty: nothing happens.

        Raises:
            LogOrderError: the batch breaks order or contiguity; nothing was written.
            StorageFullError: the map is full; nothing was written, the log stays usable.
            StorageError: an I/O error; nothing was written (as far as any later
                reader of this log will see), and this object refuses further writes.

        Ordering: when this returns, every entry of the batch is on stable storage.
        """
        if not entries:
            return
        with self._write_lock:
            previous = self._last or self._base
            items: list[tuple[bytes, bytes]] = []
            for zxid, txn in entries:
                if not 0 < zxid < _ZXID_LIMIT or not log_follows(previous, zxid):
                    raise LogOrderError(
                        f"zxid {describe_zxid(zxid)} cannot follow {describe_zxid(previous)}: "
                        "zxids must grow, and by exactly one within an epoch; nothing was written"
                    )
                key = _KEY.pack(zxid)
                items.append((key, _encode_entry(key, txn)))
                previous = zxid

            def write(txn: lmdb.Transaction) -> None:
                # append=True: the keys go to the right edge without a search, and LMDB
                # itself refuses a key that is not greater than the last one.
                _, added = txn.cursor(db=self._log_db).putmulti(items, append=True)
                if added != len(items):
                    raise LogOrderError(f"LMDB refused {len(items) - added} of {len(items)} entries as out of order")
                used_pages = self._pages_in_use(txn)
                if used_pages > self._append_limit_pages:
                    # Raised inside the transaction, so it is aborted: nothing written.
                    raise StorageFullError(
                        f"the log is full: {used_pages} of {self._append_limit_pages} pages allowed for appends "
                        "would be in use (the rest is kept for purges); purge it or reopen with a larger map"
                    )

            self._write("append", write)
            if not self._first:
                self._first = entries[0][0]
            self._last = entries[-1][0]

    def truncate_after(self, zxid: int) -> int:
        """Delete every entry after ``zxid`` (ZAB TRUNC), in one durable commit.

        Args:
            zxid: the last zxid to keep; it may lie past the end (nothing to do).

        Returns:
            How many entries were deleted.

        Raises:
            LogOrderError: ``zxid`` is below the base: those entries were purged into a
                snapshot, so truncating there needs a snapshot sync, not a TRUNC.
            StorageFullError, StorageError: as for :meth:`append`; nothing was deleted.
        """
        with self._write_lock:
            if zxid < self._base:
                raise LogOrderError(
                    f"cannot truncate after {describe_zxid(zxid)}: the log was purged through "
                    f"{describe_zxid(self._base)} (a snapshot covers it)"
                )
            if zxid >= self._last:
                return 0

            def delete(txn: lmdb.Transaction) -> tuple[int, int]:
                cursor = txn.cursor(db=self._log_db)
                deleted = 0
                positioned = cursor.set_range(_KEY.pack(zxid + 1))
                while positioned:
                    cursor.delete()  # moves to the next entry, if there is one
                    deleted += 1
                    positioned = bool(cursor.key())
                new_last = _KEY.unpack(cursor.key())[0] if cursor.last() else 0
                return deleted, new_last

            deleted, new_last = self._write("truncate", delete)
            self._last = new_last
            if not new_last:
                self._first = 0
            log.info("truncated %d entries after %s", deleted, describe_zxid(zxid))
            return deleted

    def purge_through(self, zxid: int) -> int:
        """Delete every entry up to and including ``zxid`` (a snapshot now covers them).

        The base becomes ``zxid`` (if larger), so later appends must still follow it
        when the log is left empty. Large purges commit in chunks of oldest entries
        first; a crash in between leaves a shorter but still contiguous log.

        Returns:
            How many entries were deleted.

        Raises:
            StorageFullError, StorageError: as for :meth:`append`; earlier chunks may
                have been purged, the log is still contiguous.
        """
        if not 0 <= zxid < _ZXID_LIMIT:
            raise LogOrderError(f"zxid {zxid} is out of range")
        total = 0
        with self._write_lock:
            if zxid <= self._base and not 0 < self._first <= zxid:
                return 0  # nothing to delete and the base already covers it: spare a commit
            while True:

                def delete(txn: lmdb.Transaction) -> tuple[int, bool, int]:
                    cursor = txn.cursor(db=self._log_db)
                    deleted = 0
                    last_deleted = 0
                    has_more = cursor.first()
                    while has_more and deleted < _PURGE_CHUNK:
                        key_zxid = _KEY.unpack(cursor.key())[0]
                        if key_zxid > zxid:
                            has_more = False
                            break
                        last_deleted = key_zxid
                        cursor.delete()  # moves to the next entry, if there is one
                        deleted += 1
                        has_more = bool(cursor.key())
                    # Past the last chunk the base is the snapshot's zxid itself; in
                    # between it is what was really deleted, so the log stays contiguous.
                    base = max(self._base, last_deleted if has_more else zxid)
                    txn.put(_META_BASE, _U64.pack(base), db=self._meta_db)
                    return deleted, has_more, base

                deleted, has_more, base = self._write("purge", delete)
                total += deleted
                self._base = base
                if deleted:
                    self._first = self._read_first()
                    if not self._first:
                        self._last = 0
                if not has_more:
                    break
        if total:
            log.info("purged %d entries through %s", total, describe_zxid(zxid))
        return total

    def set_meta(self, key: str, value: int) -> None:
        """Durably store a small unsigned integer (one commit).

        Raises:
            ValueError: a reserved key (``log.*``) or a value outside 0..2**64-1.
            StorageFullError, StorageError: as for :meth:`append`.
        """
        if key.startswith(_RESERVED_PREFIX):
            raise ValueError(f"meta key {key!r} is reserved for the log itself")
        if not 0 <= value < _ZXID_LIMIT:
            raise ValueError(f"meta value {value} does not fit in 8 unsigned bytes")
        raw_key, raw_value = key.encode(), _U64.pack(value)
        with self._write_lock:
            self._write("set_meta", lambda txn: txn.put(raw_key, raw_value, db=self._meta_db))

    @property
    def refuses_writes(self) -> bool:
        """A write failed with an I/O error (or on a full disk): reopen before writing again."""
        return self._write_failure is not None

    def _write(self, what: str, body: Callable[[lmdb.Transaction], _T]) -> _T:
        """Run ``body`` in one durable write transaction; map LMDB errors (lock held)."""
        if self._closed:
            raise StorageError("the log is closed")
        if self._write_failure is not None:
            refused = StorageFullError if self._write_failure_full else StorageError
            raise refused(
                f"the log refuses writes after an earlier failed write ({self._write_failure}); reopen it"
            ) from self._write_failure
        try:
            with self._env.begin(write=True) as txn:
                return body(txn)
        except StorageFullError as exc:
            log.error("log %s refused: %s", what, exc)
            raise
        except lmdb.MapFullError as exc:
            log.error("log %s failed: map full (%s); nothing was written", what, exc)
            raise StorageFullError(f"the log is full: {exc}") from exc
        except (lmdb.Error, OSError) as exc:
            self._write_failure = exc
            directory = Path(self._env.path())
            self._write_failure_full = disk_is_full(exc, directory)
            if self._write_failure_full:
                log.critical("log %s failed: the disk is full (%s); no more writes until reopened", what, exc)
                raise StorageFullError(
                    f"the disk holding the log is full ({exc}): the write was not made; free space in {directory}"
                ) from exc
            log.critical("log %s failed with an I/O error, no more writes until reopened: %s", what, exc)
            raise StorageError(f"the log could not write durably: {exc}") from exc

    # --- reads -------------------------------------------------------------------

    def read(self, after_zxid: int = 0, *, verify: bool = True) -> Iterator[tuple[int, bytes]]:
        """Yield ``(zxid, txn)`` for every entry after ``after_zxid``, in zxid order.

        All entries come from one consistent committed state (one read transaction,
        held until the iterator is exhausted or closed).

        Args:
            after_zxid: yield entries with a greater zxid (0: all of them).
            verify: check each entry's checksum and that it follows the one before.

        Raises:
            CorruptLogError: (with ``verify``) a damaged or out-of-order entry; it names
                the zxid. Entries before it were yielded.
        """
        if after_zxid >= _ZXID_LIMIT - 1:
            return
        start = _KEY.pack(max(after_zxid, 0) + 1)
        try:
            with self._env.begin(db=self._log_db, buffers=True) as txn:
                cursor = txn.cursor()
                if not cursor.set_range(start):
                    return
                previous: int | None = None
                for key, value in cursor.iternext(keys=True, values=True):
                    zxid, txn_bytes = _decode_entry(key, value, verify=verify)
                    if verify and previous is not None and not log_follows(previous, zxid):
                        raise _gap_error(previous, zxid)
                    previous = zxid
                    yield zxid, txn_bytes
        except lmdb.Error as exc:
            raise _read_error(exc) from exc

    def get(self, zxid: int) -> bytes | None:
        """The txn stored at ``zxid`` (checksum verified), or None.

        Raises:
            CorruptLogError: the entry is damaged.
        """
        if not 0 <= zxid < _ZXID_LIMIT:
            return None
        key = _KEY.pack(zxid)
        try:
            with self._env.begin(db=self._log_db, buffers=True) as txn:
                value = txn.get(key)
                if value is None:
                    return None
                return _decode_entry(key, value, verify=True)[1]
        except lmdb.Error as exc:
            raise _read_error(exc) from exc

    def get_meta(self, key: str) -> int | None:
        """The integer stored under ``key`` by :meth:`set_meta`, or None."""
        try:
            with self._env.begin(db=self._meta_db) as txn:
                raw = txn.get(key.encode())
        except lmdb.Error as exc:
            raise _read_error(exc) from exc
        return None if raw is None else _decode_u64(raw, key)

    def verify(self) -> int:
        """Check every entry's checksum and the contiguity of the whole log.

        The first entry must follow the base, each entry the one before it.

        Returns:
            The number of entries checked.

        Raises:
            CorruptLogError: at the first bad entry, naming its zxid.
        """
        try:
            with self._env.begin(buffers=True) as txn:
                return _verify_entries(txn, self._log_db, self._meta_db)
        except lmdb.Error as exc:
            raise _read_error(exc) from exc

    def stats(self) -> dict[str, int]:
        """Entry count, bounds and space.

        Returns:
            ``entries``, ``first_zxid``, ``last_zxid``, ``base_zxid``; ``map_bytes``
            (LMDB's map size), ``append_limit_bytes`` (the part appends may fill),
            ``used_bytes`` (pages of the live B+trees and the meta pages),
            ``file_bytes`` (the data file's high-water mark; freed pages inside it are
            reused, the file never shrinks) and ``page_bytes``.
        """
        try:
            with self._env.begin() as txn:
                entries = txn.stat(self._log_db)["entries"]
                used_pages = self._pages_in_use(txn)
            info = self._env.info()
        except lmdb.Error as exc:
            raise _read_error(exc) from exc
        return {
            "entries": entries,
            "first_zxid": self._first,
            "last_zxid": self._last,
            "base_zxid": self._base,
            "map_bytes": info["map_size"],
            "append_limit_bytes": self._append_limit_pages * self._page_bytes,
            "used_bytes": used_pages * self._page_bytes,
            "file_bytes": (info["last_pgno"] + 1) * self._page_bytes,
            "page_bytes": self._page_bytes,
        }

    def _pages_in_use(self, txn: lmdb.Transaction) -> int:
        """Pages of every B+tree of the log (the unnamed main one too), plus the meta pages."""
        return pages_in_use(txn, (self._main_db, self._log_db, self._meta_db))

    def _read_first(self) -> int:
        with self._env.begin(db=self._log_db) as txn:
            cursor = txn.cursor()
            return _KEY.unpack(cursor.key())[0] if cursor.first() else 0

    def durability_flags(self) -> dict[str, bool]:
        """The environment's sync-related flags, for tests and ``coord status``."""
        flags = self._env.flags()
        return {name: bool(flags[name]) for name in ("sync", "metasync", "writemap", "map_async")}
