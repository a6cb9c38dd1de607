"""The peer's view of its own write stream: durable state plus records in flight.

Theory of operation
-------------------
The core never writes: it emits records (:class:`~coord.zab.types.LogEntry`,
:class:`~coord.zab.types.EpochRecord`, :class:`~coord.zab.types.TruncateRecord`,
:class:`~coord.zab.types.SnapshotRecord`) with consecutive ``seq`` numbers
(starting at 1 for every :class:`~coord.zab.peer.Peer` instance), the shell writes
them strictly in that order, and ``persisted(through_seq)`` reports progress.

A record once emitted cannot be taken back: the shell may already be writing it,
and it will be written before anything emitted later. So the journal keeps two
views:

- the **stream view** (``last_zxid``, ``accepted_epoch``, ``current_epoch``): the
  state the disk will be in once everything emitted so far is written. Votes,
  FOLLOWERINFO and contiguity checks use it, because whatever the core emits next
  lands after those records. If the server crashes first, a new ``Peer`` starts
  from what really is durable (docs/correctness.md, rule 4), so nothing in memory survives that.
- the **durable view** (``durable_last_zxid``, ``durable_current_epoch``, ...): what
  ``persisted`` has confirmed. ACKs, ACKEPOCH, NEWLEADER acknowledgements and
  delivery wait for it (docs/correctness.md, rule 1: persist before you promise).

The :class:`~coord.zab.types.DurableState` object is read, never written: by
contract it reflects at least every record that ``persisted`` has confirmed (it
may already show some later ones). History queries (:meth:`history_contains`,
:meth:`history_after`, :meth:`history_floor`) overlay the log entries still in
flight on it; they are used by a leader only, whose stream holds nothing but
appends by then (asserted), because it waited for its acceptedEpoch record — and
so everything before it — to be durable before it synchronises anyone.

The journal also caches the txns it appended so that delivery need not read them
back from disk; entries missing from the cache (appended by an earlier role or
an earlier process) are read with ``DurableState.entries_after``.

Invariants (asserted): zxids appended are contiguous (docs/correctness.md, rule 6); acceptedEpoch and
currentEpoch never decrease and currentEpoch <= acceptedEpoch; a truncation only
removes a suffix; ``persisted`` never runs ahead of what was emitted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from coord.zab.types import (
    DurableState,
    EpochRecord,
    LogEntry,
    Record,
    SnapshotChunkRecord,
    SnapshotRecord,
    TruncateRecord,
    Zxid,
)
from coord.zxid import COUNTER_MAX, counter_of, epoch_of, format_zxid, make_zxid, zab_follows


class Journal:
    """Emits records in seq order and tracks what they will leave on disk."""

    def __init__(self, durable: DurableState, emit: Callable[[Record], None]) -> None:
        self.durable = durable
        self._emit = emit
        # docs/correctness.md, rule 4: at start, durable state is the only source of truth.
        self.accepted_epoch = durable.accepted_epoch
        self.current_epoch = durable.current_epoch
        self.last_zxid = durable.last_zxid()
        assert self.current_epoch <= self.accepted_epoch, (self.current_epoch, self.accepted_epoch)
        self.durable_accepted_epoch = self.accepted_epoch
        self.durable_current_epoch = self.current_epoch
        self.durable_last_zxid = self.last_zxid
        self.last_seq = 0
        self.persisted_seq = 0
        self._pending: deque[Record] = deque()
        self._pending_rewrites = 0  # truncations and snapshots among _pending
        # Txns appended and not yet delivered: contiguous log entries right after _cache_base.
        self._cache: deque[tuple[Zxid, bytes]] = deque()
        self._cache_base: Zxid = self.last_zxid

    # --- writing ---------------------------------------------------------------------

    def append(self, zxid: Zxid, txn: bytes) -> LogEntry:
        """Emit one log entry; it must follow the log's last zxid (docs/correctness.md, rule 6)."""
        assert zab_follows(self.last_zxid, zxid), f"gap: {format_zxid(zxid)} after {format_zxid(self.last_zxid)}"
        assert epoch_of(zxid) <= self.accepted_epoch, "a txn of an epoch never accepted"
        if not self._cache:
            self._cache_base = self.last_zxid
        record = LogEntry(seq=self._next_seq(), zxid=zxid, txn=txn)
        self.last_zxid = zxid
        self._cache.append((zxid, txn))
        self._push(record)
        return record

    def truncate(self, zxid: Zxid) -> TruncateRecord:
        """Emit a truncation of every entry after ``zxid`` (which must be a proper prefix)."""
        assert zxid < self.last_zxid, (format_zxid(zxid), format_zxid(self.last_zxid))
        record = TruncateRecord(seq=self._next_seq(), zxid=zxid)
        self.last_zxid = zxid
        while self._cache and self._cache[-1][0] > zxid:
            self._cache.pop()
        if not self._cache:
            self._cache_base = min(self._cache_base, zxid)
        self._push(record)
        return record

    def stage_snapshot_chunk(self, zxid: Zxid, offset: int, data: bytes) -> SnapshotChunkRecord:
        """Emit part of a snapshot being received; it changes nothing until installed."""
        record = SnapshotChunkRecord(seq=self._next_seq(), zxid=zxid, offset=offset, data=data)
        self._push(record)
        return record

    def install_snapshot(self, zxid: Zxid, size: int, digest: bytes) -> SnapshotRecord:
        """Emit the installation of the staged snapshot of ``zxid``: it replaces the whole log."""
        record = SnapshotRecord(seq=self._next_seq(), zxid=zxid, size=size, digest=digest)
        self.last_zxid = zxid
        self._cache.clear()
        self._cache_base = zxid
        self._push(record)
        return record

    def set_epochs(self, *, accepted: int | None = None, current: int | None = None) -> EpochRecord:
        """Emit an epoch record; epochs only grow, and currentEpoch <= acceptedEpoch."""
        if accepted is not None:
            assert accepted >= self.accepted_epoch, (accepted, self.accepted_epoch)
            self.accepted_epoch = accepted
        if current is not None:
            assert current >= self.current_epoch, (current, self.current_epoch)
            self.current_epoch = current
        assert self.current_epoch <= self.accepted_epoch, (self.current_epoch, self.accepted_epoch)
        record = EpochRecord(seq=self._next_seq(), accepted_epoch=accepted, current_epoch=current)
        self._push(record)
        return record

    def _next_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def _push(self, record: Record) -> None:
        if isinstance(record, TruncateRecord | SnapshotRecord):
            self._pending_rewrites += 1
        self._pending.append(record)
        self._emit(record)

    # --- completions -------------------------------------------------------------------

    def persisted(self, through_seq: int) -> list[Record]:
        """Records up to ``through_seq`` are durable; returns those newly so, in order."""
        assert through_seq <= self.last_seq, f"persisted({through_seq}) but only {self.last_seq} records emitted"
        done: list[Record] = []
        while self._pending and self._pending[0].seq <= through_seq:
            record = self._pending.popleft()
            match record:
                case LogEntry(zxid=zxid):
                    self.durable_last_zxid = zxid
                case TruncateRecord(zxid=zxid) | SnapshotRecord(zxid=zxid):
                    self.durable_last_zxid = zxid
                    self._pending_rewrites -= 1
                case SnapshotChunkRecord():
                    pass
                case EpochRecord(accepted_epoch=accepted, current_epoch=current):
                    if accepted is not None:
                        self.durable_accepted_epoch = accepted
                    if current is not None:
                        self.durable_current_epoch = current
            done.append(record)
        self.persisted_seq = max(self.persisted_seq, through_seq)
        return done

    @property
    def is_all_persisted(self) -> bool:
        return self.persisted_seq >= self.last_seq

    @property
    def pending_snapshot_zxid(self) -> Zxid | None:
        """The zxid of the last snapshot still in flight (the application will be reset to it)."""
        if not self._pending_rewrites:
            return None
        for record in reversed(self._pending):
            if isinstance(record, SnapshotRecord):
                return record.zxid
        return None

    @property
    def has_pending_rewrites(self) -> bool:
        """Whether a truncation or snapshot is still in flight (the durable log will shrink)."""
        return self._pending_rewrites > 0

    # --- the history, for a leader ---------------------------------------------------

    def _pending_entries(self) -> list[tuple[Zxid, bytes]]:
        assert not self.has_pending_rewrites, "history read while a truncation or snapshot is in flight"
        return [(record.zxid, record.txn) for record in self._pending if isinstance(record, LogEntry)]

    def history_contains(self, zxid: Zxid) -> bool:
        """Whether ``zxid`` is in this server's history (durable or in flight)."""
        if zxid == 0:
            return True
        if zxid > self.last_zxid:
            return False
        return any(entry == zxid for entry, _ in self._pending_entries()) or self.durable.contains(zxid)

    def history_after(self, zxid: Zxid) -> list[tuple[Zxid, bytes]] | None:
        """History entries after ``zxid`` in order, or None when some were purged."""
        entries = self.durable.entries_after(zxid)
        if entries is None:
            return None
        last = entries[-1][0] if entries else zxid
        entries.extend(entry for entry in self._pending_entries() if entry[0] > last)
        previous = zxid
        for entry, _ in entries:
            assert zab_follows(previous, entry), f"history gap: {format_zxid(entry)} after {format_zxid(previous)}"
            previous = entry
        assert previous == max(zxid, self.last_zxid), "history does not reach the log's last zxid"
        return entries

    def history_floor(self, zxid: Zxid) -> Zxid:
        """The highest zxid <= ``zxid`` in this server's history (0 for none).

        Uses only ``contains``: within one epoch a history holds counters 1..m (the
        epoch's leader numbered them so; a purged prefix counts as held, being
        covered by the snapshot), so a binary search finds m; epochs without any
        entry are skipped downwards. Only epochs up to our last zxid's are probed.
        """
        if zxid >= self.last_zxid:
            return self.last_zxid
        epoch = epoch_of(zxid)
        while True:
            top = counter_of(zxid) if epoch == epoch_of(zxid) else COUNTER_MAX
            if top >= 1 and self.history_contains(make_zxid(epoch, 1)):
                low, high = 1, top
                while low < high:
                    middle = (low + high + 1) // 2
                    if self.history_contains(make_zxid(epoch, middle)):
                        low = middle
                    else:
                        high = middle - 1
                return make_zxid(epoch, low)
            if epoch == 0:
                return 0
            epoch -= 1

    # --- reading txns back, for delivery --------------------------------------------

    def entries_between(self, after: Zxid, through: Zxid) -> list[tuple[Zxid, bytes]]:
        """The log entries in ``(after, through]``, which must all be durable."""
        assert through <= self.durable_last_zxid, "reading entries that are not durable"
        assert not self.has_pending_rewrites, "reading entries while a truncation or snapshot is in flight"
        if after >= self._cache_base:
            entries = [entry for entry in self._cache if after < entry[0] <= through]
        else:
            read = self.durable.entries_after(after)
            assert read is not None, f"entries after {format_zxid(after)} were purged before being delivered"
            entries = [entry for entry in read if entry[0] <= through]
        return entries

    def forget_through(self, zxid: Zxid) -> None:
        """Drop cached txns up to ``zxid`` (delivered)."""
        while self._cache and self._cache[0][0] <= zxid:
            self._cache_base = self._cache.popleft()[0]
        if not self._cache:
            self._cache_base = max(self._cache_base, min(zxid, self.last_zxid))

    def clear_cache(self) -> None:
        """Forget cached txns (on a role change): later reads go to the durable state."""
        self._cache.clear()
        self._cache_base = self.last_zxid
