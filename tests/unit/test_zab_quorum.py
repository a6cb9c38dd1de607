"""Quorum and zxid arithmetic."""

from __future__ import annotations

from coord.zab import counter_of, epoch_of, format_zxid, is_quorum, make_zxid, quorum_size, zxid_follows
from coord.zab.quorum import quorum_zxid

# --- quorum -------------------------------------------------------------------------


def test_quorum_is_a_strict_majority_of_voters() -> None:
    assert [quorum_size(tuple(range(n))) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert is_quorum([1, 2], (1, 2, 3))
    assert not is_quorum([1, 1, 1], (1, 2, 3))
    assert not is_quorum([1, 9], (1, 2, 3)), "non-voters never count"


def test_quorum_zxid_is_the_highest_acked_by_a_majority() -> None:
    assert quorum_zxid({1: 9, 2: 7, 3: 3}, (1, 2, 3)) == 7
    assert quorum_zxid({1: 9}, (1, 2, 3)) == 0
    assert quorum_zxid({1: 9, 2: 8, 3: 7, 4: 1, 5: 0}, (1, 2, 3, 4, 5)) == 7
    assert quorum_zxid({1: 9, 7: 9}, (1, 2, 3)) == 0, "non-voters never count"


# --- zxids -------------------------------------------------------------------------------


def test_zxid_is_epoch_then_counter() -> None:
    zxid = make_zxid(3, 5)
    assert zxid == (3 << 32) | 5
    assert (epoch_of(zxid), counter_of(zxid)) == (3, 5)
    assert format_zxid(zxid) == "0x300000005(3:5)"


def test_zxid_follows_within_an_epoch_or_at_the_start_of_a_later_one() -> None:
    assert zxid_follows(make_zxid(1, 4), make_zxid(1, 5))
    assert zxid_follows(make_zxid(1, 4), make_zxid(3, 1))
    assert zxid_follows(0, make_zxid(1, 1))
    assert not zxid_follows(make_zxid(1, 4), make_zxid(1, 6)), "a gap"
    assert not zxid_follows(make_zxid(1, 4), make_zxid(3, 2)), "the first txns of epoch 3 are missing"
    assert not zxid_follows(make_zxid(2, 4), make_zxid(1, 5)), "backwards"
