"""Quorum arithmetic: majorities of the voters, and the zxid a quorum acknowledged.

A quorum is a strict majority of the configured voters (``PeerConfig.voters``).
Any two quorums intersect, which is what every ZAB safety argument leans on: a
new leader's election quorum meets the quorum that acknowledged a commit, and
the NEWLEADER quorum of one epoch meets the election quorum of the next.

Only voters count; ids that are not voters are ignored here as everywhere in the
core (fail closed).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from coord.zab.types import Zxid


def quorum_size(voters: Collection[int]) -> int:
    """How many voters make a majority."""
    assert voters, "an ensemble has at least one voter"
    return len(voters) // 2 + 1


def is_quorum(ids: Iterable[int], voters: Collection[int]) -> bool:
    """Whether the distinct voters among ``ids`` form a majority of ``voters``."""
    return len({server for server in ids if server in voters}) >= quorum_size(voters)


def quorum_zxid(acked: Mapping[int, Zxid], voters: Collection[int]) -> Zxid:
    """The highest zxid that a quorum of voters has acknowledged (0 if none).

    ``acked`` maps a voter to the highest zxid it acknowledged *cumulatively*
    (everything up to it); voters missing from the map count as having nothing.

    >>> quorum_zxid({1: 7, 2: 5, 3: 0}, (1, 2, 3))
    5
    """
    values = sorted((zxid for server, zxid in acked.items() if server in voters), reverse=True)
    needed = quorum_size(voters)
    return values[needed - 1] if len(values) >= needed else 0
