"""Zxid arithmetic: a zxid is ``(epoch << 32) | counter``.

Every leader numbers its proposals ``(epoch, 1), (epoch, 2), ...`` with the epoch
it established, so within one epoch a log is contiguous, and a new epoch starts a
new run at counter 1. Counter 0 never names a txn: ``make_zxid(e, 0)`` is "before
the first txn of epoch e", and zxid 0 is the empty history.

These helpers duplicate the few lines of ``coord.txn`` / ``coord.storage.log`` on
purpose: the ZAB core imports nothing of the server but the error classes.
"""

from __future__ import annotations

from typing import Final

from coord.zab.types import Zxid

COUNTER_BITS: Final = 32
COUNTER_MAX: Final = (1 << COUNTER_BITS) - 1
EPOCH_MAX: Final = (1 << 32) - 1
ZXID_MAX: Final = (1 << 64) - 1


def make_zxid(epoch: int, counter: int) -> Zxid:
    """The zxid of txn number ``counter`` of ``epoch``."""
    assert 0 <= epoch <= EPOCH_MAX, epoch
    assert 0 <= counter <= COUNTER_MAX, counter
    return (epoch << COUNTER_BITS) | counter


def epoch_of(zxid: Zxid) -> int:
    return zxid >> COUNTER_BITS


def counter_of(zxid: Zxid) -> int:
    return zxid & COUNTER_MAX


def zxid_follows(previous: Zxid, zxid: Zxid) -> bool:
    """Whether ``zxid`` may come right after ``previous`` in a log (CORRECTNESS rule 6).

    In the same epoch exactly one more; otherwise the first txn, counter 1, of a
    later epoch. (Stricter than ``coord.storage.log.zxid_follows``, which lets a new
    epoch start at any counter: every leader numbers its epoch from 1, so a later
    epoch starting elsewhere means txns were lost on the way, and the core must
    notice.) ``previous`` may be the zxid a snapshot covers.
    """
    if epoch_of(zxid) == epoch_of(previous):
        return zxid == previous + 1
    return epoch_of(zxid) > epoch_of(previous) and counter_of(zxid) == 1


def format_zxid(zxid: Zxid) -> str:
    """``0x300000005(3:5)``: readable in logs and traces."""
    return f"{zxid:#x}({epoch_of(zxid)}:{counter_of(zxid)})"
