"""One server's side of ZAB, as a sans-IO state machine: :class:`Peer`.

Theory of operation
-------------------
A peer is always in one of three roles, each a separate object that is created
fresh on every role change and so carries nothing over (docs/correctness.md, rule 4):

- LOOKING: an :class:`~coord.zab.election.Election` (Fast Leader Election);
- LEADING: a :class:`~coord.zab.leader.Leader` (discovery, sync, broadcast);
- FOLLOWING: a :class:`~coord.zab.follower.Follower` (the same, other side).

What outlives roles lives in a :class:`~coord.zab.context.Context`: configuration,
the :class:`~coord.zab.journal.Journal` (the write stream and what it will leave
on disk), the output being accumulated, the tick count, and what the application
was given (delivered zxid, waiting application messages).

Inputs (``step``, ``tick``, ``persisted``, ``propose``, ``barrier``, ``send_app``,
``app_to_leader``) go to the current role; afterwards :meth:`Peer._settle` applies
the role's verdict: an election that decided becomes a Leader or a Follower; a
Leader or Follower that gave up (``abandon_reason``) becomes a new Election. Each
transition is one ``_become_*`` method that logs one line.

``Output.roles`` gets a :class:`~coord.zab.types.RoleChange` when the role is
*announced*: LEADING / FOLLOWING once the epoch being established / followed is
known (the leader chose it; the follower received NEWEPOCH), LOOKING when an
announced role ends. A leader that gives up before choosing an epoch announced
nothing, so it announces nothing on the way back. ``Output.ready`` turns True when
the leader established its epoch or the follower got UPTODATE, and False when
that ends.

Notifications are answered in every role: a LOOKING peer feeds them to its
election; a FOLLOWING / LEADING peer answers a LOOKING sender with its current
vote, so a restarted server finds the running leader (see election.py).

Start-up: the peer reads acceptedEpoch, currentEpoch and its last zxid from
``durable`` and nothing else (docs/correctness.md, rule 4). It assumes the application state reflects
the whole durable log (ZooKeeper's recovery replays every logged txn), unless
``delivered_zxid`` says otherwise — then the txns after it are delivered once
known committed. Record ``seq`` numbers start at 1 for every Peer instance, and
``durable`` must reflect every record that ``persisted`` confirmed.

Where each rule of docs/correctness.md lives (as code and as an assertion):

1. Persist before you promise — ACKEPOCH, ACKNEWLEADER and ACK wait for
   ``persisted`` (follower.py); the leader counts itself for NEWLEADER only once its
   currentEpoch record is durable and for a txn only once its entry is
   (leader.py); NEWEPOCH waits for the leader's acceptedEpoch record.
2. Old-epoch txns commit only through NEWLEADER — ``Leader._advance_commit``
   asserts every commit by ACK count is of the current epoch; tallies start at
   zero for every follower attempt and every leadership.
3. Truncate what the leader does not have — sync.py; the follower asserts the
   TRUNC point is in its history and below nothing its application applied.
4. Durable state is the only truth — the Peer reads only ``durable`` at start,
   delivers only committed AND durable txns (``Context.deliver`` asserts it),
   and every role change builds fresh role objects and drops caches, tallies,
   waiting application messages and the commit point beyond what was delivered.
6. No gaps — ``Journal.append`` and ``Context.deliver`` assert contiguity; a gap
   from the network makes the follower give up instead of writing it; the leader
   steps down before its counter overflows.
8. A leader checks — quorum heartbeats within ``sync_limit_ticks``, and
   ``barrier`` for linearizable reads.

(Rules 5 and 7 belong to the storage layer and the pipeline; docs/correctness.md
says where each lives.)

Left out: observers, weighted quorums and dynamic reconfiguration (the voters
are fixed); a follower that joins gets the leader's proposals
from its NEWLEADER on but learns commit points only from UPTODATE (ZooKeeper
buffers such packets as ``packetsNotCommitted``; the cumulative commit point in
UPTODATE makes that unnecessary).

Messages from servers that are not voters, or addressed to another server, are
dropped (fail closed). The roles are built from :class:`RoleTypes`: the
simulator's tests pass deliberately broken subclasses (tests/sim/broken.py) to prove
that it catches them; production code holds no broken variant and no switch for one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import assert_never

from coord.errors import NotLeaderError
from coord.zab.context import Context, log
from coord.zab.election import Election, Vote
from coord.zab.follower import Follower
from coord.zab.leader import Leader
from coord.zab.messages import Notification
from coord.zab.types import DurableState, Envelope, Output, PeerConfig, Role, SnapshotRecord, Zxid
from coord.zxid import COUNTER_MAX, counter_of, format_zxid


@dataclass(frozen=True, slots=True)
class RoleTypes:
    """The classes a :class:`Peer` builds its roles from (subclasses allowed)."""

    leader: type[Leader] = Leader
    follower: type[Follower] = Follower


class Peer:
    """One server's side of ZAB. No I/O: the caller feeds inputs and carries out outputs."""

    def __init__(
        self,
        config: PeerConfig,
        durable: DurableState,
        rng: random.Random,
        *,
        roles: RoleTypes = RoleTypes(),
        delivered_zxid: Zxid | None = None,
    ) -> None:
        """Start LOOKING, from what ``durable`` holds.

        Args:
            config: this server's id, the voters and the timing limits (ticks).
            durable: this server's durable state; read, never written.
            rng: the only source of randomness (handshake numbers).
            roles: the role classes (the simulator's tests pass broken variants).
            delivered_zxid: the zxid the application state reflects at start; by
                default ``durable.last_zxid()`` (the whole log was replayed).

        Raises:
            ValueError: the configuration is inconsistent.
        """
        if config.server_id not in config.voters or len(set(config.voters)) != len(config.voters):
            raise ValueError(f"server {config.server_id} must be exactly once among the voters {config.voters}")
        self._roles = roles
        self._ctx = Context(config, durable, rng, delivered_zxid)
        self._election_round = 0
        self._vote = Vote(self._ctx.journal.current_epoch, self._ctx.journal.last_zxid, config.server_id)
        self._state: Election | Leader | Follower
        self._become_looking("started")
        self._settle()

    # --- what the shell and the simulator read ---------------------------------------

    @property
    def server_id(self) -> int:
        return self._ctx.me

    @property
    def role(self) -> Role:
        match self._state:
            case Election():
                return Role.LOOKING
            case Leader():
                return Role.LEADING
            case Follower():
                return Role.FOLLOWING
            case _:
                assert_never(self._state)

    @property
    def leader_id(self) -> int | None:
        """The leader this server follows or is (None while LOOKING)."""
        match self._state:
            case Election():
                return None
            case Leader():
                return self._ctx.me
            case Follower() as follower:
                return follower.leader
            case _:
                assert_never(self._state)

    @property
    def epoch(self) -> int:
        """The epoch led / followed once known; otherwise the currentEpoch."""
        match self._state:
            case Leader(epoch=int(epoch)) | Follower(epoch=int(epoch)):
                return epoch
            case Election() | Leader() | Follower():
                return self._ctx.journal.current_epoch
            case _:
                assert_never(self._state)

    @property
    def accepted_epoch(self) -> int:
        return self._ctx.journal.accepted_epoch

    @property
    def current_epoch(self) -> int:
        return self._ctx.journal.current_epoch

    @property
    def is_ready(self) -> bool:
        """Established leader, or follower that got UPTODATE: may serve clients."""
        return self._ctx.is_ready

    @property
    def is_established_leader(self) -> bool:
        return isinstance(self._state, Leader) and self._state.is_established

    @property
    def last_logged_zxid(self) -> Zxid:
        """The last zxid of the log once every record emitted so far is written."""
        return self._ctx.journal.last_zxid

    @property
    def last_durable_zxid(self) -> Zxid:
        """The last zxid of the log as far as ``persisted`` confirmed."""
        return self._ctx.journal.durable_last_zxid

    @property
    def last_committed_zxid(self) -> Zxid:
        """The highest zxid this server knows to be committed."""
        return self._ctx.commit_zxid

    @property
    def last_delivered_zxid(self) -> Zxid:
        """The zxid the application state reflects (after the output is applied)."""
        return self._ctx.delivered_zxid

    @property
    def next_zxid(self) -> Zxid:
        """The zxid the next ``propose`` will return.

        Raises:
            NotLeaderError: this server is not an established leader.
        """
        return self._established_leader().next_zxid

    # --- inputs ------------------------------------------------------------------------

    def step(self, envelope: Envelope) -> None:
        """A message from another server arrived."""
        ctx = self._ctx
        source, message = envelope.source, envelope.message
        if envelope.target != ctx.me or source == ctx.me or source not in ctx.voters:
            log.warning("peer %d: dropping %s from %d to %d", ctx.me, type(message).__name__, source, envelope.target)
            return
        if isinstance(message, Notification):
            self._on_notification(source, message)
        else:
            match self._state:
                case Election():
                    pass  # nothing but notifications matters while LOOKING
                case Leader() | Follower() as role:
                    role.step(source, message)
                case _:
                    assert_never(self._state)
        self._settle()

    def tick(self) -> None:
        """One tick of logical time passed."""
        self._ctx.now += 1
        self._state.tick()
        self._settle()

    def persisted(self, through_seq: int) -> None:
        """Every record with ``seq <= through_seq`` is durable."""
        for record in self._ctx.journal.persisted(through_seq):
            if isinstance(record, SnapshotRecord):
                # The log is replaced; the application must be too, whatever our role now.
                self._ctx.install(record.zxid)
        match self._state:
            case Election():
                pass
            case Leader() | Follower() as role:
                role.on_persisted()
            case _:
                assert_never(self._state)
        self._settle()

    def link_down(self, server_id: int) -> None:
        """The shell saw the connection from ``server_id`` close.

        Only a hint, to react faster than a timeout (as ZooKeeper's learner does when
        its leader's socket closes): a follower whose leader's link closed looks for a
        new leader at once. Nothing depends on it for safety; timeouts still apply.
        """
        if isinstance(self._state, Follower) and server_id == self._state.leader:
            self._state.leader_link_lost()
            self._settle()

    def propose(self, txn: bytes, *, zxid: Zxid | None = None) -> Zxid:
        """Order ``txn``; it is delivered (here and everywhere) once committed.

        Args:
            txn: the encoded txn.
            zxid: the zxid the caller numbered it with. The server's preparer numbers
                every txn (it must know the zxid to build it: a new session's id is its
                zxid); ZAB refuses a number that does not extend its log, before anything
                is written, as the storage log refuses a gap. None: ZAB's own next zxid.

        Returns:
            The zxid: ``(epoch << 32) | counter``, counters contiguous.

        Raises:
            NotLeaderError: not an established leader, or the zxid counter is
                exhausted (the leader then steps down so that a new epoch starts).
            ValueError: ``zxid`` is not the next zxid of this leader's log.
        """
        leader = self._established_leader()
        expected = leader.next_zxid
        if counter_of(expected) >= COUNTER_MAX:
            self._become_looking("zxid counter exhausted; a new epoch must start")
            self._settle()
            raise NotLeaderError("zxid counter exhausted; re-electing")
        if zxid is not None and zxid != expected:
            raise ValueError(
                f"a proposal numbered {format_zxid(zxid)}; this leader's log continues at {format_zxid(expected)}"
            )
        return leader.propose(txn)

    def barrier(self) -> int:
        """Start a quorum round; its id appears in ``Output.barriers`` once confirmed.

        Confirmed when a quorum (this leader included) answered a heartbeat sent
        after this call: then this server was still the leader after the call
        (docs/correctness.md, rule 8). A leader that steps down drops its pending barriers.

        Raises:
            NotLeaderError: not an established leader.
        """
        return self._established_leader().barrier()

    def send_app(self, target: int, payload: bytes) -> None:
        """Leader → follower application message, in order with proposals and commits.

        The follower releases it only after delivering everything this leader had
        committed when it was sent. Dropped when ``target`` is not a follower being
        synchronised or synchronised, or this server does not lead.
        """
        match self._state:
            case Leader() as leader:
                leader.send_app(target, payload)
            case Election() | Follower():
                log.debug("peer %d: not leading; application message to %d dropped", self._ctx.me, target)
            case _:
                assert_never(self._state)

    def app_to_leader(self, payload: bytes) -> None:
        """Follower → leader application message; dropped without a synchronised leader.

        On an established leader the message is looped back into its own
        ``Output.app`` (source = itself), so the application can treat forwarding
        uniformly.
        """
        match self._state:
            case Follower() as follower:
                follower.app_to_leader(payload)
            case Leader() as leader if leader.is_established:
                self._ctx.out.app.append((self._ctx.me, payload))
            case Election() | Leader():
                log.debug("peer %d: no leader; application message dropped", self._ctx.me)
            case _:
                assert_never(self._state)

    def take_output(self) -> Output:
        """Everything produced since the last call (proposals batched per follower)."""
        if isinstance(self._state, Leader):
            self._state.flush()
        output, self._ctx.out = self._ctx.out, Output()
        return output

    # --- role changes ------------------------------------------------------------------

    def _established_leader(self) -> Leader:
        if isinstance(self._state, Leader) and self._state.is_established:
            return self._state
        raise NotLeaderError(f"server {self._ctx.me} is not the established leader")

    def _on_notification(self, source: int, notification: Notification) -> None:
        match self._state:
            case Election() as election:
                election.receive(source, notification)
                self._drain_election(election)
            case Leader() | Follower() as role:
                if notification.state is Role.LOOKING:
                    # (a notification from before the epoch we follow was established is
                    # stale: its proposed leader's epoch is older)
                    if (
                        isinstance(role, Follower)
                        and source == role.leader
                        and role.epoch is not None
                        and notification.epoch >= role.epoch
                    ):
                        role.leader_looking()  # settled by step()'s _settle: this server looks too
                        return
                    self._ctx.send(source, self._settled_notification())
            case _:
                assert_never(self._state)

    def _settled_notification(self) -> Notification:
        leader = self.leader_id
        assert leader is not None
        match self._state:
            case Leader(epoch=int(epoch)) | Follower(epoch=int(epoch)):
                pass
            case _:
                epoch = self._vote.epoch
        return Notification(
            leader=leader, zxid=self._vote.zxid, epoch=epoch, election_round=self._election_round, state=self.role
        )

    def _drain_election(self, election: Election) -> None:
        for target, notification in election.outbox:
            self._ctx.send(target, notification)
        election.outbox.clear()

    def _settle(self) -> None:
        """Apply the current role's verdict until the role is stable."""
        while True:
            match self._state:
                case Election() as election:
                    self._drain_election(election)
                    if election.decided is None:
                        return
                    self._election_round = election.election_round
                    self._vote = election.decided
                    if election.decided.leader == self._ctx.me:
                        self._become_leader()
                    else:
                        self._become_follower(election.decided.leader)
                case Leader() | Follower() as role:
                    if role.abandon_reason is None:
                        return
                    self._become_looking(role.abandon_reason)
                case _:
                    assert_never(self._state)

    def _become_looking(self, reason: str) -> None:
        ctx = self._ctx
        log.info("peer %d: LOOKING (%s)", ctx.me, reason)
        if ctx.announced is not Role.LOOKING:
            ctx.announce(Role.LOOKING, None, 0)
        ctx.set_ready(False)
        ctx.reset_role_state()
        self._election_round += 1
        journal = ctx.journal
        self._state = Election(
            me=ctx.me,
            voters=ctx.voters,
            election_round=self._election_round,
            own=Vote(journal.current_epoch, journal.last_zxid, ctx.me),
            finalize_wait_ticks=ctx.config.finalize_wait_ticks,
            resend_ticks=ctx.config.election_timeout_ticks,
        )

    def _become_leader(self) -> None:
        ctx = self._ctx
        log.info("peer %d: LEADING (round %d, vote %s)", ctx.me, self._election_round, format_zxid(self._vote.zxid))
        ctx.reset_role_state()
        self._state = self._roles.leader(ctx)

    def _become_follower(self, leader: int) -> None:
        ctx = self._ctx
        log.info("peer %d: FOLLOWING %d (round %d)", ctx.me, leader, self._election_round)
        ctx.reset_role_state()
        self._state = self._roles.follower(ctx, leader)
