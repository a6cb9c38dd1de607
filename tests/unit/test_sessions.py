"""SessionTracker: negotiation, tick-bucketed deadlines, one report per expiry."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coord.sessions import SessionTracker

TICK = 1000


def make_tracker(*, tick_ms: int = TICK, min_timeout_ms: int = 2000, max_timeout_ms: int = 20000) -> SessionTracker:
    return SessionTracker(tick_ms=tick_ms, min_timeout_ms=min_timeout_ms, max_timeout_ms=max_timeout_ms)


@pytest.mark.parametrize(
    ("requested", "granted"),
    [(0, 2000), (-5, 2000), (1999, 2000), (2000, 2000), (7777, 7777), (20000, 20000), (20001, 20000), (10**12, 20000)],
)
def test_negotiate_clamps_into_bounds(requested: int, granted: int) -> None:
    assert make_tracker().negotiate(requested) == granted


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tick_ms": 0, "min_timeout_ms": 1, "max_timeout_ms": 2},
        {"tick_ms": 1, "min_timeout_ms": 0, "max_timeout_ms": 2},
        {"tick_ms": 1, "min_timeout_ms": 3, "max_timeout_ms": 2},
    ],
)
def test_constructor_rejects_bad_bounds(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SessionTracker(**kwargs)


def test_session_expires_at_its_tick_and_not_before() -> None:
    tracker = make_tracker()
    tracker.add(1, 2500, now_ms=100)  # due at 2600, rounded up to the 3000 tick
    assert tracker.deadline_of(1) == 3000
    assert tracker.expired(2600) == []
    assert tracker.expired(2999) == []
    assert tracker.expired(3000) == [1]


def test_deadline_on_a_tick_boundary_is_not_pushed_further() -> None:
    tracker = make_tracker()
    tracker.add(1, 2000, now_ms=1000)
    assert tracker.deadline_of(1) == 3000
    assert tracker.expired(2999) == []
    assert tracker.expired(3000) == [1]


def test_expiry_is_never_before_the_timeout() -> None:
    rng = random.Random(7)
    for _ in range(500):
        tracker = make_tracker(tick_ms=rng.randint(1, 3000))
        now = rng.randint(0, 10**9)
        timeout = rng.randint(2000, 20000)
        tracker.add(1, timeout, now_ms=now)
        assert tracker.expired(now + timeout - 1) == []
        deadline = tracker.deadline_of(1)
        assert deadline is not None and now + timeout <= deadline < now + timeout + tracker.tick_ms


def test_touch_extends_the_deadline() -> None:
    tracker = make_tracker()
    tracker.add(1, 2000, now_ms=0)
    assert tracker.touch(1, now_ms=1500)  # now due at 3500 -> 4000
    assert tracker.expired(2000) == []
    assert tracker.expired(3999) == []
    assert tracker.expired(4000) == [1]


def test_touch_within_the_same_tick_keeps_the_bucket() -> None:
    tracker = make_tracker()
    tracker.add(1, 2000, now_ms=100)
    assert tracker.touch(1, now_ms=900)
    assert tracker.deadline_of(1) == 3000


def test_touch_of_an_unknown_session_is_false() -> None:
    assert not make_tracker().touch(42, now_ms=0)


def test_each_expiry_is_reported_once() -> None:
    tracker = make_tracker()
    tracker.add(1, 2000, now_ms=0)
    assert tracker.expired(5000) == [1]
    assert tracker.expired(5000) == []
    assert tracker.expired(100_000) == []
    assert 1 in tracker  # still known until its close is applied
    assert tracker.is_closing(1)


def test_expired_session_cannot_be_revived_by_touch() -> None:
    tracker = make_tracker()
    tracker.add(1, 2000, now_ms=0)
    assert tracker.expired(2000) == [1]
    assert not tracker.touch(1, now_ms=2001)
    assert tracker.expired(10_000) == []


def test_closing_session_is_never_reported_expired() -> None:
    tracker = make_tracker()
    tracker.add(1, 2000, now_ms=0)
    tracker.add(2, 2000, now_ms=0)
    tracker.set_closing(1)
    assert not tracker.touch(1, now_ms=500)
    assert tracker.expired(10_000) == [2]
    assert tracker.timeout_of(1) == 2000


def test_set_closing_and_remove_ignore_unknown_sessions() -> None:
    tracker = make_tracker()
    tracker.set_closing(9)
    tracker.remove(9)
    assert len(tracker) == 0


def test_removed_session_is_forgotten() -> None:
    tracker = make_tracker()
    tracker.add(1, 2000, now_ms=0)
    tracker.remove(1)
    assert 1 not in tracker
    assert len(tracker) == 0
    assert tracker.timeout_of(1) is None
    assert tracker.expired(10_000) == []


def test_remove_after_expiry_forgets_the_closing_session() -> None:
    tracker = make_tracker()
    tracker.add(1, 2000, now_ms=0)
    assert tracker.expired(2000) == [1]
    tracker.remove(1)
    assert 1 not in tracker
    assert not tracker.is_closing(1)


def test_expired_are_in_deadline_then_id_order() -> None:
    tracker = make_tracker()
    tracker.add(30, 3000, now_ms=0)
    tracker.add(20, 2000, now_ms=0)
    tracker.add(10, 3000, now_ms=0)
    tracker.add(5, 2000, now_ms=0)
    assert tracker.expired(3000) == [5, 20, 10, 30]


def test_re_adding_a_session_restarts_it() -> None:
    tracker = make_tracker()
    tracker.add(1, 2000, now_ms=0)
    assert tracker.expired(2000) == [1]
    tracker.add(1, 5000, now_ms=2000)
    assert tracker.touch(1, now_ms=2000)
    assert tracker.timeout_of(1) == 5000
    assert len(tracker) == 1
    assert tracker.expired(6999) == []
    assert tracker.expired(7000) == [1]


def test_add_keeps_the_timeout_it_was_given() -> None:
    tracker = make_tracker()
    tracker.add(1, 50_000, now_ms=0)  # recorded by a txn under other bounds: not clamped again
    assert tracker.timeout_of(1) == 50_000


def test_add_rejects_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError):
        make_tracker().add(1, 0, now_ms=0)


def test_next_deadline_skips_buckets_emptied_by_touches() -> None:
    tracker = make_tracker()
    assert tracker.next_deadline_ms() is None
    tracker.add(1, 2000, now_ms=0)
    assert tracker.next_deadline_ms() == 2000
    tracker.touch(1, now_ms=1500)
    assert tracker.next_deadline_ms() == 4000
    tracker.set_closing(1)
    assert tracker.next_deadline_ms() is None


def test_contains_and_len_count_known_sessions() -> None:
    tracker = make_tracker()
    tracker.add(1, 2000, now_ms=0)
    tracker.add(2, 2000, now_ms=0)
    assert 1 in tracker and 2 in tracker and 3 not in tracker
    assert "1" not in tracker
    assert len(tracker) == 2


def test_many_sessions_with_frequent_touches_expire_exactly_the_quiet_ones() -> None:
    tracker = make_tracker()
    count = 20_000
    for session_id in range(count):
        tracker.add(session_id, 5000, now_ms=0)
    # the even sessions keep talking, every 100 ms of a 10 s run; the odd ones go quiet
    expired: list[int] = []
    for now in range(100, 10_001, 100):
        for session_id in range(0, count, 2):
            assert tracker.touch(session_id, now_ms=now)
        expired.extend(tracker.expired(now))
    assert expired == list(range(1, count, 2))
    assert tracker.expired(14_999) == []
    assert tracker.expired(15_000) == list(range(0, count, 2))


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "touch", "close", "remove", "expire"]),
            st.integers(min_value=0, max_value=5),
            st.integers(min_value=0, max_value=3000),
            st.integers(min_value=1, max_value=5000),
        ),
        max_size=60,
    )
)
def test_tracker_matches_a_naive_model(ops: list[tuple[str, int, int, int]]) -> None:
    """Against a dict of exact deadlines: same expiries, each once, never early."""
    tick = 250
    tracker = make_tracker(tick_ms=tick, min_timeout_ms=1, max_timeout_ms=10_000)
    model: dict[int, tuple[int, int | None]] = {}  # id -> (timeout, deadline or None if closing)
    now = 0
    for op, session_id, advance, timeout in ops:
        now += advance
        match op:
            case "add":
                tracker.add(session_id, timeout, now_ms=now)
                model[session_id] = (timeout, now + timeout)
            case "touch":
                entry = model.get(session_id)
                live = entry is not None and entry[1] is not None
                assert tracker.touch(session_id, now_ms=now) == live
                if entry is not None and live:
                    model[session_id] = (entry[0], now + entry[0])
            case "close":
                tracker.set_closing(session_id)
                if session_id in model:
                    model[session_id] = (model[session_id][0], None)
            case "remove":
                tracker.remove(session_id)
                model.pop(session_id, None)
            case "expire":
                reported = tracker.expired(now)
                for reported_id in reported:
                    timeout_ms, deadline = model[reported_id]
                    assert deadline is not None and deadline <= now  # never early
                    model[reported_id] = (timeout_ms, None)
                # never late by a tick or more
                assert all(d is None or d + tick > now for _, d in model.values())
        assert len(tracker) == len(model)
        assert all(tracker.timeout_of(i) == model[i][0] for i in model)
