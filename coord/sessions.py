"""Session liveness: which sessions have gone quiet for longer than their timeout.

Theory of operation
    Sessions are created and closed by txns, so every server knows the same sessions;
    only the server that *expires* them (the leader, or a standalone server) runs a
    :class:`SessionTracker`. Its inputs are the session's creation (:meth:`add`), each
    sign of life (:meth:`touch`, on every request and ping, including activity that
    followers report), a close that is already on its way (:meth:`set_closing`), the
    applied close (:meth:`remove`), and the clock (``now_ms``, passed in: this module
    never reads a clock). Its output is :meth:`expired`: the sessions whose deadline
    has passed, for which the caller proposes a closeSession txn.

Expiry buckets
    As ZooKeeper's ``ExpiryQueue``, a deadline is rounded up to a tick boundary, so
    all sessions due in the same tick sit in one bucket and are expired together; the
    shell need only call :meth:`expired` once per tick. A session with timeout ``T``
    touched at ``t`` has the deadline ``ceil((t + T) / tick_ms) * tick_ms`` and is
    expired by the first :meth:`expired` call with ``now_ms >= deadline``: never
    before ``T`` of silence, and at most one tick after it.

    Buckets are dicts (insertion-ordered sets) keyed by deadline, and a min-heap holds
    each bucket's deadline once. A touch moves the session from one bucket dict to
    another: O(1), plus one heap push when it opens a new bucket (there are at most
    ``max_timeout_ms / tick_ms + 1`` live buckets, so that is O(log buckets) and rare).
    Buckets emptied by touches stay in place until their deadline comes round, when
    popping them is free. :meth:`expired` therefore costs O(buckets due + sessions
    expired), independent of the number of live sessions.

Invariants
    - A session is in exactly one bucket while it is live, and in none once it is
      closing (reported as expired, or :meth:`set_closing` called).
    - Each session is reported by :meth:`expired` at most once per :meth:`add`.
    - A closing session stays known (``in``, :meth:`timeout_of`) until :meth:`remove`,
      because its closeSession txn has not been applied yet; touches no longer revive
      it (:meth:`touch` returns False, and the caller answers SessionExpired).

Where we differ from ZooKeeper
    ZooKeeper rounds to the *next* interval strictly after ``t + T``
    (``(t + T) / tick + 1``), which can give up to a whole extra tick of grace; we
    round up (ceiling), so a deadline already on a boundary stays there. Both keep
    the promise that matters: no session expires before its timeout.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(slots=True)
class _Session:
    timeout_ms: int
    deadline_ms: int | None  # None once closing: no longer in any bucket


class SessionTracker:
    """Deadlines of the live sessions, in tick buckets. Pure: time is an argument.

    Args:
        tick_ms: the bucket width; deadlines are rounded up to a multiple of it.
        min_timeout_ms: the least timeout :meth:`negotiate` grants.
        max_timeout_ms: the most timeout :meth:`negotiate` grants.
    """

    __slots__ = ("_buckets", "_heap", "_max_timeout_ms", "_min_timeout_ms", "_sessions", "_tick_ms")

    def __init__(self, *, tick_ms: int, min_timeout_ms: int, max_timeout_ms: int) -> None:
        if tick_ms <= 0:
            raise ValueError(f"tick_ms must be positive, got {tick_ms}")
        if not 0 < min_timeout_ms <= max_timeout_ms:
            raise ValueError(f"need 0 < min_timeout_ms <= max_timeout_ms, got {min_timeout_ms}, {max_timeout_ms}")
        self._tick_ms = tick_ms
        self._min_timeout_ms = min_timeout_ms
        self._max_timeout_ms = max_timeout_ms
        self._sessions: dict[int, _Session] = {}
        # deadline -> the sessions due then (a dict used as an ordered set)
        self._buckets: dict[int, dict[int, None]] = {}
        # each key of _buckets exactly once
        self._heap: list[int] = []

    @property
    def tick_ms(self) -> int:
        return self._tick_ms

    def negotiate(self, requested_ms: int) -> int:
        """The timeout granted for a requested one: clamped into ``[min, max]``."""
        return min(max(requested_ms, self._min_timeout_ms), self._max_timeout_ms)

    def add(self, session_id: int, timeout_ms: int, now_ms: int) -> None:
        """Start tracking a session (or restart it, if already known), live as of ``now_ms``.

        ``timeout_ms`` is taken as given (negotiated already, or from a txn); the
        tracker does not clamp it again, so that a session keeps the timeout every
        server recorded for it even if the bounds change.
        """
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, got {timeout_ms}")
        self.remove(session_id)
        session = _Session(timeout_ms=timeout_ms, deadline_ms=None)
        self._sessions[session_id] = session
        self._place(session_id, session, now_ms)

    def touch(self, session_id: int, now_ms: int) -> bool:
        """Push a session's deadline to ``now_ms + timeout`` (rounded up to a tick).

        Returns:
            True if the session is live. False if it is unknown or closing (already
            reported expired, or a close is in flight): the caller must treat it as
            expired, not bring it back.
        """
        session = self._sessions.get(session_id)
        if session is None or session.deadline_ms is None:
            return False
        deadline_ms = self._round_up(now_ms + session.timeout_ms)
        if deadline_ms != session.deadline_ms:
            # only ever later while the clock goes forward; earlier is harmless too
            del self._buckets[session.deadline_ms][session_id]
            self._put(session_id, session, deadline_ms)
        return True

    def set_closing(self, session_id: int) -> None:
        """A close of this session is in flight: never report it as expired.

        Unknown sessions are ignored (the close may race with an expiry).
        """
        session = self._sessions.get(session_id)
        if session is not None and session.deadline_ms is not None:
            del self._buckets[session.deadline_ms][session_id]
            session.deadline_ms = None

    def remove(self, session_id: int) -> None:
        """Forget a session (its close was applied). Unknown sessions are ignored."""
        session = self._sessions.pop(session_id, None)
        if session is not None and session.deadline_ms is not None:
            del self._buckets[session.deadline_ms][session_id]

    def expired(self, now_ms: int) -> list[int]:
        """The sessions whose deadline is at or before ``now_ms``, each reported once.

        Reported sessions become closing: they are not reported again, and
        :meth:`touch` refuses them, until :meth:`remove` (or a new :meth:`add`).

        Returns:
            Session ids in deadline order, and by id within one deadline, so that
            every run over the same inputs proposes the same closes in the same order.
        """
        heap = self._heap
        result: list[int] = []
        while heap and heap[0] <= now_ms:
            deadline_ms = heapq.heappop(heap)
            bucket = self._buckets.pop(deadline_ms)
            for session_id in sorted(bucket):
                self._sessions[session_id].deadline_ms = None
                result.append(session_id)
        return result

    def next_deadline_ms(self) -> int | None:
        """The earliest time at which :meth:`expired` may return something, or None.

        May be early (a bucket emptied by touches), never late; a shell can sleep
        until then instead of waking every tick.
        """
        heap = self._heap
        buckets = self._buckets
        # drop emptied buckets at the front so the answer is usually exact
        while heap and not buckets[heap[0]]:
            del buckets[heapq.heappop(heap)]
        return heap[0] if heap else None

    def timeout_of(self, session_id: int) -> int | None:
        """The session's timeout, or None if it is unknown. Closing sessions are known."""
        session = self._sessions.get(session_id)
        return None if session is None else session.timeout_ms

    def deadline_of(self, session_id: int) -> int | None:
        """The session's current (rounded) deadline, or None if unknown or closing."""
        session = self._sessions.get(session_id)
        return None if session is None else session.deadline_ms

    def is_closing(self, session_id: int) -> bool:
        """Whether the session is known but closing (expired or close in flight)."""
        session = self._sessions.get(session_id)
        return session is not None and session.deadline_ms is None

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def __repr__(self) -> str:
        return f"SessionTracker(sessions={len(self._sessions)}, buckets={len(self._buckets)}, tick_ms={self._tick_ms})"

    # --- internals ------------------------------------------------------------------

    def _round_up(self, time_ms: int) -> int:
        tick_ms = self._tick_ms
        return -(-time_ms // tick_ms) * tick_ms

    def _place(self, session_id: int, session: _Session, now_ms: int) -> None:
        self._put(session_id, session, self._round_up(now_ms + session.timeout_ms))

    def _put(self, session_id: int, session: _Session, deadline_ms: int) -> None:
        bucket = self._buckets.get(deadline_ms)
        if bucket is None:
            bucket = self._buckets[deadline_ms] = {}
            heapq.heappush(self._heap, deadline_ms)
        bucket[session_id] = None
        session.deadline_ms = deadline_ms


__all__ = ["SessionTracker"]
