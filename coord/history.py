"""Checking a client history against the servers' own committed logs.

This is the first, exact check of docs/correctness.md ("Checking histories"): the servers can
tell us their linearization order, so use it. (:mod:`coord.linearizability` is the
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

import bisect
import enum
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from coord.errors import BadVersionError, NodeExistsError, NoNodeError, SessionExpiredError
from coord.linearizability import Call, Kind, Outcome
from coord.protocol import parent_of
from coord.tree import DataTree
from coord.txn import (
    CheckTxn,
    CloseSessionTxn,
    CreateSessionTxn,
    CreateTxn,
    DeleteTxn,
    ErrorTxn,
    MultiTxn,
    SetDataTxn,
    Txn,
    decode_txn,
)
from coord.zxid import counter_of, log_follows
from coord.zxid import log_follows as zxid_follows  # its old name here, in __all__

NO_NODE: Final = NoNodeError.code
NODE_EXISTS: Final = NodeExistsError.code
BAD_VERSION: Final = BadVersionError.code
SESSION_EXPIRED: Final = SessionExpiredError.code


class OpKind(enum.Enum):
    CREATE = "create"
    SET = "set"
    DELETE = "delete"
    GET = "get"
    """A plain read: sequentially consistent (it may be served by a lagging follower)."""
    SYNC_GET = "sync+get"
    """``sync`` then a read on the same session: linearizable (docs/correctness.md, rule 8)."""

    @property
    def is_write(self) -> bool:
        return self in (OpKind.CREATE, OpKind.SET, OpKind.DELETE)


@dataclass(slots=True, kw_only=True)
class Operation:
    """One operation as its client saw it.

    Attributes:
        op_id: unique in the history.
        process: the worker that ran it (one client, one operation in flight).
        session_id: the session it was sent on.
        kind, path: what was asked.
        value: the value written (create, set); unique across the history.
        version: the expected version of a set or delete (-1: any).
        ephemeral: a create of an ephemeral node.
        invoke_time: when it was invoked (for a sync + read: when the sync was).
        zxid_before: the session's ``last_zxid`` when it was invoked.
        complete_time: when its answer came (None: no answer).
        outcome: ok, failed (an error answer), or unknown.
        error: the error code (failed, and unknown when an exception said why).
        zxid: the zxid the reply carried (None without a reply).
        read: what an ok read returned: ``(value, version, mzxid)``.
        stat: what an ok create or set returned: ``(version, czxid, mzxid)``.
        server: the server that answered (for reports).
    """

    op_id: int
    process: int
    session_id: int
    kind: OpKind
    path: str
    invoke_time: float
    zxid_before: int = 0
    value: bytes | None = None
    version: int = -1
    ephemeral: bool = False
    complete_time: float | None = None
    outcome: Outcome = Outcome.UNKNOWN
    error: int = 0
    zxid: int | None = None
    read: tuple[bytes, int, int] | None = None
    stat: tuple[int, int, int] | None = None
    server: str = ""
    seq: int | None = None
    """Where its reply arrived among its session's frames (for watch ordering; None: not known)."""

    def describe(self) -> str:
        """One line for reports."""
        args = [self.path]
        if self.value is not None:
            args.append(repr(self.value))
        if self.version != -1:
            args.append(f"version={self.version}")
        if self.ephemeral:
            args.append("ephemeral")
        if self.outcome is Outcome.OK:
            result = "ok" + (f" {self.read!r}" if self.read is not None else "")
            if self.stat is not None:
                result += f" v{self.stat[0]}"
        elif self.outcome is Outcome.FAILED:
            result = f"error {self.error}"
        else:
            result = "unknown" + (f" ({self.error})" if self.error else "")
        zxid = "-" if self.zxid is None else f"{self.zxid:#x}"
        end = "-" if self.complete_time is None else f"{self.complete_time:.3f}"
        return (
            f"#{self.op_id} p{self.process} s{self.session_id:#x} {self.kind.value}({', '.join(args)}) -> {result}"
            f" @zxid {zxid} (seen {self.zxid_before:#x}) [{self.invoke_time:.3f}, {end}]"
            + (f" from {self.server}" if self.server else "")
        )


class HistoryRecorder:
    """Builds a history: ``op = invoke(...)``, then exactly one of ``ok``, ``failed``, ``unknown``."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def invoke(
        self,
        *,
        process: int,
        session_id: int,
        kind: OpKind,
        path: str,
        time: float,
        zxid_before: int = 0,
        value: bytes | None = None,
        version: int = -1,
        ephemeral: bool = False,
    ) -> Operation:
        operation = Operation(
            op_id=len(self.operations),
            process=process,
            session_id=session_id,
            kind=kind,
            path=path,
            invoke_time=time,
            zxid_before=zxid_before,
            value=value,
            version=version,
            ephemeral=ephemeral,
        )
        self.operations.append(operation)
        return operation

    def ok(
        self,
        operation: Operation,
        *,
        time: float,
        zxid: int,
        read: tuple[bytes, int, int] | None = None,
        stat: tuple[int, int, int] | None = None,
    ) -> None:
        operation.outcome = Outcome.OK
        operation.complete_time = time
        operation.zxid = zxid
        operation.read = read
        operation.stat = stat

    def failed(self, operation: Operation, *, time: float, zxid: int, error: int) -> None:
        operation.outcome = Outcome.FAILED
        operation.complete_time = time
        operation.zxid = zxid
        operation.error = error

    def unknown(self, operation: Operation, *, error: int = 0) -> None:
        """No usable answer: it may or may not have happened.

        Any zxid that came with the answer is left out on purpose: an operation failed
        by the server going offline (ConnectionLoss) is answered at the server's last
        applied zxid, which belongs to some other txn.
        """
        operation.outcome = Outcome.UNKNOWN
        operation.error = error
        operation.zxid = None

    def counts(self) -> dict[str, int]:
        """Operations by outcome (for reports)."""
        counts = Counter(operation.outcome.value for operation in self.operations)
        return {"total": len(self.operations), **counts}


@dataclass(slots=True, kw_only=True)
class WatchRecord:
    """One one-shot watch as its client saw it.

    Attributes:
        watch_id: unique in the run.
        process, session_id: who registered it.
        kind: ``"data"`` (a get, or an exists that found the node) or ``"exist"`` (an
            exists that found no node).
        path: the watched node.
        zxid: the zxid the registering read's reply carried.
        seq: where that reply arrived among its session's frames (None: not known).
        events: ``(event type, path, zxid, seq)`` of every time it fired, ``seq`` where
            the event arrived among the session's frames (None: not known).
        ended: the session was lost or closed (or the run ended) before it fired.
        reconnected: the client reconnected between the registration and the firing
            (or the end).
    """

    watch_id: int
    process: int
    session_id: int
    kind: str
    path: str
    zxid: int
    seq: int | None = None
    events: list[tuple[int, str, int, int | None]] = field(default_factory=list)
    ended: bool = False
    reconnected: bool = False

    def describe(self) -> str:
        fired = ", ".join(f"{kind}@{zxid:#x}" for kind, _path, zxid, _seq in self.events) or "never"
        extra = (" (session ended)" if self.ended else "") + (" (reconnected)" if self.reconnected else "")
        return (
            f"watch #{self.watch_id} p{self.process} s{self.session_id:#x} {self.kind} {self.path} "
            f"@zxid {self.zxid:#x}: fired {fired}{extra}"
        )


EVENT_CREATED: Final = 1
EVENT_DELETED: Final = 2
EVENT_DATA_CHANGED: Final = 3


def linearizability_calls(operations: Iterable[Operation]) -> list[Call]:
    """The part of a history the black-box checker takes: writes and synced reads of
    persistent nodes (plain reads are not linearizable by contract; ephemerals are
    deleted by session closes no operation records)."""
    calls = []
    for op in operations:
        if op.ephemeral or op.kind is OpKind.GET:
            continue
        kind = {OpKind.CREATE: Kind.CREATE, OpKind.SET: Kind.SET, OpKind.DELETE: Kind.DELETE}.get(op.kind, Kind.GET)
        calls.append(
            Call(
                op_id=op.op_id,
                key=op.path,
                kind=kind,
                invoke=op.invoke_time,
                complete=op.complete_time if op.outcome is not Outcome.UNKNOWN else None,
                outcome=op.outcome,
                value=op.value,
                version=op.version,
                error=op.error if op.outcome is Outcome.FAILED else 0,
                read=None if op.read is None else op.read[:2],
                new_version=None if op.stat is None or op.kind is not OpKind.SET else op.stat[0],
                process=op.process,
            )
        )
    return calls


# --- logs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLog:
    """One server's durable state, read back after the run.

    Attributes:
        server_id: whose.
        entries: ``(zxid, encoded txn)`` in zxid order.
        base_zxid: the log continues from this zxid (entries up to it were purged; 0:
            it holds everything from the start).
        snapshots: snapshot zxid -> the tree it holds (those that could be read).
    """

    server_id: int
    entries: Sequence[tuple[int, bytes]]
    base_zxid: int = 0
    snapshots: Mapping[int, DataTree] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Violation:
    """One thing the history or the logs got wrong."""

    kind: str
    message: str
    op_ids: tuple[int, ...] = ()
    zxid: int | None = None

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}"


@dataclass(slots=True)
class MergedLog:
    """The servers' logs merged: the committed history, from ``base`` at ``base_zxid``."""

    txns: list[Txn]
    base_zxid: int
    base: DataTree
    violations: list[Violation]

    @property
    def last_zxid(self) -> int:
        return self.txns[-1].zxid if self.txns else self.base_zxid


def merge_logs(logs: Sequence[ServerLog], *, detail: int = 5) -> MergedLog:
    """Merge the servers' logs into the committed history (check 1 of the module doc).

    The base is the earliest point the union reaches back to without a gap: the empty
    tree when some server's log was never purged, else the oldest usable snapshot.
    """
    violations: list[Violation] = []
    union: dict[int, bytes] = {}
    holder: dict[int, int] = {}
    for server in logs:
        for zxid, data in server.entries:
            known = union.get(zxid)
            if known is None:
                union[zxid] = bytes(data)
                holder[zxid] = server.server_id
            elif known != data:
                violations.append(
                    Violation(
                        "divergent-log",
                        f"zxid {zxid:#x} differs between servers {holder[zxid]} and {server.server_id}",
                        zxid=zxid,
                    )
                )
    for index, first in enumerate(logs):
        for second in logs[index + 1 :]:
            if not first.entries or not second.entries:
                continue
            low = max(first.entries[0][0], second.entries[0][0])
            high = min(first.entries[-1][0], second.entries[-1][0])
            ours = {zxid for zxid, _ in first.entries if low <= zxid <= high}
            theirs = {zxid for zxid, _ in second.entries if low <= zxid <= high}
            if ours != theirs:
                only = sorted(ours ^ theirs)
                violations.append(
                    Violation(
                        "divergent-log",
                        f"servers {first.server_id} and {second.server_id} hold different zxids in "
                        f"[{low:#x}, {high:#x}]: {', '.join(f'{z:#x}' for z in only[:detail])}"
                        + (" ..." if len(only) > detail else ""),
                        zxid=only[0],
                    )
                )
    zxids = sorted(union)
    candidates: dict[int, DataTree] = {}
    if any(server.base_zxid == 0 and (not server.entries or _starts_fresh(server.entries[0][0])) for server in logs):
        candidates[0] = DataTree()
    for server in logs:
        for zxid, tree in server.snapshots.items():
            candidates.setdefault(zxid, tree)
    base_zxid: int | None = None
    for candidate in sorted(candidates):
        if _runs_on(candidate, zxids[bisect.bisect_right(zxids, candidate) :]):
            base_zxid = candidate
            break
    if base_zxid is None:
        base_zxid = max(candidates, default=0)
        violations.append(
            Violation("log-gap", f"the merged logs have a gap after every usable base; using {base_zxid:#x}")
        )
    base = candidates.get(base_zxid) or DataTree()
    txns = [decode_txn(union[zxid]) for zxid in zxids if zxid > base_zxid]
    return MergedLog(txns=txns, base_zxid=base_zxid, base=base, violations=violations)


def _runs_on(base: int, zxids: Sequence[int]) -> bool:
    """Whether ``zxids`` continue ``base`` without a gap."""
    previous = base
    for zxid in zxids:
        if not log_follows(previous, zxid):
            return False
        previous = zxid
    return True


def _starts_fresh(first_zxid: int) -> bool:
    return counter_of(first_zxid) == 1


# --- the reference model ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeState:
    """A znode as far as the checks care."""

    data: bytes
    version: int
    czxid: int
    mzxid: int
    ephemeral_owner: int = 0


class Replay:
    """Every znode's state along the committed log, queryable at any zxid.

    A reference model written independently of :class:`coord.tree.DataTree` (it only
    reads the base snapshot's nodes), so a bug there does not hide itself here.
    Impossible txns (create of an existing node, set or delete of a missing one) are
    recorded in ``violations``.
    """

    def __init__(self, base: DataTree, base_zxid: int, txns: Sequence[Txn]) -> None:
        self.base_zxid = base_zxid
        self.violations: list[Violation] = []
        self.current: dict[str, NodeState] = {
            path: NodeState(node.data, node.version, node.czxid, node.mzxid, node.ephemeral_owner)
            for path, node in base.nodes.items()
        }
        self.sessions: set[int] = set(base.sessions)
        self._owned: dict[int, set[str]] = defaultdict(set)
        for path, node in self.current.items():
            if node.ephemeral_owner:
                self._owned[node.ephemeral_owner].add(path)
        self._initial: dict[str, NodeState | None] = {}  # path -> its state in the base
        self._zxids: dict[str, list[int]] = {}  # path -> the zxids that changed it
        self._states: dict[str, list[NodeState | None]] = {}  # path -> its state after each
        self.last_zxid = base_zxid
        for txn in txns:
            self.last_zxid = txn.zxid
            self._apply_body(txn.body, txn)

    def at(self, path: str, zxid: int) -> NodeState | None:
        """The state of ``path`` once every txn up to ``zxid`` is applied (``zxid`` >= the base)."""
        zxids = self._zxids.get(path)
        if not zxids:
            return self.current.get(path)  # never changed after the base
        index = bisect.bisect_right(zxids, zxid)
        return self._states[path][index - 1] if index else self._initial[path]

    def changes(self, path: str) -> list[tuple[int, NodeState | None]]:
        """Every change of ``path`` after the base, in zxid order."""
        return list(zip(self._zxids.get(path, []), self._states.get(path, []), strict=True))

    def _apply_body(self, body: object, txn: Txn) -> None:
        zxid = txn.zxid
        match body:
            case CreateTxn():
                for parent in body.parents:
                    self._create(parent, b"", 0, zxid)
                self._create(body.path, body.data, body.ephemeral_owner, zxid)
            case SetDataTxn():
                node = self.current.get(body.path)
                if node is None:
                    self.violations.append(Violation("bad-log", f"set of missing {body.path} at {zxid:#x}", zxid=zxid))
                    return
                self._put(
                    body.path, NodeState(body.data, node.version + 1, node.czxid, zxid, node.ephemeral_owner), zxid
                )
            case DeleteTxn():
                self._delete(body.path, zxid)
            case MultiTxn():
                for op in body.ops:
                    self._apply_body(op, txn)
            case CloseSessionTxn():
                for path in sorted(self._owned.pop(body.session_id, set())):
                    self._delete(path, zxid)
                self.sessions.discard(body.session_id)
            case CreateSessionTxn():
                self.sessions.add(zxid)
            case CheckTxn() | ErrorTxn():
                pass

    def _create(self, path: str, data: bytes, owner: int, zxid: int) -> None:
        if path in self.current:
            self.violations.append(Violation("bad-log", f"create of existing {path} at {zxid:#x}", zxid=zxid))
            return
        if parent_of(path) not in self.current and path != "/":
            self.violations.append(Violation("bad-log", f"create of {path} without parent at {zxid:#x}", zxid=zxid))
        if owner:
            self._owned[owner].add(path)
        self._put(path, NodeState(data, 0, zxid, zxid, owner), zxid)

    def _delete(self, path: str, zxid: int) -> None:
        node = self.current.get(path)
        if node is None:
            self.violations.append(Violation("bad-log", f"delete of missing {path} at {zxid:#x}", zxid=zxid))
            return
        if node.ephemeral_owner:
            self._owned[node.ephemeral_owner].discard(path)
        self._put(path, None, zxid)

    def _put(self, path: str, state: NodeState | None, zxid: int) -> None:
        if path not in self._initial:
            self._initial[path] = self.current.get(path)
        if state is None:
            self.current.pop(path, None)
        else:
            self.current[path] = state
        zxids = self._zxids.setdefault(path, [])
        states = self._states.setdefault(path, [])
        if zxids and zxids[-1] == zxid:  # two changes in one multi: the later one stands
            states[-1] = state
        else:
            zxids.append(zxid)
            states.append(state)


# --- the checks ---------------------------------------------------------------------------


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
            op = by_value.get(body.data)
            if op is None or op.kind.value != ("create" if isinstance(body, CreateTxn) else "set"):
                add(Violation("invented", f"{type(body).__name__} of {body.path} that no client sent", (), txn.zxid))
            elif op.op_id in used or op.outcome is not Outcome.UNKNOWN:
                add(Violation("duplicated", f"{body.path}: {body.data!r} applied again", (op.op_id,), txn.zxid))
            elif op.session_id != txn.session_id or op.path != body.path:
                add(Violation("invented", f"{body.path} written by the wrong session or path", (op.op_id,), txn.zxid))
            else:
                used.add(op.op_id)
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
        op = next((candidate for candidate in pool if candidate.op_id not in used), None)
        if op is None:
            add(
                Violation(
                    "invented", f"{type(body).__name__} from session {txn.session_id:#x} unaccounted", (), txn.zxid
                )
            )
        else:
            used.add(op.op_id)
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
    expected: type = {OpKind.CREATE: CreateTxn, OpKind.SET: SetDataTxn, OpKind.DELETE: DeleteTxn}[op.kind]
    if not isinstance(body, expected) or body.path != op.path:
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
