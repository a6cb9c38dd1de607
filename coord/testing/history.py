"""Checking a client history against the servers' own committed logs.

This is the first, exact check of docs/correctness.md ("Checking histories"): the servers can
tell us their linearization order, so use it. (:mod:`coord.testing.linearizability` is the
black-box cross-check that trusts no zxid.)

Inputs
    - The history: every operation clients invoked (:class:`Operation`), with when it
      was invoked and completed, what came back (ok, an error, or nothing: *unknown*),
      the session it was sent on, the session's ``last_zxid`` when it was invoked and
      the zxid its reply carried. :class:`HistoryRecorder` builds it; it takes times
      and zxids from the caller, so it stays pure.
    - Every server's log as read back from disk after the run (:class:`ServerLog`:
      ``(zxid, txn bytes)`` entries, the zxid the log continues from after purges,
      and the snapshots there are).

What is checked (each failure is a :class:`Violation`)
    1. *The logs agree* (``divergent-log``): a zxid held by several servers holds the
       same bytes everywhere, and where two logs overlap they hold the same zxids.
       Their union is the truth; it must run without gaps from an empty tree or from a
       snapshot (``log-gap``).
    2. *Nothing lost* (``lost``, ``wrong-txn``, ``wrong-result``): every write that got
       an answer (ok or an error: failed writes are ordered too, as error txns) is in
       the log at the zxid its reply carried, from its session, with its content; the
       answer matches the state the log implies (a create's czxid, a set's new
       version, NodeExists only where the node existed, BadVersion only on a version
       mismatch...).
    3. *Nothing invented* (``invented``, ``duplicated``): every txn a client session
       made is accounted for by exactly one operation: the one whose reply carried
       its zxid, or else one whose outcome is unknown (it may have happened). Values
       written are unique, so creates and sets are matched by value. (Error txns
       SessionExpired are let pass: a client closing a session that just expired makes
       one.)
    4. *Reads* (``read``): replay the log through a reference model (written here,
       independent of :class:`coord.tree.DataTree`); a read that returned at zxid z
       must equal the state at z: value, version and mzxid, or NoNode. A read may not
       come from beyond the committed log.
    5. *Sessions* (``session-order``): within a session the reply zxids never go down,
       across reconnects too, and a reply is never older than what the session had
       already seen when it sent the request.
    6. *Real time* (``real-time``): a write that completed before another write was
       invoked has the smaller zxid, and a ``sync`` + read (:attr:`OpKind.SYNC_GET`,
       linearizable by contract) returns at a zxid at least that of every write that
       completed before the sync was sent. Together with 2 this is linearizability
       of writes and synced reads, read off the servers' own order. Plain reads are
       only sequentially consistent (a follower may lag), so they get 4 and 5 only.
    7. *The end* (``missing-at-end``): the state a client read after the run equals
       the replayed final state; in particular the last acknowledged create or set
       of every node is there unless the log holds a later change to it.

    8. *Watches* (``watch``, :func:`check_watches`): a one-shot data or exists watch
       registered by a read answered at zxid z is due at the first committed change of
       its path after z (a set or delete of an existing node, a create of a missing
       one). It must fire once, with that change's event type and zxid, and before any
       later reply on its session that carries a zxid at or past the change; it must
       never fire without a due change. After a reconnect the server replays what was
       missed at its current zxid, and only the net change (docs/correctness.md, "Checking histories"),
       so there the event's zxid may be later and its type is that of the node's state
       then (deleted, or data-changed / created), as ZooKeeper's replay decides.

Complexity: linear in the operations and txns, plus a bisection per read.

Left out: children lists and child watches.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from coord.errors import BadVersionError, NodeExistsError, NoNodeError, SessionExpiredError
from coord.testing.linearizability import Outcome
from coord.testing.logs import MergedLog, NodeState, Replay, ServerLog, Violation, merge_logs
from coord.testing.operations import (
    EVENT_CREATED,
    EVENT_DATA_CHANGED,
    EVENT_DELETED,
    HistoryRecorder,
    Operation,
    OpKind,
    WatchRecord,
    linearizability_calls,
)
from coord.txn import CloseSessionTxn, CreateSessionTxn, CreateTxn, DeleteTxn, ErrorTxn, SetDataTxn, Txn
from coord.zxid import log_follows as zxid_follows  # its old name here, in __all__

NO_NODE: Final = NoNodeError.code
NODE_EXISTS: Final = NodeExistsError.code
BAD_VERSION: Final = BadVersionError.code
SESSION_EXPIRED: Final = SessionExpiredError.code


@dataclass(slots=True)
class HistoryReport:
    """What :func:`check_history` found."""

    violations: list[Violation] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.violations

    def describe(self, operations: Sequence[Operation] = (), *, limit: int = 20) -> str:
        """The violations, each with the operations it names."""
        by_id = {op.op_id: op for op in operations}
        stats = ", ".join(f"{key} {value}" for key, value in sorted(self.stats.items()))
        lines = [f"history: {len(self.violations)} violations ({stats})"]
        for violation in self.violations[:limit]:
            lines.append(f"- {violation}")
            for op_id in violation.op_ids:
                if op_id in by_id:
                    lines.append(f"    {by_id[op_id].describe()}")
        if len(self.violations) > limit:
            lines.append(f"... and {len(self.violations) - limit} more")
        return "\n".join(lines)


def _matches(state: NodeState | None, op: Operation) -> bool:
    """Whether a read's answer is ``state``."""
    if op.outcome is Outcome.FAILED:
        return state is None and op.error == NO_NODE
    if state is None or op.read is None:
        return False
    return op.read == (state.data, state.version, state.mzxid)


def _error_justified(op: Operation, before: NodeState | None) -> bool:
    """Whether a write's error answer is what the state before it calls for."""
    if op.error == NODE_EXISTS:
        return op.kind is OpKind.CREATE and before is not None
    if op.error == NO_NODE:
        return op.kind is not OpKind.CREATE and before is None
    if op.error == BAD_VERSION:
        return op.kind is not OpKind.CREATE and before is not None and op.version not in (-1, before.version)
    return True


def check_history(
    operations: Sequence[Operation],
    merged: MergedLog,
    *,
    final_state: Mapping[str, tuple[bytes, int] | None] | None = None,
    watches: Sequence[WatchRecord] = (),
) -> HistoryReport:
    """Check a history against the merged committed log (checks 2-7 of the module doc).

    Args:
        operations: the history.
        merged: from :func:`merge_logs` (its violations are carried over).
        final_state: what a client read at the end, after every server caught up: path
            -> ``(value, version)`` or None, for the paths the history touched.
        watches: the one-shot watches registered (check 8).
    """
    report = HistoryReport(violations=list(merged.violations))
    add = report.violations.append
    replay = Replay(merged.base, merged.base_zxid, merged.txns)
    if watches:
        report.violations.extend(check_watches(watches, operations, replay, report.stats))
    report.violations.extend(replay.violations)
    by_zxid = {txn.zxid: txn for txn in merged.txns}
    base_zxid = merged.base_zxid
    last_zxid = merged.last_zxid
    stats = report.stats
    stats["txns"] = len(merged.txns)
    stats["operations"] = len(operations)

    # --- 2. every answered write is in the log, at its zxid, with its content ----------
    claimed: dict[int, Operation] = {}  # zxid -> the answered write whose reply carried it
    for op in operations:
        if not op.kind.is_write or op.zxid is None or op.outcome is Outcome.UNKNOWN:
            continue
        if op.zxid <= base_zxid:
            stats["writes before the base"] += 1
            continue
        other = claimed.get(op.zxid)
        if other is not None:
            add(Violation("duplicated", f"two replies carry zxid {op.zxid:#x}", (other.op_id, op.op_id), op.zxid))
            continue
        claimed[op.zxid] = op
        txn = by_zxid.get(op.zxid)
        if txn is None:
            add(Violation("lost", f"acknowledged {op.kind.value} of {op.path} is not in the log", (op.op_id,), op.zxid))
            continue
        problem = _txn_problem(op, txn, replay)
        if problem:
            add(Violation("wrong-txn" if "txn" in problem else "wrong-result", problem, (op.op_id,), op.zxid))
        else:
            stats["writes confirmed"] += 1

    # --- 3. every client txn is accounted for -------------------------------------------
    by_value: dict[bytes, Operation] = {}
    unknown_deletes: dict[tuple[int, str], list[Operation]] = defaultdict(list)
    unknown_writes: dict[int, list[Operation]] = defaultdict(list)
    for op in operations:
        if op.kind in (OpKind.CREATE, OpKind.SET) and op.value is not None:
            by_value[op.value] = op
        if op.kind.is_write and op.outcome is Outcome.UNKNOWN:
            unknown_writes[op.session_id].append(op)
            if op.kind is OpKind.DELETE:
                unknown_deletes[(op.session_id, op.path)].append(op)
    used: set[int] = set()
    for txn in merged.txns:
        body = txn.body
        if isinstance(body, CreateSessionTxn | CloseSessionTxn):
            continue
        claimant = claimed.get(txn.zxid)
        if claimant is not None:
            used.add(claimant.op_id)
            continue
        if isinstance(body, CreateTxn | SetDataTxn):
            writer = by_value.get(body.data)
            if writer is None or writer.kind.value != ("create" if isinstance(body, CreateTxn) else "set"):
                add(Violation("invented", f"{type(body).__name__} of {body.path} that no client sent", (), txn.zxid))
            elif writer.op_id in used or writer.outcome is not Outcome.UNKNOWN:
                add(Violation("duplicated", f"{body.path}: {body.data!r} applied again", (writer.op_id,), txn.zxid))
            elif writer.session_id != txn.session_id or writer.path != body.path:
                add(
                    Violation(
                        "invented", f"{body.path} written by the wrong session or path", (writer.op_id,), txn.zxid
                    )
                )
            else:
                used.add(writer.op_id)
                stats["unknown writes applied"] += 1
            continue
        if txn.session_id == 0:
            continue  # the server's own housekeeping (expiry, container and TTL cleanup)
        if isinstance(body, ErrorTxn) and body.code == SESSION_EXPIRED:
            stats["refused requests of closed sessions"] += 1
            continue  # e.g. a client closing a session that had just expired
        pool = (
            unknown_deletes[(txn.session_id, body.path)]
            if isinstance(body, DeleteTxn)
            else unknown_writes[txn.session_id]
        )
        writer = next((candidate for candidate in pool if candidate.op_id not in used), None)
        if writer is None:
            add(
                Violation(
                    "invented", f"{type(body).__name__} from session {txn.session_id:#x} unaccounted", (), txn.zxid
                )
            )
        else:
            used.add(writer.op_id)
            stats["unknown writes applied"] += 1

    # --- 4. reads equal the replayed state at their zxid --------------------------------
    for op in operations:
        if op.kind.is_write or op.outcome is Outcome.UNKNOWN or op.zxid is None:
            continue
        if op.outcome is Outcome.FAILED and op.error != NO_NODE:
            continue
        if op.zxid < base_zxid:
            stats["reads before the base"] += 1
            continue
        if op.zxid > last_zxid:
            add(Violation("read", f"read of {op.path} at {op.zxid:#x}, beyond the committed log", (op.op_id,), op.zxid))
            continue
        state = replay.at(op.path, op.zxid)
        if _matches(state, op):
            stats["reads checked"] += 1
            continue
        seen_at = [zxid for zxid, past in replay.changes(op.path) if _matches(past, op)]
        where = f"; that was the state at {seen_at[-1]:#x}" if seen_at else "; it never was"
        add(
            Violation(
                "read", f"read of {op.path} at {op.zxid:#x} returned other than {state!r}{where}", (op.op_id,), op.zxid
            )
        )

    # --- 5. per session, reply zxids never go down --------------------------------------
    sessions: dict[int, list[Operation]] = defaultdict(list)
    for op in operations:
        sessions[op.session_id].append(op)
    for session_ops in sessions.values():
        highest: tuple[int, int] = (0, -1)  # the highest reply zxid so far, and its op
        for op in sorted(session_ops, key=lambda op: op.invoke_time):
            if op.zxid is None:
                continue
            if op.zxid < op.zxid_before:
                add(Violation("session-order", f"reply at {op.zxid:#x} older than {op.zxid_before:#x}", (op.op_id,)))
            if op.zxid < highest[0]:
                add(
                    Violation(
                        "session-order",
                        f"session {op.session_id:#x} went back from {highest[0]:#x} to {op.zxid:#x}",
                        (highest[1], op.op_id),
                    )
                )
            else:
                highest = (op.zxid, op.op_id)
                stats["session replies checked"] += 1

    # --- 6. real-time order agrees with zxid order for writes and synced reads ---------
    _check_real_time(operations, report)

    # --- 7. the end ---------------------------------------------------------------------
    if final_state is not None:
        for path, seen in sorted(final_state.items()):
            expected = replay.current.get(path)
            want = None if expected is None else (expected.data, expected.version)
            if seen != want:
                add(Violation("missing-at-end", f"{path} reads {seen!r} at the end, the log says {want!r}"))
        latest: dict[str, Operation] = {}
        for op in operations:
            if op.kind not in (OpKind.CREATE, OpKind.SET) or op.outcome is not Outcome.OK or op.zxid is None:
                continue
            if op.path not in latest or op.zxid > (latest[op.path].zxid or 0):
                latest[op.path] = op
        for path, op in latest.items():
            later = [zxid for zxid, _state in replay.changes(path) if op.zxid is not None and zxid > op.zxid]
            if not later and path in final_state:
                seen = final_state[path]
                if seen is None or seen[0] != op.value:
                    add(Violation("missing-at-end", f"acknowledged {op.kind.value} of {path} is gone", (op.op_id,)))
                else:
                    stats["final writes present"] += 1
    return report


def _event_type(before: NodeState | None, after: NodeState | None) -> int:
    if before is None:
        return EVENT_CREATED
    return EVENT_DELETED if after is None else EVENT_DATA_CHANGED


def check_watches(
    watches: Sequence[WatchRecord],
    operations: Sequence[Operation],
    replay: Replay,
    stats: Counter[str] | None = None,
) -> list[Violation]:
    """Check 8 of the module doc: each one-shot watch fired exactly once iff it was due,
    for the right change, and before its session saw a reply at or past that change."""
    stats = Counter() if stats is None else stats
    violations: list[Violation] = []
    replies: dict[int, list[Operation]] = defaultdict(list)  # session -> answered ops with a seq
    for op in operations:
        if op.seq is not None and op.zxid is not None and op.outcome is not Outcome.UNKNOWN:
            replies[op.session_id].append(op)
    for ops in replies.values():
        ops.sort(key=lambda op: op.seq or 0)
    names = {EVENT_CREATED: "created", EVENT_DELETED: "deleted", EVENT_DATA_CHANGED: "data-changed"}

    for watch in watches:
        stats["watches"] += 1

        def fail(message: str, op_ids: tuple[int, ...] = (), zxid: int | None = None, w: WatchRecord = watch) -> None:
            violations.append(Violation("watch", f"{w.describe()}: {message}", op_ids, zxid))

        if watch.zxid < replay.base_zxid:
            stats["watches before the base"] += 1
            continue
        before = replay.at(watch.path, watch.zxid)
        if (before is None) != (watch.kind == "exist"):
            fail(f"registered as {watch.kind} but the node {'is missing' if before is None else 'exists'} there")
            continue
        # any change after z qualifies: a set or delete of the node watched for data, a
        # create of the node an exists watch found missing
        due: tuple[int, int] | None = None  # (zxid, event type) of the qualifying change
        allowed: list[tuple[int, int]] = []  # (zxid, event type) of every later change (for replays)
        previous = before
        for zxid, state in replay.changes(watch.path):
            if zxid <= watch.zxid:
                continue
            allowed.append((zxid, _event_type(previous, state)))
            due = due or allowed[-1]
            previous = state
        if len(watch.events) > 1:
            fail(f"fired {len(watch.events)} times")
            continue
        if due is None:
            if watch.events:
                fail("fired, but the log has no change of the node after the registration")
            else:
                stats["watches not due"] += 1
            continue
        due_zxid, due_type = due
        if watch.events:
            event_type, event_path, event_zxid, event_seq = watch.events[0]
            if event_path != watch.path:
                fail(f"fired for {event_path}")
                continue
            if watch.reconnected:
                # Replayed after a reconnect (SetWatches), at the server's zxid then, as the
                # net change: NODE_DELETED if the node is gone by then, else data-changed for
                # a data watch (even when it was deleted and created again meanwhile) or
                # created for an exists watch, exactly as ZooKeeper's replay decides.
                state_then = replay.at(watch.path, event_zxid)
                if state_then is None:
                    replayed_type = EVENT_DELETED
                else:
                    replayed_type = EVENT_DATA_CHANGED if watch.kind == "data" else EVENT_CREATED
                fine = event_zxid >= due_zxid and (
                    event_type == replayed_type
                    or any(event_type == kind and zxid <= event_zxid for zxid, kind in allowed)
                )
            else:
                fine = (event_type, event_zxid) == (due_type, due_zxid)
            if not fine:
                fail(
                    f"fired {names.get(event_type, event_type)} at {event_zxid:#x}, due: "
                    f"{names[due_type]} at {due_zxid:#x}",
                    zxid=due_zxid,
                )
                continue
            if watch.reconnected and watch.kind == "exist":
                # a node created and deleted again while the client was away is missed, as in
                # ZooKeeper (SetWatches finds no node and re-arms the watch): the event may be
                # for a later create, which is then the change it must precede replies past
                due_zxid = max(zxid for zxid, kind in allowed if kind == event_type and zxid <= event_zxid)
        else:
            event_seq = None
        # it must arrive before the first reply after the registration at or past the change
        first = None
        if watch.seq is not None:
            first = next(
                (
                    op
                    for op in replies.get(watch.session_id, ())
                    if (op.seq or 0) > watch.seq and (op.zxid or 0) >= due_zxid
                ),
                None,
            )
        if first is not None and (event_seq is None or (first.seq or 0) < event_seq):
            if not watch.events and watch.reconnected and watch.kind == "exist":
                # created and deleted again while disconnected: SetWatches finds no node
                stats["exist watches missed over a reconnect"] += 1
                continue
            fail(f"not fired before a reply at {first.zxid or 0:#x} (due at {due_zxid:#x})", (first.op_id,), due_zxid)
        elif watch.events:
            stats["watches fired as due"] += 1
        else:
            stats["watches due, session over before delivery"] += 1
    return violations


_WRITE_TXNS: Final[dict[OpKind, type[CreateTxn | SetDataTxn | DeleteTxn]]] = {
    OpKind.CREATE: CreateTxn,
    OpKind.SET: SetDataTxn,
    OpKind.DELETE: DeleteTxn,
}
"""The txn body an acknowledged write of each kind must have made."""


def _txn_problem(op: Operation, txn: Txn, replay: Replay) -> str:
    """What is wrong with ``txn`` as the txn of the answered write ``op`` ('' if nothing)."""
    body = txn.body
    if txn.session_id != op.session_id:
        return f"the txn at {txn.zxid:#x} is from session {txn.session_id:#x}, not {op.session_id:#x}"
    if op.outcome is Outcome.FAILED:
        if not isinstance(body, ErrorTxn) or body.code != op.error:
            return f"error {op.error} answered, but the txn at {txn.zxid:#x} is {body!r:.120}"
        before = replay.at(op.path, txn.zxid - 1)
        if not _error_justified(op, before):
            return f"error {op.error} answered while {op.path} was {before!r}"
        return ""
    expected = _WRITE_TXNS[op.kind]
    if not (
        isinstance(body, CreateTxn | SetDataTxn | DeleteTxn) and isinstance(body, expected) and body.path == op.path
    ):
        return f"{op.kind.value} of {op.path} answered ok, but the txn at {txn.zxid:#x} is {body!r:.120}"
    if isinstance(body, CreateTxn | SetDataTxn) and body.data != op.value:
        return f"the txn at {txn.zxid:#x} wrote {body.data!r}, not {op.value!r}"
    if isinstance(body, CreateTxn) and bool(body.ephemeral_owner) != op.ephemeral:
        return f"the txn at {txn.zxid:#x} has ephemeral_owner {body.ephemeral_owner:#x}"
    if op.stat is not None:
        after = replay.at(op.path, txn.zxid)
        if after is None or (op.stat[0], op.stat[2]) != (after.version, after.mzxid):
            return f"answered stat {op.stat} but the log gives {after!r}"
    return ""


def _check_real_time(operations: Sequence[Operation], report: HistoryReport) -> None:
    """Check 6: sweep in time order, remembering the highest zxid of completed writes."""
    writes = sorted(
        (op for op in operations if op.kind.is_write and op.outcome is not Outcome.UNKNOWN and op.zxid is not None),
        key=lambda op: op.complete_time or 0.0,
    )
    checked = [
        op
        for op in operations
        if op.zxid is not None
        and op.outcome is not Outcome.UNKNOWN
        and (op.kind.is_write or op.kind is OpKind.SYNC_GET)
        and (op.kind is not OpKind.SYNC_GET or op.outcome is Outcome.OK or op.error == NO_NODE)
    ]
    index = 0
    highest: Operation | None = None
    for op in sorted(checked, key=lambda op: op.invoke_time):
        while index < len(writes) and (writes[index].complete_time or 0.0) < op.invoke_time:
            done = writes[index]
            if highest is None or (done.zxid or 0) > (highest.zxid or 0):
                highest = done
            index += 1
        if highest is None or op.zxid is None or highest.zxid is None:
            continue
        if op.zxid < highest.zxid or (op.kind.is_write and op.zxid == highest.zxid):
            report.violations.append(
                Violation(
                    "real-time",
                    f"{op.kind.value} of {op.path} invoked after a write at {highest.zxid:#x} completed, "
                    f"but answered at {op.zxid:#x}",
                    (highest.op_id, op.op_id),
                    op.zxid,
                )
            )
        else:
            report.stats["real-time checked"] += 1


__all__ = [
    "HistoryRecorder",
    "HistoryReport",
    "MergedLog",
    "NodeState",
    "OpKind",
    "Operation",
    "Replay",
    "ServerLog",
    "Violation",
    "WatchRecord",
    "check_history",
    "check_watches",
    "linearizability_calls",
    "merge_logs",
    "zxid_follows",
]
