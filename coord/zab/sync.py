"""The synchronisation decision: how a leader brings a follower's log to its history.

Theory of operation (docs/correctness.md, rule 3)
-------------------------------------------------
The leader looks at the follower's last zxid *and* whether its own history holds
it — not at the number alone:

- **DIFF**: the follower's last zxid is in our history, so its whole log is a
  prefix of ours (two histories that share a zxid share everything before it:
  every txn of epoch e comes from e's leader, after e's initial history). Send the
  entries after it.
- **TRUNC**: the follower holds a zxid we do not — a proposal of a leader that died
  before committing it — *even when that zxid lies inside our range*
  (ZOOKEEPER-1154, 2832). Truncate it to the highest zxid both hold, which is the
  highest of ours at or below its last zxid (:meth:`Journal.history_floor`; every
  follower entry above that point is outside our history), then send the entries
  after that point.
- **SNAP**: the log after the point is purged here (``entries_after`` is None), the
  follower is further behind than ``snap_threshold`` txns, or its *application*
  already holds txns beyond the truncation point (recovery replayed its whole log
  at start-up, as ZooKeeper's does). A truncated log cannot un-apply those;
  ZooKeeper reloads its database from the truncated log, we have no reload, so we
  resend the state: our snapshot (``DurableState.snapshot()``) and the entries
  after it. For mere distance a SNAP is sent only when our snapshot reaches past
  the point the follower shares with us: otherwise (a leader that restarted has
  not re-delivered its history yet, so its snapshot is old) replacing the
  follower's log would destroy durable copies of our history — committed txns
  among them, perhaps on a bare quorum — until they are written again, and take
  its application back in time. The entries go instead.

The entries always run to our last zxid, including proposals not yet durable here
(they are part of our history; the follower may hold them before we do).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from coord.zab.journal import Journal
from coord.zab.types import Zxid
from coord.zxid import counter_of, epoch_of, format_zxid


class SyncKind(enum.Enum):
    DIFF = "diff"
    TRUNC = "trunc"
    SNAP = "snap"


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncPlan:
    kind: SyncKind
    zxid: Zxid  # DIFF: the follower's last zxid; TRUNC: truncate after it; SNAP: the snapshot's zxid
    entries: list[tuple[Zxid, bytes]] = field(default_factory=list)  # history after ``zxid``
    pieces: Iterator[bytes] = field(default_factory=lambda: iter(()))  # SNAP only: the state, lazily serialised


def plan_sync(journal: Journal, *, follower_zxid: Zxid, follower_delivered: Zxid, snap_threshold: int) -> SyncPlan:
    """Decide how to bring a follower whose log ends at ``follower_zxid`` up to our history.

    The DIFF / TRUNC / SNAP choice of docs/correctness.md, rule 3.

    Args:
        journal: the leader's journal (its history).
        follower_zxid: the follower's last zxid.
        follower_delivered: the zxid the follower's application state reflects.
        snap_threshold: send a SNAP rather than more entries than this.

    Returns:
        The plan: DIFF from the follower's last zxid, TRUNC to the highest zxid both
        hold then the entries after it, or SNAP then the entries after the snapshot.
    """
    last = journal.last_zxid
    is_shared = journal.history_contains(follower_zxid)
    if is_shared:
        kind, base = SyncKind.DIFF, follower_zxid
    else:
        base = journal.history_floor(follower_zxid)
        assert base < follower_zxid
        if follower_delivered > base:
            # Its application already applied txns we do not hold: only a snapshot fixes that.
            return _plan_snap(journal)
        kind = SyncKind.TRUNC
    if base >= last:
        return SyncPlan(kind=kind, zxid=base)
    is_far = epoch_of(base) == epoch_of(last) and counter_of(last) - counter_of(base) > snap_threshold
    entries = None if is_far else journal.history_after(base)
    if entries is not None and len(entries) <= snap_threshold:
        return SyncPlan(kind=kind, zxid=base, entries=entries)
    snap = _plan_snap(journal)
    if snap.zxid > base:
        return snap
    # Our snapshot does not reach past what the follower already shares with us (we
    # restarted and have not re-delivered our history yet). A SNAP replaces its whole
    # log: it would destroy durable copies of our history — committed txns among them,
    # perhaps held by a bare quorum — until the entries are written again, and take its
    # application back in time. The entries, however many, do neither.
    entries = journal.history_after(base) if entries is None else entries
    assert entries is not None, f"our log after {format_zxid(base)} is purged, yet our snapshot is older"
    return SyncPlan(kind=kind, zxid=base, entries=entries)


def _plan_snap(journal: Journal) -> SyncPlan:
    zxid, pieces = journal.durable.snapshot()
    assert zxid <= journal.last_zxid and journal.history_contains(zxid), f"snapshot at {format_zxid(zxid)}"
    entries = journal.history_after(zxid)
    assert entries is not None, f"the log after our own snapshot at {format_zxid(zxid)} was purged"
    return SyncPlan(kind=SyncKind.SNAP, zxid=zxid, entries=entries, pieces=pieces)


def entry_runs(
    base: Zxid, entries: list[tuple[Zxid, bytes]], max_batch: int
) -> list[tuple[Zxid, Zxid, tuple[bytes, ...]]]:
    """Split the entries after ``base`` into runs of one epoch, at most ``max_batch`` long.

    Returns:
        ``(previous zxid, first zxid, txns)`` per run; the previous zxid of the first
        run is ``base``.
    """
    runs: list[tuple[Zxid, Zxid, list[bytes]]] = []
    previous = base
    for zxid, txn in entries:
        if runs and zxid == previous + 1 and len(runs[-1][2]) < max_batch:
            runs[-1][2].append(txn)
        else:
            runs.append((previous, zxid, [txn]))
        previous = zxid
    return [(before, first, tuple(txns)) for before, first, txns in runs]
