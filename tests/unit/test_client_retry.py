"""Retry: what it retries, how long it sleeps, when it gives up (on a mock clock)."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from client import (
    BadVersionError,
    ConnectionLossError,
    NodeExistsError,
    NotLeaderError,
    OperationTimeoutError,
    Retry,
    ServerBehindError,
    SessionExpiredError,
    ThrottledOpError,
)


class Flaky:
    """Fails with the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls: list[float] = []

    async def __call__(self, value: str = "ok") -> str:
        self.calls.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if self.errors:
            raise self.errors.pop(0)
        return value


@pytest.mark.parametrize(
    "error", [ConnectionLossError(), OperationTimeoutError(), ThrottledOpError(), NotLeaderError(), ServerBehindError()]
)
async def test_retry_retries_passing_errors(error: Exception, autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(error, error)
    assert await Retry(max_tries=3)(flaky, value="done") == "done"
    assert len(flaky.calls) == 3


@pytest.mark.parametrize("error", [SessionExpiredError(), NodeExistsError(), BadVersionError(), ValueError()])
async def test_retry_never_retries_other_errors(error: Exception, autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(error)
    with pytest.raises(type(error)):
        await Retry(max_tries=5)(flaky)
    assert len(flaky.calls) == 1


async def test_retry_raises_the_last_error_after_max_tries(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(*[ConnectionLossError(f"attempt {n}") for n in range(1, 10)])
    with pytest.raises(ConnectionLossError, match="attempt 4"):
        await Retry(max_tries=4)(flaky)
    assert len(flaky.calls) == 4


async def test_retry_backs_off_exponentially_with_jitter_up_to_max_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(*[ConnectionLossError()] * 6)
    retry = Retry(max_tries=None, delay=0.1, backoff=2.0, max_delay=0.5, jitter=0.5, rng=random.Random(7))
    await retry(flaky)
    pauses = [later - earlier for earlier, later in zip(flaky.calls, flaky.calls[1:], strict=False)]
    bases = [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert len(pauses) == len(bases)
    for pause, base in zip(pauses, bases, strict=True):
        assert base * 0.5 <= pause <= base + 1e-9


async def test_retry_jitter_comes_from_the_injected_rng(autojump_clock: trio.testing.MockClock) -> None:
    first = Retry(rng=random.Random(1))
    second = Retry(rng=random.Random(1))
    assert [first.sleep_for(n) for n in range(1, 6)] == [second.sleep_for(n) for n in range(1, 6)]
    assert Retry(jitter=0.0).sleep_for(3) == pytest.approx(0.4)


async def test_retry_stops_at_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(*[ConnectionLossError()] * 100)
    start = trio.current_time()
    with pytest.raises(ConnectionLossError):
        await Retry(max_tries=None, delay=0.1, backoff=2.0, max_delay=1.0, jitter=0.0, deadline=2.0)(flaky)
    assert trio.current_time() - start <= 2.0
    assert len(flaky.calls) == 5  # sleeps 0.1 + 0.2 + 0.4 + 0.8 = 1.5; the next 1.0 would pass 2.0


async def test_retry_is_cancellable_while_sleeping(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(*[ConnectionLossError()] * 100)
    with trio.move_on_after(1.0) as scope:
        await Retry(max_tries=None, delay=10.0)(flaky)
    assert scope.cancelled_caught
    assert len(flaky.calls) == 1


def test_retry_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="max_tries"):
        Retry(max_tries=0)
    with pytest.raises(ValueError, match="jitter"):
        Retry(jitter=2.0)
