"""Zxid arithmetic, the one place for it: a zxid is ``(epoch << 32) | counter``.

Every leader numbers its proposals ``(epoch, 1), (epoch, 2), ...`` with the epoch
it established, so within one epoch a log is contiguous, and a new epoch starts a
new run at counter 1. Counter 0 never names a txn: ``make_zxid(e, 0)`` is "before
the first txn of epoch e", and zxid 0 is the empty history.

Two rules say whether one zxid may come right after another, on purpose:

- :func:`zab_follows`, the protocol's rule: a new epoch starts at counter 1. The
  ZAB core (journal, follower, delivery) uses it, so that txns lost on the way
  are noticed.
- :func:`log_follows`, the storage rule: a new epoch may start at any counter.
  The durable log (:mod:`coord.storage.log`), start-up recovery's replay
  (:mod:`coord.recovery`) and the history checker's log merge
  (:mod:`coord.history`) use it; the log checks order and contiguity within an
  epoch, not how the protocol numbers epochs.

This module imports nothing, so the ZAB core, the storage layer and the server can
all use it.
"""

from __future__ import annotations

from typing import Final

COUNTER_BITS: Final = 32
COUNTER_MAX: Final = (1 << COUNTER_BITS) - 1
EPOCH_MAX: Final = (1 << 32) - 1
ZXID_MAX: Final = (1 << 64) - 1


def make_zxid(epoch: int, counter: int) -> int:
    """The zxid of txn number ``counter`` of ``epoch``: ``(epoch << 32) | counter``."""
    assert 0 <= epoch <= EPOCH_MAX, epoch
    assert 0 <= counter <= COUNTER_MAX, counter
    return (epoch << COUNTER_BITS) | counter


def epoch_of(zxid: int) -> int:
    return zxid >> COUNTER_BITS


def counter_of(zxid: int) -> int:
    return zxid & COUNTER_MAX


def zab_follows(previous: int, zxid: int) -> bool:
    """Whether ``zxid`` may come right after ``previous`` in ZAB's history (docs/correctness.md, rule 6).

    In the same epoch exactly one more; otherwise the first txn, counter 1, of a
    later epoch. Stricter than :func:`log_follows`: every leader numbers its epoch
    from 1, so a later epoch starting elsewhere means txns were lost on the way,
    and the ZAB core must notice. ``previous`` may be the zxid a snapshot covers.
    """
    if epoch_of(zxid) == epoch_of(previous):
        return zxid == previous + 1
    return epoch_of(zxid) > epoch_of(previous) and counter_of(zxid) == 1


def log_follows(previous: int, zxid: int) -> bool:
    """Whether ``zxid`` may come right after ``previous`` in a durable log (docs/correctness.md, rule 6).

    Strictly greater, and in the same epoch exactly one more; a new epoch may start
    at any counter. The storage layer keeps the log ordered and contiguous within an
    epoch; how the protocol numbers a new epoch is ZAB's business
    (:func:`zab_follows`), so the log accepts, and reopens, what ZAB's rule would
    refuse (a new epoch from counter 0, say).
    """
    return zxid > previous and (epoch_of(zxid) != epoch_of(previous) or zxid == previous + 1)


def format_zxid(zxid: int) -> str:
    """``0x300000005(3:5)``: compact, for logs, traces and assertions."""
    return f"{zxid:#x}({epoch_of(zxid)}:{counter_of(zxid)})"


def describe_zxid(zxid: int) -> str:
    """``0x300000005 (epoch 3, counter 5)``: spelled out, for errors an operator reads."""
    return f"{zxid:#x} (epoch {epoch_of(zxid)}, counter {counter_of(zxid)})"


__all__ = [
    "COUNTER_BITS",
    "COUNTER_MAX",
    "EPOCH_MAX",
    "ZXID_MAX",
    "counter_of",
    "describe_zxid",
    "epoch_of",
    "format_zxid",
    "log_follows",
    "make_zxid",
    "zab_follows",
]
