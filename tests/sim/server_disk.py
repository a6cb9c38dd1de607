"""One simulated server's disk (:class:`TreeDisk`): what a crash keeps, and what a restart starts from.

The disk outlives the server's core (a crash throws the core away and keeps what was
made durable), so it is a thing of its own. Writes wait in a queue until a flush event
makes them, or a prefix of them, durable; the durable part is laid out as
:mod:`coord.durable` lays it out in LMDB, and the disk reports every write that LMDB
would take but recovery would refuse later.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterator

from coord.tree import DataTree
from coord.zab.types import EpochRecord, LogEntry, Record, SnapshotChunkRecord, SnapshotRecord, TruncateRecord, Zxid
from coord.zxid import log_follows
from tests.sim.trace import zxid_str

SNAPSHOTS_RETAINED = 2


class TreeDisk:
    """One server's durable state (epochs, tree snapshots, the txn log) and its write queue.

    Implements :class:`coord.zab.types.DurableState` over the durable state only, as
    :class:`coord.durable.LogDurableState` does over LMDB; ``snapshot()`` is the
    server's *current* tree. Records are applied as :func:`coord.durable.write_records`
    does. Problems (an append that does not follow, epochs going back, a truncation below
    the log's base, a log that recovery would refuse) are collected for the checker.
    """

    def __init__(self, server_id: int) -> None:
        self.server_id = server_id
        self.accepted_epoch = 0
        self.current_epoch = 0
        self.snapshots: list[tuple[Zxid, bytes]] = []  # (zxid, image), oldest first
        self.log: list[tuple[Zxid, bytes]] = []
        self.log_zxids: list[Zxid] = []
        self.log_index: dict[Zxid, bytes] = {}
        self.base: Zxid = 0  # entries at or before it were purged (log.base_zxid)
        self.pending: list[Record] = []
        self.loaded_zxid: Zxid = 0  # the snapshot the running core's tree was loaded from
        self.current_tree: Callable[[], DataTree] | None = None
        self.problems: list[str] = []
        self.staged: tuple[Zxid, bytearray] | None = None  # a SNAP being received (lost at a crash)

    # --- DurableState ---------------------------------------------------------------

    def last_zxid(self) -> Zxid:
        top = self.log_zxids[-1] if self.log_zxids else 0
        return max(top, self._base(), self.loaded_zxid)

    def _base(self) -> Zxid:
        return max(self.base, self.loaded_zxid if not self.log_zxids else 0)

    def entries_after(self, zxid: Zxid) -> list[tuple[Zxid, bytes]] | None:
        if not self.log_zxids:
            return [] if zxid >= self.last_zxid() else None
        if zxid < self._base():
            return None
        return self.log[bisect.bisect_right(self.log_zxids, zxid) :]

    def contains(self, zxid: Zxid) -> bool:
        if zxid == 0 or zxid == self.loaded_zxid or zxid == self._base():
            return True
        return zxid in self.log_index

    def applied_zxid(self) -> Zxid:
        return self.loaded_zxid

    def snapshot(self) -> tuple[Zxid, Iterator[bytes]]:
        assert self.current_tree is not None
        tree = self.current_tree()
        return tree.last_zxid, DataTree.image_pieces(tree.image())

    def load_tree(self, zxid: Zxid) -> DataTree:
        """The tree of the durable snapshot of ``zxid`` (after a SNAP installed it)."""
        for held, data in self.snapshots:
            if held == zxid:
                return DataTree.from_pieces(data[start : start + 1000] for start in range(0, len(data), 1000))
        raise AssertionError(f"s{self.server_id}: no snapshot {zxid_str(zxid)} to load")

    # --- the write queue --------------------------------------------------------------

    def append(self, records: list[Record]) -> None:
        if records and self.pending and records[0].seq <= self.pending[-1].seq:
            self.problems.append(f"s{self.server_id}: persist seq {records[0].seq} not after {self.pending[-1].seq}")
        self.pending.extend(records)

    def flush(self, count: int) -> int:
        """Make the first ``count`` queued records durable; returns the last one's seq."""
        batch, self.pending = self.pending[:count], self.pending[count:]
        for record in batch:
            self._apply(record)
        return batch[-1].seq

    def crash(self, keep: int) -> None:
        keep = min(keep, len(self.pending))
        if keep:
            self.flush(keep)
        self.pending = []
        self.staged = None  # the restart discards a SNAP staged but not installed

    def _truncate_after(self, zxid: Zxid) -> None:
        keep = bisect.bisect_right(self.log_zxids, zxid)
        for gone, _ in self.log[keep:]:
            del self.log_index[gone]
        del self.log[keep:]
        del self.log_zxids[keep:]

    def _purge_through(self, zxid: Zxid) -> None:
        cut = bisect.bisect_right(self.log_zxids, zxid)
        for gone, _ in self.log[:cut]:
            del self.log_index[gone]
        del self.log[:cut]
        del self.log_zxids[:cut]
        self.base = max(self.base, zxid)

    def _apply(self, record: Record) -> None:
        sid = self.server_id
        match record:
            case LogEntry(zxid=zxid, txn=txn):
                last = self.log_zxids[-1] if self.log_zxids else self.base
                if zxid <= last:
                    self.problems.append(f"s{sid}: append {zxid_str(zxid)} not after {zxid_str(last)}")
                elif self.log_zxids and not log_follows(last, zxid):
                    self.problems.append(f"s{sid}: gap in the log: {zxid_str(zxid)} after {zxid_str(last)}")
                self.log.append((zxid, txn))
                self.log_zxids.append(zxid)
                self.log_index[zxid] = txn
            case EpochRecord(accepted_epoch=accepted, current_epoch=current):
                if accepted is not None:
                    if accepted < self.accepted_epoch:
                        self.problems.append(f"s{sid}: acceptedEpoch {self.accepted_epoch} -> {accepted}")
                    self.accepted_epoch = accepted
                if current is not None:
                    if current < self.current_epoch:
                        self.problems.append(f"s{sid}: currentEpoch {self.current_epoch} -> {current}")
                    self.current_epoch = current
            case TruncateRecord(zxid=zxid):
                if zxid < self.base:
                    self.problems.append(f"s{sid}: truncate to {zxid_str(zxid)} below the base {zxid_str(self.base)}")
                self._truncate_after(zxid)
            case SnapshotChunkRecord(zxid=zxid, offset=offset, data=data):
                if offset == 0:
                    self.staged = (zxid, bytearray())
                if self.staged is None or self.staged[0] != zxid or len(self.staged[1]) != offset:
                    self.problems.append(f"s{sid}: snapshot chunk {zxid_str(zxid)}@{offset} out of order")
                    return
                self.staged[1].extend(data)
            case SnapshotRecord(zxid=zxid, size=size, digest=digest):
                staged, self.staged = self.staged, None
                if staged is None or staged[0] != zxid or len(staged[1]) != size:
                    self.problems.append(f"s{sid}: snapshot {zxid_str(zxid)} installed, not staged whole")
                    return
                if hashlib.sha256(staged[1]).digest() != digest:
                    self.problems.append(f"s{sid}: snapshot {zxid_str(zxid)}: digest mismatch")
                    return
                self._store_snapshot(zxid, bytes(staged[1]))
                top = self.log_zxids[-1] if self.log_zxids else self.base
                self._truncate_after(max(self.base, min(zxid, top)))
                self._purge_through(zxid)
            case _:
                raise AssertionError(f"unknown record {record!r}")

    def _store_snapshot(self, zxid: Zxid, data: bytes) -> None:
        self.snapshots = [item for item in self.snapshots if item[0] != zxid]
        self.snapshots.append((zxid, data))
        self.snapshots.sort(key=lambda item: item[0])

    def write_snapshot(self, zxid: Zxid, data: bytes) -> None:
        """The shell's periodic snapshot: write it, keep the newest few, purge the log they cover."""
        self._store_snapshot(zxid, data)
        del self.snapshots[:-SNAPSHOTS_RETAINED]
        oldest = self.snapshots[0][0]
        top = self.log_zxids[-1] if self.log_zxids else self.base
        self._purge_through(min(oldest, top))

    def recover(self) -> DataTree:
        """The tree a restarted server starts from: the newest snapshot (checked as recovery does)."""
        if self.snapshots:
            zxid, data = self.snapshots[-1]
            tree = DataTree.from_bytes(data)
            if tree.last_zxid != zxid:
                self.problems.append(f"s{self.server_id}: snapshot {zxid_str(zxid)} holds {zxid_str(tree.last_zxid)}")
        else:
            tree = DataTree()
        zxid = tree.last_zxid
        if self.base > zxid:
            self.problems.append(
                f"s{self.server_id}: the log was purged through {zxid_str(self.base)}, no snapshot reaches it "
                f"(newest {zxid_str(zxid)}): recovery would refuse"
            )
        previous = zxid
        for entry in self.log_zxids[bisect.bisect_right(self.log_zxids, zxid) :]:
            if previous and not log_follows(previous, entry):
                self.problems.append(
                    f"s{self.server_id}: gap in the log after the snapshot: {zxid_str(entry)} after "
                    f"{zxid_str(previous)}: recovery would refuse"
                )
                break
            previous = entry
        self.loaded_zxid = zxid
        return tree

    def describe(self) -> str:
        snaps = ",".join(zxid_str(zxid) for zxid, _ in self.snapshots) or "-"
        top = zxid_str(self.log_zxids[-1]) if self.log_zxids else "-"
        pending = f" pending={len(self.pending)}" if self.pending else ""
        return (
            f"acc={self.accepted_epoch} cur={self.current_epoch} snaps=[{snaps}] base={zxid_str(self.base)} "
            f"log={len(self.log)}..{top}{pending}"
        )
