"""The history a test records: every operation and one-shot watch as its client saw it.

:class:`HistoryRecorder` builds the list of :class:`Operation`; it takes times and zxids
from the caller, so it stays pure. :func:`linearizability_calls` hands the part the
black-box checker takes to :mod:`coord.testing.linearizability`; the exact checks are
in :mod:`coord.testing.history`.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from coord.testing.linearizability import Call, Kind, Outcome


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


__all__ = [
    "EVENT_CREATED",
    "EVENT_DATA_CHANGED",
    "EVENT_DELETED",
    "HistoryRecorder",
    "OpKind",
    "Operation",
    "WatchRecord",
    "linearizability_calls",
]
