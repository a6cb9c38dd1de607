"""coord.zxid: the one module of zxid arithmetic, and its two "follows" rules."""

from __future__ import annotations

import pytest

import coord.storage
import coord.testing.history
import coord.txn
import coord.zab
from coord.zxid import (
    COUNTER_MAX,
    EPOCH_MAX,
    ZXID_MAX,
    counter_of,
    describe_zxid,
    epoch_of,
    format_zxid,
    log_follows,
    make_zxid,
    zab_follows,
)


def test_a_zxid_is_the_epoch_above_the_counter() -> None:
    zxid = make_zxid(3, 5)
    assert zxid == (3 << 32) | 5
    assert (epoch_of(zxid), counter_of(zxid)) == (3, 5)
    assert make_zxid(EPOCH_MAX, COUNTER_MAX) == ZXID_MAX
    assert format_zxid(zxid) == "0x300000005(3:5)"
    assert describe_zxid(zxid) == "0x300000005 (epoch 3, counter 5)"


def z(epoch: int, counter: int) -> int:
    return make_zxid(epoch, counter)


@pytest.mark.parametrize(
    ("previous", "zxid", "in_zab", "in_log"),
    [
        (z(1, 5), z(1, 6), True, True),  # the next in the epoch
        (z(1, 5), z(2, 1), True, True),  # the first of a later epoch
        (z(1, 5), z(4, 1), True, True),  # epochs with no txn in between
        (0, z(1, 1), True, True),  # the first txn of all
        (z(1, 5), z(1, 7), False, False),  # a gap in the epoch
        (z(1, 5), z(1, 5), False, False),  # the same
        (z(2, 1), z(1, 9), False, False),  # backwards
        # Where the rules differ: a later epoch that does not start at counter 1.
        (z(1, 5), z(2, 3), False, True),
        (z(1, COUNTER_MAX), z(2, 0), False, True),
        (0, z(1, 7), False, True),
    ],
)
def test_the_zab_rule_and_the_log_rule(previous: int, zxid: int, in_zab: bool, in_log: bool) -> None:
    assert zab_follows(previous, zxid) is in_zab
    assert log_follows(previous, zxid) is in_log


def test_the_old_names_stay_importable_and_keep_their_rule() -> None:
    assert coord.zab.zxid_follows is zab_follows
    assert coord.storage.zxid_follows is log_follows
    assert coord.testing.history.zxid_follows is log_follows
    assert (coord.txn.make_zxid, coord.txn.epoch_of, coord.txn.counter_of) == (make_zxid, epoch_of, counter_of)
    assert (coord.zab.make_zxid, coord.zab.format_zxid) == (make_zxid, format_zxid)
