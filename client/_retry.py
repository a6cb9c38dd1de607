"""Retrying calls that failed for reasons that may pass (kazoo's ``KazooRetry``)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Final, ParamSpec, TypeVar

import trio

from coord.errors import (
    ConnectionLossError,
    NotLeaderError,
    OperationTimeoutError,
    ServerBehindError,
    ThrottledOpError,
)

P = ParamSpec("P")
T = TypeVar("T")

RETRYABLE: Final = (ConnectionLossError, OperationTimeoutError, ThrottledOpError, NotLeaderError, ServerBehindError)
"""What :class:`Retry` retries. Never ``SessionExpiredError`` (the session is over, a
retry cannot help) nor an ``ApiError`` (the same call gets the same answer)."""


class Retry:
    """Call an async function again while it fails with a passing error.

    ``await retry(zk.get, "/x")`` calls ``zk.get("/x")``; on one of
    :data:`RETRYABLE` it sleeps and calls again, the n-th sleep being
    ``min(max_delay, delay * backoff ** (n - 1))`` scaled by a random factor in
    ``[1 - jitter, 1]`` (so many clients that failed together do not come back
    together). One Retry may serve many calls at once: each call counts on its own.

    Only retry what is safe to repeat: a ``ConnectionLossError`` means the call may
    have happened. A create may then answer ``NodeExistsError`` on the retry, a
    sequential create may create twice.

    Args:
        max_tries: how many calls in all (1: no retry); None: no limit.
        delay: the first sleep, in seconds.
        backoff: the factor between consecutive sleeps.
        max_delay: the cap of one sleep, in seconds.
        jitter: the fraction of each sleep that is random (0: none, 1: all).
        deadline: stop retrying once this many seconds have passed since the first
            call (a sleep that would end after it is not started). None: no limit.
        rng: the source of the jitter (injectable for tests).
    """

    def __init__(
        self,
        max_tries: int | None = 5,
        delay: float = 0.1,
        backoff: float = 2.0,
        max_delay: float = 60.0,
        *,
        jitter: float = 0.5,
        deadline: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_tries is not None and max_tries < 1:
            raise ValueError("max_tries must be at least 1 (or None for no limit)")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")
        self.max_tries = max_tries
        self.delay = delay
        self.backoff = backoff
        self.max_delay = max_delay
        self.jitter = jitter
        self.deadline = deadline
        self._rng = rng or random.Random()

    def sleep_for(self, attempt: int) -> float:
        """The sleep after the ``attempt``-th failed call (1-based), with jitter."""
        base = min(self.max_delay, self.delay * self.backoff ** (attempt - 1))
        return base * (1.0 - self.jitter * self._rng.random())

    async def __call__(self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``func(*args, **kwargs)`` until it succeeds or retries run out.

        Returns:
            What ``func`` returned.

        Raises:
            Whatever ``func`` raised that is not retryable, at once; the last
            retryable error when ``max_tries`` or ``deadline`` is exhausted (unlike
            kazoo's ``RetryFailedError``, the real error, so it can be handled as one).

        Cancellation: cancellable in the call and in the sleeps.
        """
        start = trio.current_time()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await func(*args, **kwargs)
            except RETRYABLE:
                if self.max_tries is not None and attempt >= self.max_tries:
                    raise
                pause = self.sleep_for(attempt)
                if self.deadline is not None and trio.current_time() + pause - start > self.deadline:
                    raise
            await trio.sleep(pause)

    def __repr__(self) -> str:
        return (
            f"Retry(max_tries={self.max_tries}, delay={self.delay}, backoff={self.backoff},"
            f" max_delay={self.max_delay}, jitter={self.jitter}, deadline={self.deadline})"
        )


__all__ = ["RETRYABLE", "Retry"]
