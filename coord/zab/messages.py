r"""Every message that ZAB peers exchange, one frozen dataclass each.

The names follow ZooKeeper's packet types (NOTIFICATION, FOLLOWERINFO, NEWEPOCH,
ACKEPOCH, DIFF, TRUNC, SNAP, NEWLEADER, UPTODATE, PROPOSAL, ACK, COMMIT, PING),
with these differences, each for a reason:

- **handshake**: a follower picks a fresh random number for every attempt to join a
  leader and sends it in FOLLOWERINFO; the leader echoes it in everything that
  belongs to that attempt (NEWEPOCH ... UPTODATE). ZooKeeper gets this for free
  from its TCP connection per learner; our peer links may redeliver stale
  messages from before a reconnect, and a stale TRUNC or NEWLEADER applied to the
  wrong attempt would corrupt the follower's log or make the leader count an
  acknowledgement for history the follower does not hold.
- **SyncEntries** carry the history sent during synchronisation (ZooKeeper sends
  PROPOSAL+COMMIT pairs there); :class:`Proposal` is only the broadcast of the
  current epoch, so a follower can refuse a proposal whose zxid is not of the
  epoch it follows (a stale packet of an older leader).
- **Batches**: a :class:`Proposal` / :class:`SyncEntries` carries a contiguous run
  of txns starting at ``zxid`` (``zxid, zxid+1, ...``, one epoch).
- **AckNewLeader** is its own message instead of an ACK of the epoch's zxid, so
  the NEWLEADER acknowledgement can never be confused with a txn acknowledgement.
- **AckEpoch.is_first_ack** replaces ZooKeeper's "currentEpoch = -1" ACKEPOCH.
- **PingAck** answers a :class:`Ping` with its sequence number, which is how the
  leader runs a quorum round for linearizable ``sync`` (``Peer.barrier``).
- **SNAP streams**: :class:`Snap` names the snapshot's zxid, then its bytes follow as
  bounded :class:`SnapChunk`\ s, checked at the end against :class:`SnapEnd`'s size and
  sha256; the follower answers :class:`SnapAck` once chunks are durable, and the
  leader keeps at most a window of chunks unacknowledged (flow control). ZooKeeper
  writes the whole snapshot into the learner's socket; a snapshot of any size must
  not be one message here (the peer frame limit), nor be held whole in memory.
- **AppToFollower / AppToLeader** carry the application's own messages (forwarded
  requests, their replies) on the same ordered links.

Acks and commits are cumulative: ``Ack(zxid)`` acknowledges every txn up to
``zxid``; ``Commit(zxid)`` commits every txn up to ``zxid``.
"""

from __future__ import annotations

from dataclasses import dataclass

from coord.zab.types import Role, Zxid

# --- leader election -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """FLE: the sender's vote for ``leader`` and the sender's own state.

    ``epoch`` and ``zxid`` are the proposed leader's currentEpoch and last logged
    zxid (for a FOLLOWING / LEADING sender: the epoch it follows / leads).
    ``election_round`` is the sender's logical clock.
    """

    leader: int
    zxid: Zxid
    epoch: int
    election_round: int
    state: Role


# --- discovery ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowerInfo:
    """Follower → leader: join request, with what the follower holds."""

    accepted_epoch: int
    last_zxid: Zxid  # last zxid of the follower's log (as its write stream will leave it)
    delivered_zxid: Zxid  # what its application state already reflects
    handshake: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEpoch:
    """Leader → follower: the epoch being established."""

    epoch: int
    handshake: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AckEpoch:
    """Follower → leader: the new epoch is durably accepted; here is my current state.

    ``is_first_ack``: this follower accepted the epoch just now, for this leader —
    its promise, which counts toward the leader's quorum. False when it had
    already accepted that epoch before (from this or another leader that chose the
    same number): it still reports its state so it can be synchronised, but must
    not count, or two leaders could both gather a quorum for one epoch.
    ZooKeeper sends currentEpoch = -1 for this case.
    """

    current_epoch: int
    last_zxid: Zxid
    handshake: int
    is_first_ack: bool


# --- synchronisation --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Diff:
    """Leader → follower: your log ending at ``zxid`` is a prefix of mine; entries follow."""

    handshake: int
    zxid: Zxid


@dataclass(frozen=True, slots=True, kw_only=True)
class Trunc:
    """Leader → follower: drop every entry after ``zxid`` (not in my history); entries follow."""

    handshake: int
    zxid: Zxid


@dataclass(frozen=True, slots=True, kw_only=True)
class Snap:
    r"""Leader → follower: replace your state with a snapshot at ``zxid``; it follows as
    :class:`SnapChunk`\ s and a :class:`SnapEnd`, then the entries after it."""

    handshake: int
    zxid: Zxid


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapChunk:
    """Leader → follower: the snapshot's bytes at ``offset`` (chunks come in order)."""

    handshake: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapEnd:
    """Leader → follower: the snapshot was ``size`` bytes with this sha256 ``digest``."""

    handshake: int
    size: int
    digest: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapAck:
    """Follower → leader: the snapshot's bytes before ``offset`` are durable here (the
    leader sends at most a window of chunks beyond the last such offset)."""

    handshake: int
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncEntries:
    """Leader → follower during sync: history entries ``zxid, zxid+1, ...`` (one epoch).

    ``previous_zxid`` is the entry right before them in the leader's history: the
    follower's log must end exactly there. (Across an epoch boundary the numbers
    alone cannot show that a run before them was lost on a broken link.)
    """

    handshake: int
    previous_zxid: Zxid
    zxid: Zxid
    txns: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class NewLeader:
    """Leader → follower: the sync is complete; my history ends at ``zxid``."""

    epoch: int
    zxid: Zxid
    handshake: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AckNewLeader:
    """Follower → leader: the history and currentEpoch = ``epoch`` are durable."""

    epoch: int
    handshake: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UpToDate:
    """Leader → follower: established; everything up to ``zxid`` is committed."""

    epoch: int
    zxid: Zxid
    handshake: int


# --- broadcast ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    """Leader → follower: new txns ``zxid, zxid+1, ...`` of the current epoch."""

    zxid: Zxid
    txns: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """Follower → leader: every txn up to ``zxid`` is durable here."""

    zxid: Zxid


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """Leader → follower: every txn up to ``zxid`` is committed."""

    zxid: Zxid


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Leader → follower heartbeat; re-announces the leader's commit point."""

    epoch: int
    seq: int
    commit_zxid: Zxid


@dataclass(frozen=True, slots=True, kw_only=True)
class PingAck:
    """Follower → leader: answer to ping ``seq``."""

    epoch: int
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AppToFollower:
    """Leader → follower application message.

    Released to the follower's application only once it has delivered everything up
    to ``commit_zxid`` (the leader's commit point when it was sent).
    """

    epoch: int
    commit_zxid: Zxid
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AppToLeader:
    """Follower → leader application message."""

    epoch: int
    payload: bytes


Message = (
    Notification
    | FollowerInfo
    | NewEpoch
    | AckEpoch
    | Diff
    | Trunc
    | Snap
    | SnapChunk
    | SnapEnd
    | SnapAck
    | SyncEntries
    | NewLeader
    | AckNewLeader
    | UpToDate
    | Proposal
    | Ack
    | Commit
    | Ping
    | PingAck
    | AppToFollower
    | AppToLeader
)

MESSAGE_TYPES: tuple[type[Message], ...] = (
    Notification,
    FollowerInfo,
    NewEpoch,
    AckEpoch,
    Diff,
    Trunc,
    Snap,
    SnapChunk,
    SnapEnd,
    SnapAck,
    SyncEntries,
    NewLeader,
    AckNewLeader,
    UpToDate,
    Proposal,
    Ack,
    Commit,
    Ping,
    PingAck,
    AppToFollower,
    AppToLeader,
)
