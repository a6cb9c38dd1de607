"""The follower's side of ZAB: join a leader, take its history, then follow its broadcast.

Theory of operation
-------------------
A :class:`Follower` lives from the moment this server decided to follow a leader
until it gives up on it. Its phases (:class:`FollowerPhase`):

1. **DISCOVERY**: send FOLLOWERINFO(acceptedEpoch, lastZxid, deliveredZxid,
   handshake) and wait for NEWEPOCH. A NEWEPOCH below our acceptedEpoch means the
   leader is stale: back to LOOKING.
2. **ACCEPTING_EPOCH**: write acceptedEpoch = newEpoch; ACKEPOCH(currentEpoch,
   lastZxid) goes out only when ``persisted`` covers it (docs/correctness.md, rule 1) — and everything
   emitted before it, so the follower's log is exactly what it reports. An epoch
   already accepted earlier is acknowledged without promise (``is_first_ack``
   False, ZooKeeper's currentEpoch = -1): one promise per epoch, or two leaders that
   picked the same number could both count us.
3. **SYNC_WAIT / SYNC**: DIFF (nothing to undo), TRUNC(z) (drop entries after z;
   z must be in our history, and our application must not have applied beyond it
   — the leader sends SNAP then), or SNAP (replace the log with the leader's
   state). Then the history entries, each run naming the entry before it, which
   must be our last (a run lost on a broken link is noticed even across an epoch
   boundary, where numbers alone cannot show it); each appended contiguously
   (docs/correctness.md, rule 6).
4. **NEWLEADER_PERSIST**: NEWLEADER(epoch, z) must find our log ending exactly at
   z (else part of the sync was lost: back to LOOKING). Write currentEpoch =
   epoch; only when ``persisted`` covers it — and so the whole history before it
   — send ACKNEWLEADER (docs/correctness.md, rule 1; ZOOKEEPER-4643/4646/3911).
5. **BROADCAST**: UPTODATE(commit) makes us ready. PROPOSALs of this epoch are
   appended and ACKed cumulatively once durable; COMMITs (and the commit point in
   PINGs) deliver what is committed and durable, in order (docs/correctness.md, rule 4).

Proposals and application messages are accepted from the NEWLEADER on (the
leader forwards to us from the moment it sent it); commit points only from
UPTODATE on, which comes after our NEWLEADER acknowledgement, i.e. after the sync
is durable, and after the leader established the epoch. (Commits sent before it
are covered by the commit point UPTODATE carries.)

A follower gives up (back to LOOKING) when the sync is not complete within
``init_limit_ticks``, when the leader is silent for more than
``sync_limit_ticks`` afterwards, and when the link evidently lost messages (a gap
in proposals, or a commit beyond our log): a fresh sync repairs it, so gaps are
never written (docs/correctness.md, rule 6).
"""

from __future__ import annotations

import enum
from collections import deque
from typing import assert_never

from coord.zab.context import Context, log
from coord.zab.messages import (
    Ack,
    AckEpoch,
    AckNewLeader,
    AppToFollower,
    AppToLeader,
    Commit,
    Diff,
    FollowerInfo,
    Message,
    NewEpoch,
    NewLeader,
    Notification,
    Ping,
    PingAck,
    Proposal,
    Snap,
    SnapAck,
    SnapChunk,
    SnapEnd,
    SyncEntries,
    Trunc,
    UpToDate,
)
from coord.zab.transfer import SnapReceiver
from coord.zab.types import Role, Zxid
from coord.zxid import epoch_of, format_zxid, zab_follows


class FollowerPhase(enum.Enum):
    DISCOVERY = "discovery"
    ACCEPTING_EPOCH = "accepting-epoch"
    SYNC_WAIT = "sync-wait"
    SYNC = "sync"
    NEWLEADER_PERSIST = "newleader-persist"
    BROADCAST = "broadcast"


_AFTER_NEWLEADER = (FollowerPhase.NEWLEADER_PERSIST, FollowerPhase.BROADCAST)


class Follower:
    """This server follows ``leader``."""

    def __init__(self, ctx: Context, leader: int) -> None:
        self._ctx = ctx
        self._journal = ctx.journal
        self.leader = leader
        self.epoch: int | None = None
        self.phase = FollowerPhase.DISCOVERY
        self.is_up_to_date = False
        self.abandon_reason: str | None = None
        self._started = ctx.now
        self._last_heard = ctx.now
        self._last_progress = ctx.now  # the last SNAP chunk received
        self._snap: SnapReceiver | None = None  # a SNAP being received
        self._snap_acks: deque[tuple[int, int]] = deque()  # (record seq, offset after it) not yet durable
        self._install_seq = 0  # the seq of a SNAP's install record not yet durable (0: none)
        self._wait_seq = 0
        self._last_acked: Zxid = 0
        self._is_first_ack = False
        self.handshake = ctx.rng.getrandbits(63)
        # Like the last zxid, report what the application will hold once the records in
        # flight are written: a snapshot of an earlier attempt resets it to its zxid.
        pending_snapshot = self._journal.pending_snapshot_zxid
        delivered = ctx.delivered_zxid if pending_snapshot is None else pending_snapshot
        self._follower_info = FollowerInfo(
            accepted_epoch=self._journal.accepted_epoch,
            last_zxid=self._journal.last_zxid,
            delivered_zxid=delivered,
            handshake=self.handshake,
        )
        ctx.send(leader, self._follower_info)

    def leader_link_lost(self) -> None:
        """The connection from the leader closed: give up now rather than after sync_limit."""
        self._abandon(f"the connection from leader {self.leader} closed")

    def leader_looking(self) -> None:
        """Our leader says it is LOOKING (it gave up leading): give up now rather than
        after the sync limit (as a ZooKeeper follower does when its leader closes the
        connection on shutting down)."""
        self._abandon(f"leader {self.leader} is looking for a leader")

    def _abandon(self, reason: str) -> None:
        if self.abandon_reason is None:
            self.abandon_reason = reason

    # --- inputs --------------------------------------------------------------------

    def step(self, source: int, message: Message) -> None:
        if source != self.leader:
            return
        self._last_heard = self._ctx.now
        match message:
            case NewEpoch():
                self._on_new_epoch(message)
            case Diff() | Trunc() | Snap():
                self._on_sync_start(message)
            case SnapChunk(handshake=handshake, offset=offset, data=data):
                if self.phase is FollowerPhase.SYNC and handshake == self.handshake:
                    self._on_snap_chunk(offset, data)
            case SnapEnd(handshake=handshake, size=size, digest=digest):
                if self.phase is FollowerPhase.SYNC and handshake == self.handshake:
                    self._on_snap_end(size, digest)
            case SyncEntries(handshake=handshake, previous_zxid=previous, zxid=zxid, txns=txns):
                if self.phase is not FollowerPhase.SYNC or handshake != self.handshake:
                    pass
                elif self._snap is not None:
                    self._abandon("sync entries before the SNAP ended")
                elif previous != self._journal.last_zxid:
                    self._abandon(
                        f"sync gap: entries after {format_zxid(previous)}, "
                        f"our log ends at {format_zxid(self._journal.last_zxid)}"
                    )
                else:
                    self._append(zxid, txns)
            case NewLeader():
                self._on_new_leader(message)
            case UpToDate():
                self._on_up_to_date(message)
            case Proposal(zxid=zxid, txns=txns):
                if self.phase in _AFTER_NEWLEADER and epoch_of(zxid) == self.epoch:
                    self._on_proposal(zxid, txns)
            case Commit(zxid=zxid):
                if self.is_up_to_date and epoch_of(zxid) == self.epoch:
                    self._learn_commit(zxid)
            case Ping(epoch=epoch, seq=seq, commit_zxid=commit_zxid):
                if epoch == self.epoch:
                    self._ctx.send(self.leader, PingAck(epoch=epoch, seq=seq))
                    if self.is_up_to_date:
                        self._learn_commit(commit_zxid)
            case AppToFollower(epoch=epoch, commit_zxid=commit_zxid, payload=payload):
                if self.phase in _AFTER_NEWLEADER and epoch == self.epoch:
                    self._ctx.queue_app(commit_zxid, source, payload)
            case (
                FollowerInfo()
                | AckEpoch()
                | AckNewLeader()
                | Ack()
                | PingAck()
                | AppToLeader()
                | Notification()
                | SnapAck()
            ):
                log.debug("peer %d (follower): ignoring %s", self._ctx.me, type(message).__name__)
            case _:
                assert_never(message)

    def tick(self) -> None:
        config = self._ctx.config
        if self.phase is FollowerPhase.DISCOVERY:
            # Until NEWEPOCH comes, say FOLLOWERINFO again every tick: the first copy
            # may have reached the leader while it was still LOOKING (it decided a moment
            # after us), and LOOKING peers drop everything but notifications. Without
            # this both sides wait out init_limit and retry in step, possibly forever
            # (simulator finding F2; ZooKeeper's learner retries its connection
            # instead). The same handshake makes the copies harmless to the leader.
            self._ctx.send(self.leader, self._follower_info)
        if not self.is_up_to_date:
            # A SNAP in progress restarts the clock: its size, not a fault, sets its length.
            # So does installing one: until its record is durable (the image verified and
            # decoded in the writer's thread, seconds for a million znodes) we wait on our
            # own disk, not on the leader.
            if self._install_seq > self._journal.persisted_seq:
                self._last_progress = self._ctx.now
            if self._ctx.now - max(self._started, self._last_progress) >= config.init_limit_ticks:
                self._abandon(f"not synchronised with {self.leader} within {config.init_limit_ticks} ticks")
        elif self._ctx.now - self._last_heard > config.sync_limit_ticks:
            self._abandon(f"leader {self.leader} silent for more than {config.sync_limit_ticks} ticks")

    def on_persisted(self) -> None:
        persisted = self._journal.persisted_seq
        if self._snap_acks:
            self._ack_snap_chunks()
        if self.phase is FollowerPhase.ACCEPTING_EPOCH and persisted >= self._wait_seq:
            assert self._journal.durable_accepted_epoch == self.epoch
            self.phase = FollowerPhase.SYNC_WAIT
            self._ctx.send(
                self.leader,
                AckEpoch(
                    current_epoch=self._journal.current_epoch,
                    last_zxid=self._journal.last_zxid,
                    handshake=self.handshake,
                    is_first_ack=self._is_first_ack,
                ),
            )
        if self.phase is FollowerPhase.NEWLEADER_PERSIST and persisted >= self._wait_seq:
            assert self.epoch is not None
            assert self._journal.durable_current_epoch == self.epoch
            assert not self._journal.has_pending_rewrites
            self.phase = FollowerPhase.BROADCAST
            self._ctx.send(self.leader, AckNewLeader(epoch=self.epoch, handshake=self.handshake))
        if self.phase is FollowerPhase.BROADCAST:
            self._send_ack()
            self._ctx.deliver()

    # --- discovery -------------------------------------------------------------------

    def _on_new_epoch(self, message: NewEpoch) -> None:
        if self.phase is not FollowerPhase.DISCOVERY or message.handshake != self.handshake:
            return
        if message.epoch < self._journal.accepted_epoch:
            self._abandon(f"leader's epoch {message.epoch} < our accepted epoch {self._journal.accepted_epoch}")
            return
        self.epoch = message.epoch
        # Acknowledge an epoch as a promise only once: if we accepted it before (in an
        # earlier attempt, maybe from another leader that picked the same number), our
        # ACKEPOCH only reports our state and must not count toward its quorum.
        self._is_first_ack = message.epoch > self._journal.accepted_epoch
        if self._is_first_ack:
            self._journal.set_epochs(accepted=message.epoch)
        # ACKEPOCH waits for everything emitted so far: the epoch, and any older record in flight.
        self._wait_seq = self._journal.last_seq
        self.phase = FollowerPhase.ACCEPTING_EPOCH
        self._ctx.announce(Role.FOLLOWING, self.leader, message.epoch)
        log.info("peer %d: following %d in epoch %d", self._ctx.me, self.leader, message.epoch)
        self.on_persisted()

    # --- synchronisation -------------------------------------------------------------

    def _on_sync_start(self, message: Diff | Trunc | Snap) -> None:
        if self.phase is not FollowerPhase.SYNC_WAIT or message.handshake != self.handshake:
            return
        journal = self._journal
        # ACKEPOCH waited for every record before it: the durable state is the whole truth here.
        assert journal.is_all_persisted
        # What the leader asks is checked, not asserted: a wrong sync from one peer (a bug
        # there, or not a leader of ours) makes us give up on it, never ends this server.
        match message:
            case Diff(zxid=zxid):
                if zxid != journal.last_zxid:
                    self._abandon(f"DIFF from {format_zxid(zxid)}, our log ends at {format_zxid(journal.last_zxid)}")
                    return
            case Trunc(zxid=zxid):
                if not (zxid < journal.last_zxid and journal.history_contains(zxid)):
                    last = format_zxid(journal.last_zxid)
                    self._abandon(f"TRUNC to {format_zxid(zxid)}, which our log (ending {last}) lacks")
                    return
                if self._ctx.delivered_zxid > zxid:
                    self._abandon(f"TRUNC to {format_zxid(zxid)}, below what our application applied (needs SNAP)")
                    return
                journal.truncate(zxid)
            case Snap(zxid=zxid):
                if epoch_of(zxid) > journal.accepted_epoch:
                    self._abandon(f"SNAP at {format_zxid(zxid)}, of an epoch we never accepted")
                    return
                self._snap = SnapReceiver(zxid)  # chunks follow; installed once complete and durable
            case _:
                assert_never(message)
        self.phase = FollowerPhase.SYNC

    def _on_snap_chunk(self, offset: int, data: bytes) -> None:
        receiver = self._snap
        if receiver is None:
            self._abandon("a SNAP chunk outside a SNAP")
            return
        if (problem := receiver.accept(offset, data)) is not None:
            self._abandon(problem)
            return
        record = self._journal.stage_snapshot_chunk(receiver.zxid, offset, data)
        self._snap_acks.append((record.seq, receiver.received))
        self._last_progress = self._ctx.now

    def _on_snap_end(self, size: int, digest: bytes) -> None:
        receiver = self._snap
        if receiver is None:
            self._abandon("a SNAP end outside a SNAP")
            return
        if (problem := receiver.check_end(size, digest)) is not None:
            self._abandon(problem)
            return
        self._snap = None
        record = self._journal.install_snapshot(receiver.zxid, size, digest)  # the application installs it once durable
        self._install_seq = record.seq

    def _ack_snap_chunks(self) -> None:
        """Acknowledge the SNAP's chunks that are durable now (the leader's window moves)."""
        persisted = self._journal.persisted_seq
        offset = None
        while self._snap_acks and self._snap_acks[0][0] <= persisted:
            offset = self._snap_acks.popleft()[1]
        if offset is not None:
            self._ctx.send(self.leader, SnapAck(handshake=self.handshake, offset=offset))

    def _on_proposal(self, zxid: Zxid, txns: tuple[bytes, ...]) -> None:
        """Log a proposal of our leader's epoch; it is acknowledged once durable (rule 1)."""
        self._append(zxid, txns)

    def _append(self, zxid: Zxid, txns: tuple[bytes, ...]) -> None:
        """Append a run of txns ``zxid, zxid+1, ...``; skip what we hold, give up on a gap."""
        journal = self._journal
        for offset, txn in enumerate(txns):
            entry = zxid + offset
            if entry <= journal.last_zxid:
                continue  # a duplicate of an entry of this leader's history we already hold
            if not zab_follows(journal.last_zxid, entry):
                self._abandon(f"gap from leader: {format_zxid(entry)} after {format_zxid(journal.last_zxid)}")
                return
            if epoch_of(entry) > journal.accepted_epoch:
                self._abandon(f"entry {format_zxid(entry)} of an epoch we never accepted")
                return
            journal.append(entry, txn)

    def _on_new_leader(self, message: NewLeader) -> None:
        if self.phase is not FollowerPhase.SYNC or message.handshake != self.handshake:
            return
        if message.epoch != self.epoch:
            self._abandon(f"NEWLEADER for epoch {message.epoch}, expected {self.epoch}")
            return
        if self._journal.last_zxid != message.zxid:
            self._abandon(
                f"sync incomplete: log ends {format_zxid(self._journal.last_zxid)}, "
                f"leader's at {format_zxid(message.zxid)}"
            )
            return
        self._wait_seq = self._journal.set_epochs(current=message.epoch).seq
        self.phase = FollowerPhase.NEWLEADER_PERSIST
        self.on_persisted()

    def _on_up_to_date(self, message: UpToDate) -> None:
        if self.phase is not FollowerPhase.BROADCAST or message.handshake != self.handshake:
            return
        if message.epoch != self.epoch:
            return
        self.is_up_to_date = True
        self._learn_commit(message.zxid)
        if self.abandon_reason is None:
            self._ctx.set_ready(True)
            log.info("peer %d: up to date with %d, committed %s", self._ctx.me, self.leader, format_zxid(message.zxid))

    # --- broadcast ---------------------------------------------------------------------

    def _learn_commit(self, zxid: Zxid) -> None:
        if zxid > self._journal.last_zxid:
            # The leader sends every proposal before its commit on this ordered link.
            self._abandon(f"commit {format_zxid(zxid)} beyond our log {format_zxid(self._journal.last_zxid)}")
            return
        self._ctx.commit_through(zxid)

    def _send_ack(self) -> None:
        durable = self._journal.durable_last_zxid
        if durable > self._last_acked and epoch_of(durable) == self.epoch:
            self._last_acked = durable
            self._ctx.send(self.leader, Ack(zxid=durable))

    def app_to_leader(self, payload: bytes) -> None:
        if self.phase is not FollowerPhase.BROADCAST or self.epoch is None:
            log.debug("peer %d: not synchronised; application message to the leader dropped", self._ctx.me)
            return
        self._ctx.send(self.leader, AppToLeader(epoch=self.epoch, payload=payload))
