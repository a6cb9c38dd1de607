"""The black-box linearizability checker: it passes what is linearizable and catches what is not."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from coord.testing.linearizability import (
    BAD_VERSION,
    INVALID,
    NO_NODE,
    NODE_EXISTS,
    Call,
    Kind,
    Outcome,
    State,
    Verdict,
    check,
    check_key,
    step,
)

_ids = itertools.count()


def op(
    kind: Kind,
    start: float,
    end: float | None,
    *,
    key: str = "/k",
    value: bytes | None = None,
    version: int = -1,
    error: int = 0,
    read: tuple[bytes, int] | None = None,
    new_version: int | None = None,
    outcome: Outcome | None = None,
) -> Call:
    if outcome is None:
        outcome = Outcome.UNKNOWN if end is None else Outcome.FAILED if error else Outcome.OK
    return Call(
        op_id=next(_ids),
        key=key,
        kind=kind,
        invoke=start,
        complete=end,
        outcome=outcome,
        value=value,
        version=version,
        error=error,
        read=read,
        new_version=new_version,
    )


def create(start: float, end: float | None, value: bytes, **kw: object) -> Call:
    return op(Kind.CREATE, start, end, value=value, **kw)  # type: ignore[arg-type]


def set_(start: float, end: float | None, value: bytes, version: int = -1, **kw: object) -> Call:
    return op(Kind.SET, start, end, value=value, version=version, **kw)  # type: ignore[arg-type]


def get(start: float, end: float | None, read: tuple[bytes, int] | None, **kw: object) -> Call:
    if read is None:
        return op(Kind.GET, start, end, error=NO_NODE, **kw)  # type: ignore[arg-type]
    return op(Kind.GET, start, end, read=read, **kw)  # type: ignore[arg-type]


def delete(start: float, end: float | None, version: int = -1, **kw: object) -> Call:
    return op(Kind.DELETE, start, end, version=version, **kw)  # type: ignore[arg-type]


# --- the model --------------------------------------------------------------------------


def test_model_follows_zookeeper_semantics() -> None:
    assert step(None, create(0, 1, b"a")) == (b"a", 0)
    assert step((b"a", 0), create(0, 1, b"b")) is INVALID
    assert step((b"a", 0), create(0, 1, b"b", error=NODE_EXISTS)) == (b"a", 0)
    assert step((b"a", 0), set_(0, 1, b"b", version=0, new_version=1)) == (b"b", 1)
    assert step((b"a", 3), set_(0, 1, b"b", version=0, new_version=1)) is INVALID
    assert step((b"a", 3), set_(0, 1, b"b", version=0, error=BAD_VERSION)) == (b"a", 3)
    assert step((b"a", 0), set_(0, 1, b"b", version=0, error=BAD_VERSION)) is INVALID  # the version matched
    assert step(None, set_(0, 1, b"b", error=NO_NODE)) is None
    assert step(None, set_(0, 1, b"b", version=2, error=BAD_VERSION)) is INVALID  # NoNode comes first
    assert step((b"a", 2), delete(0, 1, version=2)) is None
    assert step((b"a", 2), delete(0, 1, version=1)) is INVALID
    assert step(None, delete(0, 1)) is INVALID
    assert step((b"a", 2), get(0, 1, (b"a", 2))) == (b"a", 2)
    assert step((b"a", 2), get(0, 1, (b"a", 1))) is INVALID
    assert step(None, get(0, 1, None)) is None
    # an unknown outcome: the effect if it happened (never happening is "last")
    assert step(None, create(0, None, b"x")) == (b"x", 0)
    assert step((b"a", 0), create(0, None, b"x")) == (b"a", 0)
    assert step((b"a", 0), set_(0, None, b"x", version=5)) == (b"a", 0)


def test_a_set_must_report_the_version_it_made() -> None:
    assert step((b"a", 1), set_(0, 1, b"b", new_version=2)) == (b"b", 2)
    assert step((b"a", 1), set_(0, 1, b"b", new_version=7)) is INVALID


# --- linearizable histories pass ------------------------------------------------------------


def test_sequential_history_is_linearizable() -> None:
    history = [
        create(0, 1, b"a"),
        get(2, 3, (b"a", 0)),
        set_(4, 5, b"b", version=0, new_version=1),
        get(6, 7, (b"b", 1)),
        delete(8, 9, version=1),
        get(10, 11, None),
    ]
    assert check_key(history).ok


def test_concurrent_operations_may_take_effect_in_either_order() -> None:
    # the read overlaps the set, so it may see the old or the new value
    for seen in [(b"a", 0), (b"b", 1)]:
        history = [create(0, 1, b"a"), set_(2, 6, b"b", new_version=1), get(3, 4, seen)]
        assert check_key(history).ok, seen
    # two overlapping reads may see the change in the order real time allows
    history = [
        create(0, 1, b"a"),
        set_(2, 10, b"b", new_version=1),
        get(3, 5, (b"b", 1)),
        get(6, 8, (b"b", 1)),
    ]
    assert check_key(history).ok


def test_unknown_write_may_or_may_not_have_happened() -> None:
    base = [create(0, 1, b"a")]
    seen = [*base, set_(2, None, b"b"), get(5, 6, (b"b", 1))]
    not_seen = [*base, set_(2, None, b"b"), get(5, 6, (b"a", 0))]
    assert check_key(seen).ok
    assert check_key(not_seen).ok
    # ... but once seen it cannot be unseen
    flip = [*base, set_(2, None, b"b"), get(5, 6, (b"b", 1)), get(7, 8, (b"a", 0))]
    assert check_key(flip).verdict is Verdict.VIOLATION


def test_unknown_reads_are_dropped() -> None:
    history = [create(0, 1, b"a"), op(Kind.GET, 2, None, outcome=Outcome.UNKNOWN)]
    result = check_key(history)
    assert result.ok and result.calls == 1


def test_failed_operations_constrain_the_state() -> None:
    history = [
        create(0, 1, b"a"),
        create(2, 3, b"b", error=NODE_EXISTS),
        set_(4, 5, b"c", version=3, error=BAD_VERSION),
        delete(6, 7, version=0),
        set_(8, 9, b"d", error=NO_NODE),
    ]
    assert check_key(history).ok


# --- and the checker can fail ---------------------------------------------------------------


def test_stale_read_is_caught() -> None:
    history = [
        create(0, 1, b"a"),
        set_(2, 3, b"b", new_version=1),
        get(4, 5, (b"a", 0)),  # after the set completed: stale
    ]
    result = check_key(history)
    assert result.verdict is Verdict.VIOLATION
    assert result.blocking == history[2].op_id
    assert result.prefix_state == (b"b", 1)


def test_lost_write_is_caught() -> None:
    history = [create(0, 1, b"a"), set_(2, 3, b"b", new_version=1), get(4, 5, None)]
    assert check_key(history).verdict is Verdict.VIOLATION
    # an acknowledged create that a later read does not find
    assert check_key([create(0, 1, b"a"), get(2, 3, None)]).verdict is Verdict.VIOLATION


def test_compare_and_set_violation_is_caught() -> None:
    # two writers both read version 0 and both "win" a CAS on it
    history = [
        create(0, 1, b"a"),
        set_(2, 5, b"x", version=0, new_version=1),
        set_(3, 6, b"y", version=0, new_version=1),
    ]
    assert check_key(history).verdict is Verdict.VIOLATION
    # one of them must lose with BadVersion
    fixed = [history[0], history[1], set_(3, 6, b"y", version=0, error=BAD_VERSION)]
    assert check_key(fixed).ok


def test_double_create_is_caught() -> None:
    history = [create(0, 2, b"a"), create(1, 3, b"b")]
    assert check_key(history).verdict is Verdict.VIOLATION


def test_read_of_a_value_never_written_is_caught() -> None:
    assert check_key([create(0, 1, b"a"), get(2, 3, (b"zzz", 0))]).verdict is Verdict.VIOLATION


def test_a_timeout_is_a_failure() -> None:
    # 20 concurrent blind sets, then a read of a value none wrote: the search must try
    # every subset of sets (about n * 2^n configurations) before it can say no
    many = [set_(0, 100, b"v%d" % i) for i in range(20)]
    history = [create(-2, -1, b"a"), *many, get(200, 201, (b"nope", 99))]
    ticks = itertools.count()  # a clock that advances one second per look
    result = check_key(history, time_limit_s=3, clock=lambda: float(next(ticks)))
    assert result.verdict is Verdict.TIMEOUT
    assert not result.ok
    assert not check(history, time_limit_s=3, clock=lambda: float(next(ticks))).ok


def test_keys_are_checked_separately_and_reported() -> None:
    good = [create(0, 1, b"a", key="/a"), get(2, 3, (b"a", 0), key="/a")]
    bad = [create(0, 1, b"b", key="/b"), get(2, 3, None, key="/b")]
    report = check([*good, *bad])
    assert not report.ok
    assert [result.key for result in report.failures] == ["/b"]
    text = report.describe([*good, *bad])
    assert "/b: not linearizable" in text and "cannot be placed next" in text


# --- against a brute-force oracle -------------------------------------------------------------


def brute_force(calls: list[Call]) -> bool:
    """Try every order of every subset of unknown ops (tiny histories only)."""
    known = [call for call in calls if call.outcome is not Outcome.UNKNOWN]
    unknown = [call for call in calls if call.outcome is Outcome.UNKNOWN and call.kind is not Kind.GET]
    for size in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, size):
            ops = known + list(chosen)
            for order in itertools.permutations(ops):
                if _respects_real_time(order) and _legal(order):
                    return True
    return False


def _respects_real_time(order: tuple[Call, ...]) -> bool:
    for i, earlier in enumerate(order):
        for later in order[i + 1 :]:
            end = math.inf if later.complete is None else later.complete
            if end < earlier.invoke:
                return False
    return True


def _legal(order: tuple[Call, ...]) -> bool:
    state: State = None
    for call in order:
        after = step(state, call)
        if after is INVALID:
            return False
        state = after  # type: ignore[assignment]
    return True


@st.composite
def small_histories(draw: st.DrawFn) -> list[Call]:
    """Histories of a real register (each op takes effect at a point inside its interval,
    in order), with random overlaps and unknown outcomes; half of them with one read
    corrupted, so both verdicts come up."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    state: State = None
    calls: list[Call] = []
    for index in range(draw(st.integers(1, 6))):
        point = float(index)
        kind = rng.choice(list(Kind))
        attempt = Call(
            op_id=index,
            key="/k",
            kind=kind,
            invoke=point - rng.random() * 2,
            complete=point + rng.random() * 2,
            outcome=Outcome.UNKNOWN,
            value=b"v%d" % index if kind in (Kind.CREATE, Kind.SET) else None,
            version=rng.choice([-1, -1, 0, 1]) if kind in (Kind.SET, Kind.DELETE) else -1,
        )
        effect = step(state, attempt)  # what it does if it happens
        assert effect is not INVALID
        result: dict[str, object] = {"outcome": Outcome.OK}
        if kind is Kind.GET:
            result = {"outcome": Outcome.FAILED, "error": NO_NODE} if state is None else {"read": state, **result}
        elif effect is state:  # refused
            error = NODE_EXISTS if kind is Kind.CREATE else NO_NODE if state is None else BAD_VERSION
            result = {"outcome": Outcome.FAILED, "error": error}
        elif kind is Kind.SET:
            result["new_version"] = effect[1]  # type: ignore[index]
        if kind is not Kind.GET and rng.random() < 0.2:
            result = {"outcome": Outcome.UNKNOWN, "complete": None}
            if rng.random() < 0.5:
                effect = state  # it never happened
        calls.append(replace(attempt, **result))  # type: ignore[arg-type]
        state = effect  # type: ignore[assignment]
    reads = [i for i, call in enumerate(calls) if call.kind is Kind.GET]
    if reads and draw(st.booleans()):
        i = rng.choice(reads)
        calls[i] = replace(calls[i], outcome=Outcome.OK, error=0, read=(b"v%d" % rng.randint(0, 5), rng.randint(0, 2)))
    return calls


@settings(max_examples=300, deadline=None)
@given(small_histories())
def test_agrees_with_brute_force(calls: list[Call]) -> None:
    assert check_key(calls).ok == brute_force(calls)
