"""A black-box linearizability checker for znodes seen as registers with versions.

What it checks
    A history is the set of operations clients invoked, each with its invocation and
    completion times and what came back. It is *linearizable* (Herlihy & Wing 1990) if
    every operation can be given a single instant between its invocation and its
    completion such that, run one at a time in that order, the operations give exactly
    the results the clients saw. This module decides that for a history of single-key
    znode operations, trusting nothing the servers say about order (no zxids): it is the
    independent cross-check of :mod:`coord.testing.history`, which uses the servers' own logs.

The model: a register with a version (one per key)
    The state of a key is ``None`` (no node) or ``(value, version)``.

    ============  =======================  ==========================================
    operation     outcome                  legal in state s, and the state after
    ============  =======================  ==========================================
    create(v)     ok                       s is None -> (v, 0)
    create(v)     NodeExists               s is not None, unchanged
    create(v)     NoNode                   never (parents are kept in place)
    set(v, e)     ok, new version n        s = (_, w), e in (-1, w), n = w + 1 -> (v, n)
    set(v, e)     BadVersion               s = (_, w), e != -1, e != w, unchanged
    set(v, e)     NoNode                   s is None, unchanged
    delete(e)     ok                       s = (_, w), e in (-1, w) -> None
    delete(e)     BadVersion / NoNode      as for set, unchanged
    get           ok (v, w)                s == (v, w), unchanged
    get           NoNode                   s is None, unchanged
    ============  =======================  ==========================================

    Any other definite error (BadArguments...) is taken as an operation that changed
    nothing and constrains nothing. An operation whose outcome is *unknown* (the
    connection was lost, the session expired with it in flight, the caller gave up) may
    have taken effect or not, at any time after its invocation: it is checked with a
    completion time of +infinity and any result, and "it never happened" is the
    linearization that puts it last, after everything it could influence. Reads with an
    unknown outcome constrain nothing and are dropped.

    Plain ZooKeeper reads are only sequentially consistent (a follower may serve a
    stale value), so only reads that are linearizable by contract belong here: in
    coord, ``sync()`` followed by a read on the same session, checked as one operation
    from the sync's invocation to the read's completion (docs/correctness.md, rule 8).

The search: Wing & Gong (1993), with Lowe's memoisation (2017)
    The invocations and completions are sorted by time (at equal times invocations
    first, which can only add concurrency, never reject a valid history) into a doubly
    linked list. The search walks it: at an invocation it tries to linearize that
    operation next (apply it to the model; if legal, take it and its completion out of
    the list, push it on a stack, restart at the head); at a completion whose operation
    is not yet linearized it has run out of candidates that could come first, so it
    backtracks (pop the last choice, put it back, try the next candidate after it). The
    history is linearizable iff the list empties; it is not iff the stack empties at a
    completion. Lowe's improvement caches every ``(set of linearized operations, model
    state)`` configuration reached: one seen before cannot lead anywhere new, so it is
    pruned. This is the algorithm of Knossos' "wgl" checker and of Porcupine.

    Complexity: the problem is NP-complete in general (Gibbons & Korach 1997). The cache
    bounds the work by the number of distinct configurations, at most ``2^n * |states|``
    for n operations; in practice it is about ``n * 2^c`` where c is how many operations
    overlap in time, and unique written values (each value names the write that made
    it) keep the reachable states few. Each key is checked under a time limit, and a
    timeout counts as a failure: a checker that gives up must not pass a history.

Why checking key by key is sound
    Linearizability is *local* (Herlihy & Wing, theorem 1): a history of operations on
    several objects is linearizable iff its restriction to each object is. This holds
    here because every operation touches exactly one key, and whether it is legal and
    what it returns depends only on that key's state: the model is the product of
    independent registers. (In coord a create also needs its parent to exist, and the
    close of a session deletes its ephemerals; histories checked here keep parents in
    place and leave ephemerals out, so the keys really are independent.) Checking keys
    separately turns one search exponential in the whole history into many small ones.

Pure: no I/O; the clock used for the time limit is injected.
"""

from __future__ import annotations

import enum
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from coord.errors import BadVersionError, NodeExistsError, NoNodeError

NO_NODE: Final = NoNodeError.code
NODE_EXISTS: Final = NodeExistsError.code
BAD_VERSION: Final = BadVersionError.code

State = tuple[bytes, int] | None
"""A key's state: None (no node) or ``(value, version)``."""


class Kind(enum.Enum):
    CREATE = "create"
    SET = "set"
    DELETE = "delete"
    GET = "get"


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    """The service answered with an error (the operation happened, as a no-op)."""
    UNKNOWN = "unknown"
    """No answer (connection lost, session expired, timed out): it may or may not have happened."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One operation on one key, as its client saw it.

    Attributes:
        op_id: unique within the history (reports name operations by it).
        key: the znode path.
        kind: what was asked.
        invoke: when it was invoked (any clock shared by every client).
        complete: when the answer came; None for an unknown outcome.
        outcome: ok, failed (with ``error``) or unknown.
        value: the value written (create, set).
        version: the expected version of a set or delete (-1: any).
        error: the error code of a failed operation.
        read: what an ok get returned: ``(value, version)``.
        new_version: the version an ok set returned.
        process: who invoked it (for reports).
    """

    op_id: int
    key: str
    kind: Kind
    invoke: float
    complete: float | None
    outcome: Outcome
    value: bytes | None = None
    version: int = -1
    error: int = 0
    read: tuple[bytes, int] | None = None
    new_version: int | None = None
    process: int = 0

    def describe(self) -> str:
        """One line for reports: ``#12 p3 set(/k, b'v7', version=2) -> ok v3 [1.250, 1.262]``."""
        args = [repr(self.key)]
        if self.value is not None:
            args.append(repr(self.value))
        if self.kind in (Kind.SET, Kind.DELETE) and self.version != -1:
            args.append(f"version={self.version}")
        if self.outcome is Outcome.OK:
            if self.kind is Kind.GET:
                result = f"ok {self.read!r}"
            elif self.kind is Kind.SET:
                result = f"ok v{self.new_version}"
            else:
                result = "ok"
        elif self.outcome is Outcome.FAILED:
            result = f"error {self.error}"
        else:
            result = "unknown"
        end = "inf" if self.complete is None else f"{self.complete:.3f}"
        return (
            f"#{self.op_id} p{self.process} {self.kind.value}({', '.join(args)}) -> {result} [{self.invoke:.3f}, {end}]"
        )


class _Invalid:
    """The result of an operation that is not legal in the state it was tried in."""


INVALID: Final = _Invalid()


def step(state: State, call: Call) -> State | _Invalid:
    """The register model: the state after ``call`` in ``state``, or INVALID if its
    recorded outcome is impossible there (see the table in the module doc)."""
    kind = call.kind
    outcome = call.outcome
    if outcome is Outcome.UNKNOWN:
        return _effect(state, call)
    if kind is Kind.GET:
        if outcome is Outcome.OK:
            return state if state == call.read else INVALID
        if call.error == NO_NODE:
            return state if state is None else INVALID
        return state
    if outcome is Outcome.OK:
        after = _effect(state, call)
        if after is state or isinstance(after, _Invalid):  # the operation could not have succeeded here
            return INVALID
        if kind is Kind.SET and call.new_version is not None and (after is None or after[1] != call.new_version):
            return INVALID
        return after
    # a definite error: legal only where the model would refuse the same way
    error = call.error
    if error == NODE_EXISTS:
        return state if kind is Kind.CREATE and state is not None else INVALID
    if error == NO_NODE:
        return state if kind is not Kind.CREATE and state is None else INVALID
    if error == BAD_VERSION:
        if kind is Kind.CREATE or state is None or call.version in (-1, state[1]):
            return INVALID
        return state
    return state


def _effect(state: State, call: Call) -> State | _Invalid:
    """What the operation does if it succeeds in ``state``; ``state`` itself (the same
    object) if the model refuses it there."""
    kind = call.kind
    if kind is Kind.CREATE:
        if state is not None:
            return state
        assert call.value is not None
        return (call.value, 0)
    if kind is Kind.GET:
        return state
    if state is None or call.version not in (-1, state[1]):
        return state
    if kind is Kind.SET:
        assert call.value is not None
        return (call.value, state[1] + 1)
    return None  # delete


# --- the search -----------------------------------------------------------------------


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    VIOLATION = "not linearizable"
    TIMEOUT = "timed out"


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key.

    Attributes:
        key: the znode path.
        verdict: linearizable, not, or timed out (count it as a failure).
        calls: how many operations were checked (unknown reads dropped).
        steps: search steps taken.
        elapsed_s: time spent.
        prefix: when not linearizable, the op ids of the longest linearizable prefix
            found, in order; ``prefix_state`` is the key's state after it.
        blocking: when not linearizable, the operation that could not be placed: the
            earliest-completing one outside the longest prefix.
    """

    key: str
    verdict: Verdict
    calls: int
    steps: int
    elapsed_s: float
    prefix: tuple[int, ...] = ()
    prefix_state: State = None
    blocking: int | None = None

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE


class _Entry:
    """A node of the doubly linked list: an invocation (``is_call``) or a completion."""

    __slots__ = ("call", "index", "is_call", "match", "next", "prev", "time")

    def __init__(self, call: Call | None, index: int, is_call: bool, time: float) -> None:
        self.call = call
        self.index = index
        self.is_call = is_call
        self.time = time
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _lift(entry: _Entry) -> None:
    """Take a call and its completion out of the list (they stay linked to their neighbours)."""
    assert entry.prev is not None and entry.next is not None and entry.match is not None
    entry.prev.next = entry.next
    entry.next.prev = entry.prev
    ret = entry.match
    assert ret.prev is not None
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(entry: _Entry) -> None:
    """Undo :func:`_lift` (lifts are undone in reverse order, so the neighbours are right)."""
    ret = entry.match
    assert ret is not None and ret.prev is not None and entry.prev is not None and entry.next is not None
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    entry.prev.next = entry
    entry.next.prev = entry


_CLOCK_EVERY = 1024
"""Search steps between two looks at the clock."""


def check_key(
    calls: Sequence[Call],
    *,
    time_limit_s: float = 10.0,
    initial: State = None,
    clock: Callable[[], float] = time.monotonic,
) -> KeyResult:
    """Decide whether the operations on one key are linearizable (see the module doc).

    Args:
        calls: the operations, all on the same key.
        time_limit_s: give up (verdict TIMEOUT) after this long.
        initial: the key's state before the first operation.
        clock: seconds, for the time limit.
    """
    started = clock()
    deadline = started + time_limit_s
    key = calls[0].key if calls else ""
    kept = [call for call in calls if not (call.kind is Kind.GET and call.outcome is Outcome.UNKNOWN)]
    assert all(call.key == key for call in kept), "check_key takes the operations of one key"
    entries: list[_Entry] = []
    for index, call in enumerate(kept):
        invocation = _Entry(call, index, True, call.invoke)
        completion = _Entry(None, index, False, math.inf if call.complete is None else call.complete)
        invocation.match, completion.match = completion, invocation
        entries += (invocation, completion)
    # at equal times invocations sort first: more overlap, never a false alarm
    entries.sort(key=lambda entry: (entry.time, not entry.is_call, entry.index))
    head = _Entry(None, -1, False, -math.inf)
    previous = head
    for node in entries:
        previous.next, node.prev = node, previous
        previous = node

    state = initial
    linearized = 0  # bit i: kept[i] is linearized
    seen: set[tuple[int, State]] = set()
    stack: list[tuple[_Entry, State]] = []
    best: tuple[list[int], State] = ([], initial)
    steps = 0
    entry: _Entry | None = head.next
    while head.next is not None:
        steps += 1
        if steps % _CLOCK_EVERY == 0 and clock() > deadline:
            return KeyResult(key, Verdict.TIMEOUT, len(kept), steps, clock() - started)
        assert entry is not None
        if entry.is_call:
            assert entry.call is not None
            after = step(state, entry.call)
            if after is not INVALID:
                assert not isinstance(after, _Invalid)
                configuration = (linearized | (1 << entry.index), after)
                if configuration not in seen:
                    seen.add(configuration)
                    stack.append((entry, state))
                    state = after
                    linearized = configuration[0]
                    _lift(entry)
                    if len(stack) > len(best[0]):
                        best = ([e.index for e, _ in stack], state)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                prefix = tuple(kept[index].op_id for index in best[0])
                placed = set(best[0])
                outside = [call for index, call in enumerate(kept) if index not in placed]
                blocking = min(outside, key=lambda call: math.inf if call.complete is None else call.complete)
                return KeyResult(
                    key, Verdict.VIOLATION, len(kept), steps, clock() - started, prefix, best[1], blocking.op_id
                )
            entry, state = stack.pop()
            linearized &= ~(1 << entry.index)
            _unlift(entry)
            entry = entry.next
    return KeyResult(key, Verdict.LINEARIZABLE, len(kept), steps, clock() - started)


@dataclass(slots=True)
class Report:
    """The verdicts of every key of a history."""

    results: list[KeyResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True iff every key is linearizable (a timeout is a failure)."""
        return all(result.ok for result in self.results)

    @property
    def failures(self) -> list[KeyResult]:
        return [result for result in self.results if not result.ok]

    @property
    def calls(self) -> int:
        return sum(result.calls for result in self.results)

    def describe(self, calls: Iterable[Call] = (), *, context: int = 12) -> str:
        """A readable account of the failures, with the operations around each one."""
        by_id = {call.op_id: call for call in calls}
        lines = [
            f"{len(self.results)} keys, {self.calls} operations: "
            + (
                "linearizable"
                if self.ok
                else f"{len(self.failures)} keys failed ("
                + ", ".join(f"{r.key}: {r.verdict.value}" for r in self.failures)
                + ")"
            )
        ]
        for result in self.failures:
            lines.append(f"- {result.key}: {result.verdict.value} after {result.steps} steps")
            if result.verdict is not Verdict.VIOLATION or not by_id:
                continue
            lines.append(
                f"  longest linearizable prefix: {len(result.prefix)} ops, ending in state {result.prefix_state!r}"
            )
            for op_id in result.prefix[-context:]:
                lines.append(f"    {by_id[op_id].describe()}")
            if result.blocking is not None:
                lines.append(f"  cannot be placed next: {by_id[result.blocking].describe()}")
                blocking = by_id[result.blocking]
                end = math.inf if blocking.complete is None else blocking.complete
                concurrent = [
                    call
                    for call in by_id.values()
                    if call.key == result.key
                    and call.op_id not in result.prefix
                    and call.op_id != blocking.op_id
                    and call.invoke <= end
                ]
                for call in sorted(concurrent, key=lambda c: c.invoke)[:context]:
                    lines.append(f"    pending: {call.describe()}")
        return "\n".join(lines)


def check(
    calls: Iterable[Call],
    *,
    time_limit_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
) -> Report:
    """Check a history key by key (sound by locality: see the module doc).

    Args:
        calls: operations on any keys; every key starts absent.
        time_limit_s: the limit for each key.
        clock: seconds, for the time limits.
    """
    by_key: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        by_key[call.key].append(call)
    report = Report()
    for key in sorted(by_key):
        report.results.append(check_key(by_key[key], time_limit_s=time_limit_s, clock=clock))
    return report


__all__ = [
    "BAD_VERSION",
    "INVALID",
    "NODE_EXISTS",
    "NO_NODE",
    "Call",
    "KeyResult",
    "Kind",
    "Outcome",
    "Report",
    "State",
    "Verdict",
    "check",
    "check_key",
    "step",
]
