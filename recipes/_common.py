"""What every recipe shares: its errors, the retry policy, node names, bounded cleanup.

Errors
    The recipes' errors are their own small hierarchy under :class:`RecipeError`, on
    purpose *not* under :class:`client.CoordError`: code that catches ``CoordError`` to
    retry a call must never swallow a :class:`LockLostError` by accident.

Retries
    Recipe calls go through one :class:`client.Retry` without a try limit: the
    client makes new calls wait while it reconnects, so only a call in flight on a
    dropped connection fails (``ConnectionLossError``), and retrying a read is always
    safe. The loop ends when the session does (``SessionExpiredError`` is never
    retried). Writes whose outcome is unknown are never blindly retried: each recipe
    says how it finds out (a unique name, a version check) or raises.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import trio

import client

log = logging.getLogger("recipes")

P = ParamSpec("P")
T = TypeVar("T")

RETRY = client.Retry(max_tries=None, delay=0.02, backoff=2.0, max_delay=0.5)
"""The recipes' retry policy: no limit (the session's end is the limit), short pauses."""

RETRY_PAUSE_S = 0.05
"""The pause before a background loop retries a call that may pass."""

CLEANUP_GRACE_S = 1.0
"""Cleanup (deleting a recipe's own node) may wait for a reconnect: at most the
session timeout plus this, shielded from cancellation. By then the client has either
reconnected and deleted the node, or the session has expired and taken it along."""

SEQUENCE_DIGITS = 10
"""The length of the counter the server appends to a sequential node's name."""


class RecipeError(Exception):
    """Base of the recipes' own errors (not a :class:`client.CoordError`, see the module doc)."""


class LockLostError(RecipeError):
    """A lock, lease or leadership that was held is lost, or can no longer be assumed held.

    Raised out of ``async with lock:`` (the block was cancelled first) and by
    ``release()`` when the lock's node was already gone. Whatever the block did after
    the loss must be presumed to have overlapped another holder: that is what the
    fencing token is for.
    """


class LeadershipLostError(LockLostError):
    """Leadership that was held is lost (see :class:`LockLostError`)."""


class LockTimeoutError(RecipeError, TimeoutError):
    """The lock (or lease) could not be acquired in time, or at once when not blocking
    (kazoo's ``LockTimeout``)."""


class ResignedError(RecipeError):
    """``resign()`` withdrew a candidacy before it was elected."""


async def call(func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """``func(*args, **kwargs)`` with :data:`RETRY` (only for calls safe to repeat)."""
    return await RETRY(func, *args, **kwargs)


def new_guid() -> str:
    """A unique prefix for a node name (kazoo's ``uuid4().hex``): how a recipe finds its
    own node again when the reply to its create was lost."""
    return uuid.uuid4().hex


def join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def normalize(path: str) -> str:
    """``path`` without a trailing slash (``/`` stays ``/``)."""
    return path.rstrip("/") or "/"


def sequence_of(name: str) -> int:
    """The server-assigned counter at the end of a sequential node's name."""
    return int(name[-SEQUENCE_DIGITS:])


def as_bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode()


def as_text(data: bytes) -> str:
    return data.decode(errors="replace")


async def cleanup(zk: client.Client, func: Callable[[], Awaitable[None]]) -> None:
    """Run ``func`` shielded from cancellation, bounded by the session timeout, and
    ignore service errors: for deleting a node on the way out of a failed or cancelled
    call. If the session is lost its ephemeral nodes are gone anyway."""
    with trio.move_on_after(zk.session_timeout + CLEANUP_GRACE_S, shield=True) as scope:
        with contextlib.suppress(client.CoordError):
            await func()
    if scope.cancelled_caught:
        log.warning("cleanup gave up after %.1fs; the node goes with the session", zk.session_timeout)


__all__ = [
    "CLEANUP_GRACE_S",
    "RETRY",
    "LeadershipLostError",
    "LockLostError",
    "LockTimeoutError",
    "RecipeError",
    "ResignedError",
    "as_bytes",
    "as_text",
    "call",
    "cleanup",
    "join",
    "new_guid",
    "normalize",
    "sequence_of",
]
