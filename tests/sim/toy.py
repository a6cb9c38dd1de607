"""A toy stand-in for the ZAB core, for testing the simulator itself.

:class:`ToyPeer` is "leader broadcasts" with a fixed leader (the highest id) in epoch 1:
no election, no recovery, no sync. It follows the core's API and its shell rules
(ACK only after ``persisted``, deliver only what is committed and durable locally), so
the simulator's plumbing — network, disk, delivery, checkers — can be tested without
the real core, and with the ``ack_before_fsync`` bug the checkers must catch it.
Only meaningful without crashes: a restarted toy never catches up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from coord.errors import NotLeaderError
from coord.zab.types import DurableState, Envelope, EpochRecord, LogEntry, Output, PeerConfig, Record, Role, Zxid
from coord.zxid import counter_of, make_zxid


@dataclass(frozen=True, slots=True, kw_only=True)
class ToyProposal:
    zxid: Zxid
    txn: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ToyAck:
    zxid: Zxid


@dataclass(frozen=True, slots=True, kw_only=True)
class ToyCommit:
    zxid: Zxid


class ToyPeer:
    """Fixed-leader broadcast. See the module docstring."""

    def __init__(
        self, config: PeerConfig, durable: DurableState, rng: random.Random, *, bugs: frozenset[str] = frozenset()
    ) -> None:
        self.config = config
        self.durable = durable
        self.bugs = bugs
        self.me = config.server_id
        self.leader_id: int | None = max(config.voters)
        self.role = Role.LEADING if self.me == self.leader_id else Role.FOLLOWING
        self.epoch = 1
        self.is_ready = False
        self._out = Output()
        self._seq = 0
        self._counter = 0
        self._durable_seq = 0
        self._entries: dict[int, tuple[Zxid, bytes]] = {}  # seq -> entry waiting for the disk
        self._durable: dict[Zxid, bytes] = {}
        self._acks: dict[Zxid, set[int]] = {}
        self._order: list[Zxid] = []
        self._committed: Zxid = 0
        self.last_delivered_zxid: Zxid = durable.applied_zxid()
        self._write(EpochRecord(seq=0, accepted_epoch=1, current_epoch=1))

    def _write(self, record: Record) -> None:
        self._seq += 1
        if isinstance(record, LogEntry):
            record = LogEntry(seq=self._seq, zxid=record.zxid, txn=record.txn)
            self._entries[self._seq] = (record.zxid, record.txn)
        else:
            record = EpochRecord(seq=self._seq, accepted_epoch=1, current_epoch=1)
        self._out.persist.append(record)

    def _send(self, target: int, message: object) -> None:
        self._out.send.append(Envelope(source=self.me, target=target, message=message))

    def step(self, envelope: Envelope) -> None:
        """Handle a toy message."""
        message = envelope.message
        if isinstance(message, ToyProposal):
            self._write(LogEntry(seq=0, zxid=message.zxid, txn=message.txn))
            if "ack_before_fsync" in self.bugs:
                self._send(envelope.source, ToyAck(zxid=message.zxid))
        elif isinstance(message, ToyAck):
            self._ack(envelope.source, message.zxid)
        elif isinstance(message, ToyCommit):
            self._committed = max(self._committed, message.zxid)
            self._deliver()

    def tick(self) -> None:
        """Nothing happens on time in the toy."""

    def persisted(self, through_seq: int) -> None:
        """Records through ``through_seq`` are durable: ACK them (followers) or count them (leader)."""
        for seq in range(self._durable_seq + 1, through_seq + 1):
            if seq == 1 and not self.is_ready:
                self.is_ready = True
                self._out.ready = True
            entry = self._entries.pop(seq, None)
            if entry is None:
                continue
            zxid, txn = entry
            self._durable[zxid] = txn
            if self.role is Role.LEADING:
                self._ack(self.me, zxid)
            elif "ack_before_fsync" not in self.bugs:
                assert self.leader_id is not None
                self._send(self.leader_id, ToyAck(zxid=zxid))
        self._durable_seq = through_seq
        self._deliver()

    def propose(self, txn: bytes) -> Zxid:
        """Order ``txn`` (the leader only)."""
        if not (self.is_ready and self.role is Role.LEADING):
            raise NotLeaderError("toy: not the leader")
        self._counter += 1
        zxid = make_zxid(1, self._counter)
        self._order.append(zxid)
        self._acks[zxid] = set()
        self._write(LogEntry(seq=0, zxid=zxid, txn=txn))
        for other in self.config.voters:
            if other != self.me:
                self._send(other, ToyProposal(zxid=zxid, txn=txn))
        return zxid

    def _ack(self, source: int, zxid: Zxid) -> None:
        if zxid not in self._acks:
            return
        self._acks[zxid].add(source)
        quorum = len(self.config.voters) // 2 + 1
        while self._order and len(self._acks[self._order[0]]) >= quorum:
            done = self._order.pop(0)
            self._committed = done
            for other in self.config.voters:
                if other != self.me:
                    self._send(other, ToyCommit(zxid=done))
        self._deliver()

    def _deliver(self) -> None:
        while True:
            nxt = make_zxid(1, counter_of(self.last_delivered_zxid) + 1)
            if nxt > self._committed or nxt not in self._durable:
                return
            self._out.deliver.append((nxt, self._durable[nxt]))
            self.last_delivered_zxid = nxt

    def take_output(self) -> Output:
        """Everything produced since the last call."""
        out, self._out = self._out, Output()
        return out


def toy_factory(config: PeerConfig, durable: DurableState, rng: random.Random, bugs: frozenset[str]) -> ToyPeer:
    """A :data:`tests.sim.sim.PeerFactory` building toys."""
    return ToyPeer(config, durable, rng, bugs=bugs)
