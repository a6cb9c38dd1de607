"""What every role of one peer shares: configuration, journal, output, clock, delivery.

The roles (:class:`~coord.zab.election.Election`, :class:`~coord.zab.leader.Leader`,
:class:`~coord.zab.follower.Follower`) come and go with every role change; the
:class:`Context` stays for the life of the :class:`~coord.zab.peer.Peer`.

Delivery (docs/correctness.md, rule 4): a txn reaches ``Output.deliver`` only when it is committed (as
far as this server knows: ``commit_zxid``) AND durable here (``persisted`` covered
it), strictly in zxid order with no gap (docs/correctness.md, rule 6). A snapshot from the leader is
installed (``Output.install``) once its record is durable; deliveries still
waiting in the same output are then dropped, as the snapshot supersedes them.

Application messages from the leader wait in ``_app_waiting`` until everything the
leader had committed when it sent them is delivered here.
"""

from __future__ import annotations

import logging
import random
from collections import deque

from coord.zab.journal import Journal
from coord.zab.messages import Message
from coord.zab.types import DurableState, Envelope, Output, PeerConfig, Record, Role, RoleChange, Zxid
from coord.zxid import format_zxid, zab_follows

log = logging.getLogger("coord.zab")


class Context:
    """The state of one peer that outlives its roles."""

    def __init__(
        self,
        config: PeerConfig,
        durable: DurableState,
        rng: random.Random,
        delivered_zxid: Zxid | None,
    ) -> None:
        self.config = config
        self.me = config.server_id
        self.voters = config.voters
        self.rng = rng
        self.out = Output()
        self.journal = Journal(durable, self._emit)
        self.now = 0  # ticks since this Peer was created
        # By default the application state reflects the whole durable log, as after
        # ZooKeeper's recovery (snapshot + replay of every logged txn).
        self.delivered_zxid: Zxid = self.journal.last_zxid if delivered_zxid is None else delivered_zxid
        assert self.delivered_zxid <= self.journal.last_zxid
        self.commit_zxid: Zxid = self.delivered_zxid
        self.announced: Role = Role.LOOKING
        self.is_ready = False
        self._app_waiting: deque[tuple[Zxid, int, bytes]] = deque()
        self._barrier_ids = 0

    def _emit(self, record: Record) -> None:
        self.out.persist.append(record)

    def send(self, target: int, message: Message) -> None:
        self.out.send.append(Envelope(source=self.me, target=target, message=message))

    def announce(self, role: Role, leader: int | None, epoch: int) -> None:
        self.announced = role
        self.out.roles.append(RoleChange(role=role, leader=leader, epoch=epoch))

    def set_ready(self, is_ready: bool) -> None:
        if is_ready != self.is_ready:
            self.is_ready = is_ready
            self.out.ready = is_ready

    def next_barrier_id(self) -> int:
        self._barrier_ids += 1
        return self._barrier_ids

    def reset_role_state(self) -> None:
        """Forget what only the previous role knew (docs/correctness.md, rule 4); keep what the app reflects."""
        self.journal.clear_cache()
        self._app_waiting.clear()
        self.commit_zxid = self.delivered_zxid

    # --- delivery ----------------------------------------------------------------------

    def commit_through(self, zxid: Zxid) -> None:
        """Learn that everything up to ``zxid`` is committed, and deliver what is durable."""
        if zxid > self.commit_zxid:
            self.commit_zxid = zxid
        self.deliver()

    def deliver(self) -> None:
        """Deliver committed, durable txns in order, then release waiting app messages."""
        bound = min(self.commit_zxid, self.journal.durable_last_zxid)
        if bound > self.delivered_zxid:
            for zxid, txn in self.journal.entries_between(self.delivered_zxid, bound):
                assert zab_follows(self.delivered_zxid, zxid), (
                    f"delivery gap: {format_zxid(zxid)} after {format_zxid(self.delivered_zxid)}"
                )
                self.out.deliver.append((zxid, txn))
                self.delivered_zxid = zxid
            assert self.delivered_zxid == bound, (
                f"delivered through {format_zxid(self.delivered_zxid)}, committed and durable through "
                f"{format_zxid(bound)}"
            )
            self.journal.forget_through(self.delivered_zxid)
        self._release_app()

    def install(self, zxid: Zxid) -> None:
        """A snapshot replaced the log and is durable: the application replaces its state
        with it (read from its durable state)."""
        self.out.install = zxid
        self.out.deliver.clear()
        # The snapshot replaces everything: what we thought committed beyond it may be
        # exactly what it was sent to undo (txns our application replayed at start-up).
        self.delivered_zxid = zxid
        self.commit_zxid = zxid

    def queue_app(self, commit_zxid: Zxid, source: int, payload: bytes) -> None:
        self._app_waiting.append((commit_zxid, source, payload))
        self._release_app()

    def _release_app(self) -> None:
        while self._app_waiting and self._app_waiting[0][0] <= self.delivered_zxid:
            _, source, payload = self._app_waiting.popleft()
            self.out.app.append((source, payload))
