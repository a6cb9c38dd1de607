"""The ZAB core's view of this server's durable state, over the LMDB log and snapshots.

The core reads through this object (at start-up and while synchronising a
follower) and never writes through it: its writes arrive as ``Output.persist``
records, which :func:`write_records` carries out in order on the writer thread.

Reads run on the trio thread while the writer thread appends: LMDB gives every
read transaction a consistent view, so that is safe.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

from coord.storage import ACCEPTED_EPOCH, CURRENT_EPOCH, SnapshotStore, TxnLog
from coord.tree import DataTree
from coord.tree_image import collector_paused
from coord.zab.types import (
    EpochRecord,
    LogEntry,
    Record,
    SnapshotChunkRecord,
    SnapshotRecord,
    TruncateRecord,
    Zxid,
)


class LogDurableState:
    """:class:`coord.zab.types.DurableState` over a :class:`TxnLog` and a :class:`SnapshotStore`.

    Args:
        log: the server's txn log.
        snapshot_zxid: the zxid of the snapshot the application state was loaded from.
        current_tree: returns the application's tree as it is now (for SNAP).
        snapshots: the server's snapshot store (to load a SNAP once it is installed).
        applied_zxid: the zxid the application state holds at start (default: the
            snapshot's; later when the log after it was replayed, as on a standalone server).
    """

    def __init__(
        self,
        log: TxnLog,
        snapshot_zxid: Zxid,
        current_tree: Callable[[], DataTree],
        *,
        snapshots: SnapshotStore,
        applied_zxid: Zxid | None = None,
    ) -> None:
        self.log = log
        self.snapshots = snapshots
        self.accepted_epoch = log.get_meta(ACCEPTED_EPOCH) or 0
        self.current_epoch = log.get_meta(CURRENT_EPOCH) or 0
        self._snapshot_zxid = snapshot_zxid
        self._applied_zxid = snapshot_zxid if applied_zxid is None else applied_zxid
        self._current_tree = current_tree
        self._held_tree: DataTree | None = None

    def _base(self) -> Zxid:
        """Everything at or before this zxid is only in snapshots, not in the log."""
        return max(int(self.log.stats().get("base_zxid", 0)), self._snapshot_zxid if not self.log.first_zxid else 0)

    def last_zxid(self) -> Zxid:
        return max(self.log.last_zxid, self._base(), self._snapshot_zxid)

    def entries_after(self, zxid: Zxid) -> list[tuple[Zxid, bytes]] | None:
        first = self.log.first_zxid
        if first == 0:
            return [] if zxid >= self.last_zxid() else None
        if zxid < self._base():
            return None
        return list(self.log.read(zxid, verify=False))

    def contains(self, zxid: Zxid) -> bool:
        if zxid == 0 or zxid == self._snapshot_zxid or zxid == self._base():
            return True
        return self.log.get(zxid) is not None

    @property
    def snapshot_zxid(self) -> Zxid:
        return self._snapshot_zxid

    def applied_zxid(self) -> Zxid:
        return self._applied_zxid

    def snapshot(self) -> tuple[Zxid, Iterator[bytes]]:
        """The tree as of now (its image is taken at once), serialised lazily: each
        piece is encoded only when it is asked for, so the whole image is never held."""
        tree = self._current_tree()
        return tree.last_zxid, DataTree.image_pieces(tree.image())

    def hold_tree(self, tree: DataTree) -> None:
        """Keep the tree :func:`write_records` decoded while installing a SNAP, for the
        :meth:`load_tree` that follows (so the file is not read and decoded twice)."""
        self._held_tree = tree

    def load_tree(self, zxid: Zxid) -> DataTree:
        """The tree of the durable snapshot of ``zxid``: the one held by :meth:`hold_tree`
        if it is of ``zxid``, else rebuilt from the file in pieces (blocking).

        Raises:
            StorageError: no valid snapshot of ``zxid`` is stored.
            ValueError: the snapshot verifies but is not a well-formed tree image.
        """
        held, self._held_tree = self._held_tree, None
        if held is not None and held.last_zxid == zxid:
            return held
        return DataTree.from_pieces(self.snapshots.read_pieces(zxid))


def write_records(log: TxnLog, snapshots: SnapshotStore, records: Sequence[Record]) -> DataTree | None:
    """Make ``records`` durable, in order (blocking: run it in a worker thread).

    Consecutive log entries go into ONE LMDB write transaction (group commit: one
    fsync for all of them). Raises the storage errors of :mod:`coord.errors`;
    records before the failing one are durable, none after it.

    A :class:`SnapshotRecord` installs a SNAP only if its image decodes, to a tree of
    its zxid: the tree is built in the same pass over the staged file that checks its
    digest, here in the worker thread (seconds for a million znodes, during which the
    event loop keeps running), and returned for :meth:`LogDurableState.hold_tree`.
    An image that does not decode is a ``StorageError`` like a failed write: nothing
    is installed, the old snapshot and log stay, and the server rejoins and syncs
    again, logging why (one bad leader or a bug cannot end this server).

    Returns:
        The tree of the last SNAP installed, or None.
    """
    installed: DataTree | None = None
    batch: list[tuple[int, bytes]] = []
    for record in records:
        if type(record) is LogEntry:
            batch.append((record.zxid, record.txn))
            continue
        if batch:
            log.append(batch)
            batch = []
        match record:
            case EpochRecord():
                if record.accepted_epoch is not None:
                    log.set_meta(ACCEPTED_EPOCH, record.accepted_epoch)
                if record.current_epoch is not None:
                    log.set_meta(CURRENT_EPOCH, record.current_epoch)
            case TruncateRecord():
                log.truncate_after(record.zxid)
            case SnapshotChunkRecord():
                snapshots.stage(record.zxid, record.offset, record.data)
            case SnapshotRecord():
                # The snapshot replaces the whole history: install it (its chunks are
                # staged), then drop every log entry (what it covers, and a suffix the
                # leader does not have).
                trees: list[DataTree] = []
                load = functools.partial(_decode_into, trees, record.zxid)
                snapshots.commit_staged(record.zxid, record.size, record.digest, load=load)
                installed = trees[0]
                base = int(log.stats().get("base_zxid", 0))
                log.truncate_after(max(base, min(record.zxid, log.last_zxid)))
                log.purge_through(record.zxid)
    if batch:
        log.append(batch)
    return installed


def _decode_into(trees: list[DataTree], zxid: Zxid, pieces: Iterator[bytes]) -> None:
    """Append the tree a SNAP's image holds to ``trees``; it must be the tree of ``zxid``.

    Raises:
        ValueError: it is not a well-formed image of the tree of ``zxid``.
    """
    with collector_paused(freeze=True):  # the tree this server will serve: see coord.tree_image
        tree = DataTree.from_pieces(pieces)
    if tree.last_zxid != zxid:
        raise ValueError(f"it holds the tree of {tree.last_zxid:#x}")
    trees.append(tree)
