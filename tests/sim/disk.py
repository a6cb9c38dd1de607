"""The simulator's fake disk: one per server, it outlives the server's crashes.

A server's ``Peer`` emits records (``Output.persist``) in seq order. The simulator
appends them to :attr:`FakeDisk.pending` (the write queue of the shell) and decides
when a prefix of that queue becomes durable (:meth:`FakeDisk.flush`), after which it
reports ``peer.persisted(seq)``. A crash (:meth:`FakeDisk.crash`) loses whatever is
still pending; a restarted ``Peer`` reads only what is durable.

The durable state is

- ``accepted_epoch`` / ``current_epoch`` (from :class:`EpochRecord`),
- a *base*: the snapshot the log starts after (zxid 0 and the empty state at first;
  replaced by a :class:`SnapshotRecord` or by the shell's own periodic snapshot,
  :meth:`FakeDisk.purge`),
- the log: ``(zxid, txn)`` strictly increasing, all after the base.

The disk implements :class:`coord.zab.types.DurableState` over the *durable* state only,
as the production shell does over LMDB (a reader sees committed write transactions,
never the write queue). ``snapshot()`` returns the server's *application* state, which
the simulator keeps next to the disk (see :class:`tests.sim.sim.Server`), and
``applied_zxid()`` the zxid of the base the application loaded at start-up.

Disk-level invariants (appends strictly increase and leave no gap inside an epoch,
epochs never go back, currentEpoch <= acceptedEpoch, nothing truncated below the
base) are reported to a callback rather than raised, so the checker can name the
seed and the step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import cbor2

from coord.zab.types import EpochRecord, LogEntry, Record, SnapshotChunkRecord, SnapshotRecord, TruncateRecord, Zxid
from coord.zxid import log_follows
from tests.sim.trace import zxid_str

AppState = list[tuple[Zxid, bytes]]


def encode_state(state: AppState) -> bytes:
    """Serialise an application state (the delivered ``(zxid, txn)`` list) as CBOR."""
    return cbor2.dumps([[zxid, txn] for zxid, txn in state])


def decode_state(data: bytes) -> AppState:
    """Inverse of :func:`encode_state`; raises ``ValueError`` on anything malformed."""
    items = cbor2.loads(data)
    if not isinstance(items, list):
        raise ValueError("snapshot is not a list")
    state: AppState = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and isinstance(item[1], bytes)):
            raise ValueError(f"bad snapshot item {item!r}")
        state.append((item[0], item[1]))
    return state


Removed = list[tuple[Zxid, bytes]]


class FakeDisk:
    """One server's durable state plus its write queue. See the module docstring."""

    def __init__(self, server_id: int, app_snapshot: Callable[[], tuple[Zxid, bytes]] | None = None) -> None:
        self.server_id = server_id
        self.accepted_epoch = 0
        self.current_epoch = 0
        self.base_zxid: Zxid = 0
        self.base: AppState = []
        self.base_index: dict[Zxid, bytes] = {}
        self.log: list[tuple[Zxid, bytes]] = []
        self.log_index: dict[Zxid, bytes] = {}
        self.pending: list[Record] = []
        self.loaded_zxid: Zxid = 0  # set at each start-up: the base the application loaded
        # Set by the owner: returns the application state for ``snapshot()``.
        self.app_snapshot = app_snapshot
        self.problems: list[str] = []  # disk-level invariant violations, drained by the checker
        self.staged: tuple[Zxid, bytearray] | None = None  # a SNAP being received (lost at a crash)

    # --- DurableState ------------------------------------------------------------

    def last_zxid(self) -> Zxid:
        """The newest durable zxid (log or base)."""
        return self.log[-1][0] if self.log else self.base_zxid

    def entries_after(self, zxid: Zxid) -> list[tuple[Zxid, bytes]] | None:
        """Durable log entries after ``zxid``, or None when some of them were purged."""
        if zxid < self.base_zxid:
            return None
        # The log is short enough (thousands) that a bisect is not worth the clarity cost.
        lo, hi = 0, len(self.log)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.log[mid][0] <= zxid:
                lo = mid + 1
            else:
                hi = mid
        return list(self.log[lo:])

    def contains(self, zxid: Zxid) -> bool:
        """Whether ``zxid`` is in this server's durable history (log or base)."""
        return zxid == 0 or zxid == self.base_zxid or zxid in self.log_index or zxid in self.base_index

    def applied_zxid(self) -> Zxid:
        """The zxid the application state loaded at the core's start-up covers (the base then)."""
        return self.loaded_zxid

    def snapshot(self) -> tuple[Zxid, Iterator[bytes]]:
        """The application state at the newest delivered zxid (kept by the simulator), in
        pieces of 50 bytes (the leader cuts them into its own chunk size)."""
        assert self.app_snapshot is not None, "FakeDisk.app_snapshot not wired"
        zxid, data = self.app_snapshot()
        return zxid, (data[start : start + 50] for start in range(0, len(data), 50))

    # --- what the checker asks --------------------------------------------------------

    def holds(self, zxid: Zxid, txn: bytes) -> bool:
        """Whether ``(zxid, txn)`` is durable here: in the log or covered by the base."""
        found = self.log_index.get(zxid)
        if found is None:
            found = self.base_index.get(zxid)
        return found == txn

    # --- the write queue ---------------------------------------------------------------

    def append(self, records: list[Record]) -> None:
        """Queue records (in seq order) for writing."""
        if records:
            if self.pending and records[0].seq <= self.pending[-1].seq:
                self.problems.append(
                    f"s{self.server_id}: persist seq {records[0].seq} not after {self.pending[-1].seq}"
                )
            self.pending.extend(records)

    def flush(self, count: int) -> tuple[int, Removed]:
        """Make the first ``count`` pending records durable.

        Returns:
            The seq of the last record made durable, and every ``(zxid, txn)`` the
            writes removed from the durable history (by truncation or snapshot), so
            the checker can see whether a committed txn lost its quorum.
        """
        assert 0 < count <= len(self.pending)
        batch, self.pending = self.pending[:count], self.pending[count:]
        removed: Removed = []
        for record in batch:
            removed.extend(self.apply(record))
        return batch[-1].seq, removed

    def crash(self, keep: int = 0) -> tuple[int | None, Removed]:
        """The server died: the first ``keep`` pending writes made it, the rest is lost.

        Returns:
            Like :meth:`flush` (seq None when nothing was kept).
        """
        seq: int | None = None
        removed: Removed = []
        keep = min(keep, len(self.pending))
        if keep:
            seq, removed = self.flush(keep)
        self.pending = []
        self.staged = None  # the restart discards a SNAP staged but not installed
        return seq, removed

    def apply(self, record: Record) -> Removed:
        """Apply one record to the durable state; returns what it removed."""
        match record:
            case LogEntry(zxid=zxid, txn=txn):
                last = self.last_zxid()
                if zxid <= last:
                    self.problems.append(f"s{self.server_id}: append {zxid_str(zxid)} not after {zxid_str(last)}")
                elif last and not log_follows(last, zxid):  # inside an epoch, as the durable log checks
                    self.problems.append(f"s{self.server_id}: gap in log: {zxid_str(zxid)} after {zxid_str(last)}")
                self.log.append((zxid, txn))
                self.log_index[zxid] = txn
                return []
            case EpochRecord(accepted_epoch=accepted, current_epoch=current):
                if accepted is not None:
                    if accepted < self.accepted_epoch:
                        self.problems.append(f"s{self.server_id}: acceptedEpoch {self.accepted_epoch} -> {accepted}")
                    self.accepted_epoch = accepted
                if current is not None:
                    if current < self.current_epoch:
                        self.problems.append(f"s{self.server_id}: currentEpoch {self.current_epoch} -> {current}")
                    self.current_epoch = current
                if self.current_epoch > self.accepted_epoch:
                    self.problems.append(
                        f"s{self.server_id}: currentEpoch {self.current_epoch} > acceptedEpoch {self.accepted_epoch}"
                    )
                return []
            case TruncateRecord(zxid=zxid):
                if zxid < self.base_zxid:
                    self.problems.append(
                        f"s{self.server_id}: truncate to {zxid_str(zxid)} below snapshot {zxid_str(self.base_zxid)}"
                    )
                keep = len(self.log)
                while keep and self.log[keep - 1][0] > zxid:
                    keep -= 1
                removed = self.log[keep:]
                del self.log[keep:]
                for gone, _ in removed:
                    del self.log_index[gone]
                return removed
            case SnapshotChunkRecord(zxid=zxid, offset=offset, data=data):
                if offset == 0:
                    self.staged = (zxid, bytearray())
                if self.staged is None or self.staged[0] != zxid or len(self.staged[1]) != offset:
                    self.problems.append(f"s{self.server_id}: snapshot chunk {zxid_str(zxid)}@{offset} out of order")
                    return []
                self.staged[1].extend(data)
                return []
            case SnapshotRecord(zxid=zxid, size=size, digest=digest):
                staged, self.staged = self.staged, None
                if staged is None or staged[0] != zxid or len(staged[1]) != size:
                    self.problems.append(f"s{self.server_id}: snapshot {zxid_str(zxid)} installed, not staged whole")
                    return []
                if hashlib.sha256(staged[1]).digest() != digest:
                    self.problems.append(f"s{self.server_id}: snapshot {zxid_str(zxid)}: digest mismatch")
                    return []
                state = decode_state(bytes(staged[1]))
                top = state[-1][0] if state else 0
                if top != zxid:
                    self.problems.append(
                        f"s{self.server_id}: snapshot at {zxid_str(zxid)} holds state up to {zxid_str(top)}"
                    )
                new_index = dict(state)
                removed = [(z, t) for z, t in self.log if new_index.get(z) != t]
                removed.extend((z, t) for z, t in self.base if new_index.get(z) != t)
                self.base_zxid, self.base, self.base_index = zxid, state, new_index
                self.log, self.log_index = [], {}
                return removed
        raise AssertionError(f"unknown record {record!r}")

    def purge(self, state: AppState) -> None:
        """The shell's periodic snapshot: ``state`` (delivered, so durable here) becomes the
        base, and log entries it covers are dropped. Nothing leaves the history.
        """
        if not state or state[-1][0] <= self.base_zxid:
            return
        zxid = state[-1][0]
        index = dict(state)
        for z, t in self.log:
            if z > zxid:
                break
            if index.get(z) != t:
                self.problems.append(f"s{self.server_id}: purge would drop {zxid_str(z)} not in the delivered state")
        self.base_zxid, self.base, self.base_index = zxid, list(state), index
        keep = [(z, t) for z, t in self.log if z > zxid]
        self.log = keep
        self.log_index = dict(keep)

    def describe(self) -> str:
        """One line: epochs, base and log (for traces and transcripts)."""
        entries = [f"{zxid_str(z)}={t.decode(errors='replace')}" for z, t in self.log]
        if len(entries) > 8:
            entries = [*entries[:2], f"...{len(entries) - 7} more...", *entries[-5:]]
        log = " ".join(entries)
        pend = f" pending={len(self.pending)}" if self.pending else ""
        return (
            f"acc={self.accepted_epoch} cur={self.current_epoch} base={zxid_str(self.base_zxid)}"
            f"({len(self.base)}) log=[{log}]{pend}"
        )
