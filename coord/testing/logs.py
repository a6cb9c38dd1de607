"""The servers' logs after a run: merged into the committed history, and replayed.

:func:`merge_logs` checks that the logs agree and merges them into the committed history
(check 1 of :mod:`coord.testing.history`); :class:`Replay` runs it through a reference
model of the znodes, queryable at any zxid, that the other checks compare answers with.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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


__all__ = ["MergedLog", "NodeState", "Replay", "ServerLog", "Violation", "merge_logs"]
