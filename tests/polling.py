"""Waiting for a condition in the tests: poll it, against a deadline.

``await wait_until(lambda: server.role == "leader", timeout=20)`` checks the condition,
and while it does not hold sleeps ``interval`` and checks again. The sleep is polling,
never synchronisation: the test goes on as soon as the condition holds, and fails
(``trio.TooSlowError`` naming the condition) once ``timeout`` has passed. The condition
may be a plain function or a coroutine function (``lambda: zk.exists("/x")``); an
awaited check that hangs is cut off by the deadline too.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio

Condition = Callable[[], object] | Callable[[], Awaitable[object]]


async def wait_until(
    predicate: Condition,
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | None = None,
) -> None:
    """Return once ``predicate()`` is true; raise ``trio.TooSlowError`` after ``timeout`` seconds.

    Args:
        predicate: the condition; called again every ``interval`` seconds until it holds.
            If it returns an awaitable, that is awaited for the answer.
        timeout: the deadline, in seconds (trio time: a mock clock's under one).
        interval: the polling period.
        message: what was awaited, for the failure (default: the predicate's repr).
    """
    with trio.move_on_after(timeout):
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await trio.sleep(interval)  # polling the condition, bounded by the deadline
    raise trio.TooSlowError(f"not true within {timeout:g}s: {message or predicate!r}")


__all__ = ["wait_until"]
