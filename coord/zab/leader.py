"""The leader's side of ZAB: discovery, synchronisation and broadcast.

Theory of operation
-------------------
A :class:`Leader` lives from the moment election chose this server until it
steps down. Its phases (:class:`LeaderPhase`):

1. **DISCOVERY**: collect FOLLOWERINFO (acceptedEpoch, lastZxid) until a quorum
   (this server included) has connected; the new epoch is
   ``max(acceptedEpoch of all connected, own) + 1``.
2. **EPOCH_PERSIST**: the new acceptedEpoch is written. NEWEPOCH goes out only
   when it is durable — and since records are written in order, everything the
   stream held before it is durable too, so from here on the durable state is
   this leader's history (docs/correctness.md, rule 4).
3. **EPOCH_ACKS**: wait for ACKEPOCH from a quorum — counting only first
   acknowledgements of the epoch (``is_first_ack``), so that no follower's promise
   serves two leaders that picked the same epoch number. A follower whose
   (currentEpoch, lastZxid) is ahead of ours makes us step down, as ZooKeeper does
   ("follower is ahead of the leader"). Followers are synchronised only after
   this quorum, as ZooKeeper's LearnerHandler waits in ``waitForEpochAck``:
   truncating anyone before phase 1 is complete could remove a copy of a
   committed txn on behalf of a leader that turns out not to be legitimate.
   At the quorum we write currentEpoch = newEpoch.
4. **SYNC**: each follower gets DIFF, TRUNC or SNAP (:func:`plan_sync`), the
   history entries, then NEWLEADER(epoch, our last zxid). When a quorum —
   ourselves once our currentEpoch record is durable — acknowledged NEWLEADER,
   our whole history is committed *under the new epoch* (docs/correctness.md, rule 2: the only way an
   old-epoch txn is ever committed), delivered locally, and UPTODATE goes out.
5. **BROADCAST** (established): ``propose`` appends ``(epoch, n)`` for n = 1, 2, ...;
   proposals made before the next ``take_output`` travel in one PROPOSAL per
   follower. ACKs are cumulative and count only from followers that acknowledged
   NEWLEADER in this epoch, and our own only once durable; a zxid is committed
   when a quorum acknowledged it, strictly in order, and delivered here once
   durable here. Late followers go through phases 1-4 on their own and join.

Liveness: a leader not established within ``init_limit_ticks`` steps down; an
established leader that has not heard from a quorum (itself included) within
``sync_limit_ticks`` steps down (docs/correctness.md, rule 8); so does one whose zxid counter is
about to overflow (docs/correctness.md, rule 6: the next leader starts a new epoch), and one whose
epoch is below a joining follower's acceptedEpoch (that follower would refuse
NEWEPOCH forever; ZooKeeper leaves it out until the next election happens to
come, we make it come).

The sync decision (DIFF / TRUNC / SNAP, docs/correctness.md, rule 3) is :func:`coord.zab.sync.plan_sync`.

Where we differ from ZooKeeper: each follower attempt carries a handshake number
(see :mod:`coord.zab.messages`); acks are cumulative; PINGs carry a sequence
number answered by PINGACK, which gives the quorum rounds behind ``barrier``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
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
from coord.zab.quorum import is_quorum, quorum_size, quorum_zxid
from coord.zab.sync import SyncKind, SyncPlan, entry_runs, plan_sync
from coord.zab.transfer import SnapSender
from coord.zab.types import Role, Zxid
from coord.zxid import COUNTER_MAX, EPOCH_MAX, counter_of, epoch_of, format_zxid, make_zxid


class LeaderPhase(enum.Enum):
    DISCOVERY = "discovery"
    EPOCH_PERSIST = "epoch-persist"
    EPOCH_ACKS = "epoch-acks"
    SYNC = "sync"
    BROADCAST = "broadcast"


class LearnerStage(enum.Enum):
    CONNECTED = "connected"  # FOLLOWERINFO received
    EPOCH_SENT = "epoch-sent"  # NEWEPOCH sent
    EPOCH_ACKED = "epoch-acked"  # ACKEPOCH received; sync waits for the epoch quorum
    SNAPPING = "snapping"  # a SNAP streams to it (not forwarded proposals until it ends)
    SYNCING = "syncing"  # sync and NEWLEADER sent: receives proposals and commits from now on
    SYNCED = "synced"  # NEWLEADER acknowledged: its ACKs and PINGACKs count


@dataclass(slots=True)
class _Learner:
    handshake: int
    accepted_epoch: int
    last_zxid: Zxid
    delivered_zxid: Zxid
    last_heard: int
    stage: LearnerStage = LearnerStage.CONNECTED
    acked_zxid: Zxid = 0
    answered_ping: int = 0
    is_epoch_promise: bool = False  # its ACKEPOCH counts toward the epoch quorum
    transfer: SnapSender | None = None  # while SNAPPING

    @property
    def is_forwarding(self) -> bool:
        return self.stage in (LearnerStage.SYNCING, LearnerStage.SYNCED)


# --- the leader ----------------------------------------------------------------------


class Leader:
    """This server leads (or tries to establish) an epoch."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._journal = ctx.journal
        self.phase = LeaderPhase.DISCOVERY
        self.epoch: int | None = None
        self.abandon_reason: str | None = None
        self._started = ctx.now
        self._last_progress = ctx.now  # the last SNAP chunk a follower acknowledged
        self._learners: dict[int, _Learner] = {}
        self._epoch_seq = 0  # our new acceptedEpoch record
        self._current_epoch_seq: int | None = None  # our new currentEpoch record
        self._self_acked_newleader = False
        self._batch: list[tuple[Zxid, bytes]] = []
        self._ping_seq = 0
        self._next_ping = ctx.now
        self._barriers: list[tuple[int, int]] = []  # (barrier id, first ping seq that may confirm it)
        self._barrier_ping_due = False
        self._check_discovery_quorum()

    @property
    def is_established(self) -> bool:
        return self.phase is LeaderPhase.BROADCAST

    @property
    def next_zxid(self) -> Zxid:
        assert self.epoch is not None
        last = self._journal.last_zxid
        return last + 1 if epoch_of(last) == self.epoch else make_zxid(self.epoch, 1)

    def _abandon(self, reason: str) -> None:
        if self.abandon_reason is None:
            self.abandon_reason = reason

    # --- inputs --------------------------------------------------------------------

    def step(self, source: int, message: Message) -> None:
        learner = self._learners.get(source)
        if learner is not None:
            learner.last_heard = self._ctx.now
        match message:
            case FollowerInfo():
                self._on_follower_info(source, message)
            case AckEpoch():
                self._on_ack_epoch(source, message)
            case AckNewLeader():
                self._on_ack_new_leader(source, message)
            case Ack(zxid=zxid):
                if learner is not None and learner.stage is LearnerStage.SYNCED and self._is_ours(zxid):
                    learner.acked_zxid = max(learner.acked_zxid, zxid)
                    self._advance_commit()
            case PingAck(epoch=epoch, seq=seq):
                is_ours = epoch == self.epoch and seq <= self._ping_seq
                if learner is not None and learner.stage is LearnerStage.SYNCED and is_ours:
                    learner.answered_ping = max(learner.answered_ping, seq)
                    self._check_barriers()
            case SnapAck():
                self._on_snap_ack(source, message)
            case AppToLeader(epoch=epoch, payload=payload):
                if learner is not None and learner.is_forwarding and epoch == self.epoch:
                    self._ctx.out.app.append((source, payload))
                elif learner is None and epoch == self.epoch and self.is_established:
                    # A follower we dropped still serves our epoch (it never heard that we
                    # dropped it): its clients' writes, syncs and session touches would be
                    # lost here. Close its links again so that it syncs afresh.
                    self._drop_link(source, "it is not among our followers any more")
            case (
                NewEpoch()
                | Diff()
                | Trunc()
                | Snap()
                | SnapChunk()
                | SnapEnd()
                | SyncEntries()
                | NewLeader()
                | UpToDate()
                | Proposal()
                | Commit()
                | Ping()
                | AppToFollower()
                | Notification()
            ):
                log.debug("peer %d (leader): ignoring %s from %d", self._ctx.me, type(message).__name__, source)
            case _:
                assert_never(message)

    def _is_ours(self, zxid: Zxid) -> bool:
        return self.epoch is not None and epoch_of(zxid) == self.epoch and zxid <= self._journal.last_zxid

    def tick(self) -> None:
        ctx = self._ctx
        # A SNAP in progress restarts the clock: its size, not a fault, sets its length.
        if not self.is_established and ctx.now - max(self._started, self._last_progress) >= ctx.config.init_limit_ticks:
            self._abandon(f"epoch not established within {ctx.config.init_limit_ticks} ticks")
            return
        for server in [
            server
            for server, learner in self._learners.items()
            if learner.stage is LearnerStage.SNAPPING and ctx.now - learner.last_heard >= ctx.config.init_limit_ticks
        ]:
            del self._learners[server]  # and the image its SNAP held
            self._drop_link(server, f"its SNAP made no progress for {ctx.config.init_limit_ticks} ticks")
        is_due = ctx.now >= self._next_ping or self._barrier_ping_due
        if is_due and self.phase in (LeaderPhase.EPOCH_ACKS, LeaderPhase.SYNC, LeaderPhase.BROADCAST):
            self._send_pings()
        if self.is_established:
            sync_limit = ctx.config.sync_limit_ticks
            heard = [ctx.me] + [
                server
                for server, learner in self._learners.items()
                if learner.stage is LearnerStage.SYNCED and ctx.now - learner.last_heard <= sync_limit
            ]
            if not is_quorum(heard, ctx.voters):
                self._abandon(f"heard from no quorum within {sync_limit} ticks")
                return
            # A synced follower unheard for the sync limit is dropped, as ZooKeeper's leader
            # closes its LearnerHandler: it gets nothing more (no proposals, no pings), so it
            # stops serving at its own sync limit and syncs again with a new FOLLOWERINFO.
            # Without this, a follower whose messages are lost but which still hears the
            # leader (a one-way partition) serves on while its clients' writes, syncs and
            # session touches are lost and their sessions expire (tests/sim finding S2).
            for server in [
                server
                for server, learner in self._learners.items()
                if learner.stage is LearnerStage.SYNCED and ctx.now - learner.last_heard > sync_limit
            ]:
                del self._learners[server]
                self._drop_link(server, f"unheard for {sync_limit} ticks")

    def _drop_link(self, server: int, reason: str) -> None:
        log.info("peer %d (leader): dropping follower %d: %s", self._ctx.me, server, reason)
        self._ctx.out.disconnect.append(server)

    def on_persisted(self) -> None:
        persisted = self._journal.persisted_seq
        if self.phase is LeaderPhase.EPOCH_PERSIST and persisted >= self._epoch_seq:
            self.phase = LeaderPhase.EPOCH_ACKS
            for server, learner in self._learners.items():
                if learner.stage is LearnerStage.CONNECTED:
                    self._send_new_epoch(server, learner)
            self._check_epoch_quorum()
        if (
            self._current_epoch_seq is not None
            and persisted >= self._current_epoch_seq
            and not self._self_acked_newleader
        ):
            self._self_acked_newleader = True
            self._check_newleader_quorum()
        if self.is_established:
            self._advance_commit()

    # --- discovery -------------------------------------------------------------------

    def _on_follower_info(self, source: int, info: FollowerInfo) -> None:
        known = self._learners.get(source)
        if known is not None and known.handshake == info.handshake:
            return  # a duplicate of the attempt in progress
        if self.epoch is not None and info.accepted_epoch > self.epoch:
            # It promised a higher epoch (to a leader attempt that failed) and will refuse
            # ours forever. ZooKeeper leaves it out until the next election; we start one
            # now, so that it can ever rejoin. Stepping down is always safe.
            self._abandon(f"follower {source} accepted epoch {info.accepted_epoch} > ours {self.epoch}")
            return
        learner = _Learner(
            handshake=info.handshake,
            accepted_epoch=info.accepted_epoch,
            last_zxid=info.last_zxid,
            delivered_zxid=info.delivered_zxid,
            last_heard=self._ctx.now,
        )
        self._learners[source] = learner  # a new attempt replaces the old one: its ACKs stop counting
        match self.phase:
            case LeaderPhase.DISCOVERY:
                self._check_discovery_quorum()
            case LeaderPhase.EPOCH_PERSIST:
                pass  # NEWEPOCH goes out once our acceptedEpoch is durable
            case LeaderPhase.EPOCH_ACKS | LeaderPhase.SYNC | LeaderPhase.BROADCAST:
                self._send_new_epoch(source, learner)
            case _:
                assert_never(self.phase)

    def _check_discovery_quorum(self) -> None:
        ctx = self._ctx
        if not is_quorum([ctx.me, *self._learners], ctx.voters):
            return
        accepted = [self._journal.accepted_epoch, *(learner.accepted_epoch for learner in self._learners.values())]
        epoch = max(accepted) + 1
        assert epoch <= EPOCH_MAX, "epochs exhausted"
        self.epoch = epoch
        self._epoch_seq = self._journal.set_epochs(accepted=epoch).seq
        self.phase = LeaderPhase.EPOCH_PERSIST
        ctx.announce(Role.LEADING, ctx.me, epoch)
        log.info("peer %d: leading, establishing epoch %d", ctx.me, epoch)

    def _send_new_epoch(self, server: int, learner: _Learner) -> None:
        assert self.epoch is not None
        learner.stage = LearnerStage.EPOCH_SENT
        self._ctx.send(server, NewEpoch(epoch=self.epoch, handshake=learner.handshake))

    def _on_ack_epoch(self, source: int, ack: AckEpoch) -> None:
        learner = self._learners.get(source)
        if learner is None or learner.stage is not LearnerStage.EPOCH_SENT or learner.handshake != ack.handshake:
            return
        ours = (self._journal.current_epoch, self._journal.last_zxid)
        if (ack.current_epoch, ack.last_zxid) > ours:
            self._abandon(
                f"follower {source} is ahead: epoch {ack.current_epoch} zxid {format_zxid(ack.last_zxid)} "
                f"> epoch {ours[0]} zxid {format_zxid(ours[1])}"
            )
            return
        learner.stage = LearnerStage.EPOCH_ACKED
        learner.last_zxid = ack.last_zxid
        learner.is_epoch_promise = ack.is_first_ack
        match self.phase:
            case LeaderPhase.EPOCH_ACKS:
                self._check_epoch_quorum()
            case LeaderPhase.SYNC | LeaderPhase.BROADCAST:
                self._sync(source, learner)
            case LeaderPhase.DISCOVERY | LeaderPhase.EPOCH_PERSIST:
                raise AssertionError("ACKEPOCH before NEWEPOCH was sent")
            case _:
                assert_never(self.phase)

    def _check_epoch_quorum(self) -> None:
        ctx = self._ctx
        acked = [server for server, learner in self._learners.items() if learner.stage is LearnerStage.EPOCH_ACKED]
        promised = [server for server in acked if self._learners[server].is_epoch_promise]
        if not is_quorum([ctx.me, *promised], ctx.voters):
            return
        assert self.epoch is not None
        self._current_epoch_seq = self._journal.set_epochs(current=self.epoch).seq
        self.phase = LeaderPhase.SYNC
        for server in acked:
            self._sync(server, self._learners[server])

    # --- synchronisation -------------------------------------------------------------

    def _plan_sync(self, learner: _Learner) -> SyncPlan:
        """DIFF, TRUNC or SNAP for this learner (docs/correctness.md, rule 3)."""
        return plan_sync(
            self._journal,
            follower_zxid=learner.last_zxid,
            follower_delivered=learner.delivered_zxid,
            snap_threshold=self._ctx.config.snap_threshold_txns,
        )

    def _sync(self, server: int, learner: _Learner) -> None:
        ctx = self._ctx
        assert self.epoch is not None
        self._flush_proposals()  # the sync covers everything proposed so far
        plan = self._plan_sync(learner)
        handshake = learner.handshake
        match plan.kind:
            case SyncKind.DIFF:
                ctx.send(server, Diff(handshake=handshake, zxid=plan.zxid))
            case SyncKind.TRUNC:
                ctx.send(server, Trunc(handshake=handshake, zxid=plan.zxid))
            case SyncKind.SNAP:
                ctx.send(server, Snap(handshake=handshake, zxid=plan.zxid))
                learner.stage = LearnerStage.SNAPPING
                learner.transfer = SnapSender(
                    plan.zxid,
                    plan.pieces,
                    chunk_bytes=ctx.config.snap_chunk_bytes,
                    window_chunks=ctx.config.snap_window_chunks,
                )
                log.info("peer %d: sync %d by SNAP at %s (streaming)", ctx.me, server, format_zxid(plan.zxid))
                self._send_snap_chunks(server, learner)
                return
            case _:
                assert_never(plan.kind)
        for previous, first, txns in entry_runs(plan.zxid, plan.entries, ctx.config.max_batch_txns):
            ctx.send(server, SyncEntries(handshake=handshake, previous_zxid=previous, zxid=first, txns=txns))
        ctx.send(server, NewLeader(epoch=self.epoch, zxid=self._journal.last_zxid, handshake=handshake))
        learner.stage = LearnerStage.SYNCING
        log.info(
            "peer %d: sync %d by %s at %s with %d entries",
            ctx.me,
            server,
            plan.kind.name,
            format_zxid(plan.zxid),
            len(plan.entries),
        )

    def _send_snap_chunks(self, server: int, learner: _Learner) -> None:
        """Send what the SNAP's window allows; after its end, the entries and NEWLEADER."""
        sender = learner.transfer
        assert sender is not None and learner.stage is LearnerStage.SNAPPING
        for message in sender.next_messages(learner.handshake):
            self._ctx.send(server, message)
        if not sender.is_finished:
            return
        assert self.epoch is not None
        learner.transfer = None
        self._flush_proposals()  # the entries cover everything proposed so far
        entries = self._journal.history_after(sender.zxid)
        if entries is None:
            # We took a snapshot and purged our log past this one meanwhile: start over.
            del self._learners[server]
            self._drop_link(server, f"our log after the snapshot {format_zxid(sender.zxid)} was purged during the SNAP")
            return
        for previous, first, txns in entry_runs(sender.zxid, entries, self._ctx.config.max_batch_txns):
            self._ctx.send(
                server, SyncEntries(handshake=learner.handshake, previous_zxid=previous, zxid=first, txns=txns)
            )
        self._ctx.send(server, NewLeader(epoch=self.epoch, zxid=self._journal.last_zxid, handshake=learner.handshake))
        learner.stage = LearnerStage.SYNCING
        log.info(
            "peer %d: SNAP to %d sent (%d bytes), %d entries after it", self._ctx.me, server, sender.sent, len(entries)
        )

    def _on_snap_ack(self, source: int, ack: SnapAck) -> None:
        learner = self._learners.get(source)
        if learner is None or learner.stage is not LearnerStage.SNAPPING or learner.handshake != ack.handshake:
            return
        assert learner.transfer is not None
        if learner.transfer.on_ack(ack.offset):
            self._last_progress = self._ctx.now
            self._send_snap_chunks(source, learner)

    def _on_ack_new_leader(self, source: int, ack: AckNewLeader) -> None:
        learner = self._learners.get(source)
        if (
            learner is None
            or learner.stage is not LearnerStage.SYNCING
            or learner.handshake != ack.handshake
            or ack.epoch != self.epoch
        ):
            return
        learner.stage = LearnerStage.SYNCED
        learner.acked_zxid = 0  # never reuse tallies (docs/correctness.md, rule 2): its ACKs follow
        if self.is_established:
            self._send_up_to_date(source, learner)
        else:
            self._check_newleader_quorum()

    def _check_newleader_quorum(self) -> None:
        if self.is_established or not self._self_acked_newleader:
            return
        ctx = self._ctx
        synced = [server for server, learner in self._learners.items() if learner.stage is LearnerStage.SYNCED]
        if is_quorum([ctx.me, *synced], ctx.voters):
            self._establish(synced)

    def _establish(self, synced: list[int]) -> None:
        """A quorum holds our history durably under the new epoch: it is all committed (docs/correctness.md, rule 2)."""
        ctx = self._ctx
        assert self.epoch is not None and self._journal.durable_current_epoch == self.epoch
        assert self._journal.durable_last_zxid == self._journal.last_zxid, "history durable before currentEpoch"
        self.phase = LeaderPhase.BROADCAST
        ctx.commit_through(self._journal.last_zxid)
        assert ctx.delivered_zxid == self._journal.last_zxid, "the leader's history is durable before NEWLEADER"
        for server in synced:
            self._send_up_to_date(server, self._learners[server])
        self._next_ping = ctx.now  # a first heartbeat round at the next tick
        ctx.set_ready(True)
        log.info(
            "peer %d: established epoch %d, committed through %s with %s",
            ctx.me,
            self.epoch,
            format_zxid(ctx.commit_zxid),
            sorted([ctx.me, *synced]),
        )

    def _send_up_to_date(self, server: int, learner: _Learner) -> None:
        assert self.epoch is not None
        self._flush_proposals()
        self._ctx.send(server, UpToDate(epoch=self.epoch, zxid=self._ctx.commit_zxid, handshake=learner.handshake))

    # --- broadcast ---------------------------------------------------------------------

    def propose(self, txn: bytes) -> Zxid:
        assert self.is_established
        zxid = self.next_zxid
        assert counter_of(zxid) < COUNTER_MAX, "the peer steps down before the counter overflows"
        self._journal.append(zxid, txn)
        self._batch.append((zxid, txn))
        if len(self._batch) >= self._ctx.config.max_batch_txns:
            self._flush_proposals()
        return zxid

    def _flush_proposals(self) -> None:
        if not self._batch:
            return
        proposal = Proposal(zxid=self._batch[0][0], txns=tuple(txn for _, txn in self._batch))
        self._batch.clear()
        for server, learner in self._learners.items():
            if learner.is_forwarding:
                self._ctx.send(server, proposal)

    def _advance_commit(self) -> None:
        ctx = self._ctx
        assert self.epoch is not None
        own = self._journal.durable_last_zxid
        acked = {ctx.me: own if epoch_of(own) == self.epoch else 0}
        acked.update(
            (server, learner.acked_zxid)
            for server, learner in self._learners.items()
            if learner.stage is LearnerStage.SYNCED
        )
        zxid = quorum_zxid(acked, ctx.voters)
        if zxid > ctx.commit_zxid:
            # Only txns of this epoch are ever committed by counting ACKs (docs/correctness.md, rule 2).
            assert epoch_of(zxid) == self.epoch, format_zxid(zxid)
            self._flush_proposals()
            for server, learner in self._learners.items():
                if learner.is_forwarding:
                    ctx.send(server, Commit(zxid=zxid))
            ctx.commit_through(zxid)
        else:
            ctx.deliver()  # our own copies may have become durable since

    # --- heartbeats, barriers, application messages -----------------------------------

    def _send_pings(self) -> None:
        ctx = self._ctx
        assert self.epoch is not None
        self._flush_proposals()
        self._ping_seq += 1
        self._next_ping = ctx.now + max(1, ctx.config.heartbeat_ticks)
        self._barrier_ping_due = False
        # Before establishment nothing is committed in this epoch's name yet.
        commit_zxid = ctx.commit_zxid if self.is_established else 0
        ping = Ping(epoch=self.epoch, seq=self._ping_seq, commit_zxid=commit_zxid)
        for server, learner in self._learners.items():
            if learner.is_forwarding:
                ctx.send(server, ping)

    def barrier(self) -> int:
        assert self.is_established
        ctx = self._ctx
        barrier_id = ctx.next_barrier_id()
        if quorum_size(ctx.voters) == 1:
            ctx.out.barriers.append(barrier_id)
        else:
            self._barriers.append((barrier_id, self._ping_seq + 1))
            self._barrier_ping_due = True
        return barrier_id

    def _check_barriers(self) -> None:
        ctx = self._ctx
        while self._barriers:
            barrier_id, seq = self._barriers[0]
            answered = [
                server
                for server, learner in self._learners.items()
                if learner.stage is LearnerStage.SYNCED and learner.answered_ping >= seq
            ]
            if not is_quorum([ctx.me, *answered], ctx.voters):
                return
            self._barriers.pop(0)
            ctx.out.barriers.append(barrier_id)

    def send_app(self, target: int, payload: bytes) -> None:
        learner = self._learners.get(target)
        if learner is None or not learner.is_forwarding or self.epoch is None:
            log.debug("peer %d: no follower %d to send an application message to", self._ctx.me, target)
            return
        self._flush_proposals()
        self._ctx.send(target, AppToFollower(epoch=self.epoch, commit_zxid=self._ctx.commit_zxid, payload=payload))

    def flush(self) -> None:
        """Before output is taken: send the batched proposals and a due barrier ping."""
        if self._barrier_ping_due and self.phase is LeaderPhase.BROADCAST:
            self._send_pings()
        self._flush_proposals()
