"""Test support for the ZAB core: an instant in-memory disk, a toy application, a cluster.

- :class:`MemoryDurable` implements :class:`coord.zab.types.DurableState` over a
  Python list; :meth:`MemoryDurable.write` applies a record (the "disk").
- :class:`App` is the application: the list of txns delivered, in order.
- :class:`Cluster` runs N peers with instant, ordered message delivery and an
  instant disk; links can be cut, nodes killed (all in-memory state dropped) and
  restarted from their durable state. Deterministic: one FIFO queue, fixed seeds.
- ``make_leader`` / ``make_follower`` drive one lone Peer into a role with
  hand-written messages, for tests that look at single messages.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

import cbor2

from coord.zab import (
    AckEpoch,
    AckNewLeader,
    Diff,
    Envelope,
    EpochRecord,
    FollowerInfo,
    LogEntry,
    Message,
    NewEpoch,
    NewLeader,
    Notification,
    Output,
    Peer,
    PeerConfig,
    Record,
    Role,
    Snap,
    SnapChunk,
    SnapEnd,
    SnapshotChunkRecord,
    SnapshotRecord,
    TruncateRecord,
    UpToDate,
    Zxid,
    make_zxid,
)
from tests.sim.broken import roles_with

_T = TypeVar("_T")

# --- the disk and the application ---------------------------------------------------


class App:
    """The application: the txns delivered so far, in order."""

    def __init__(self, entries: list[tuple[Zxid, bytes]] | None = None) -> None:
        self.entries: list[tuple[Zxid, bytes]] = list(entries or [])

    @property
    def last_zxid(self) -> Zxid:
        return self.entries[-1][0] if self.entries else 0

    def serialize(self) -> bytes:
        return cbor2.dumps([[zxid, txn] for zxid, txn in self.entries])

    @staticmethod
    def deserialize(data: bytes) -> list[tuple[Zxid, bytes]]:
        return [(zxid, txn) for zxid, txn in cbor2.loads(data)]

    def apply(self, output: Output, durable: MemoryDurable) -> None:
        if output.install is not None:
            zxid = output.install
            assert durable.snapshot_zxid == zxid, "installed from the snapshot just made durable"
            self.entries = self.deserialize(durable.snapshot_data)
            assert self.last_zxid <= zxid
        for zxid, txn in output.deliver:
            assert zxid > self.last_zxid, "deliveries go forward"
            self.entries.append((zxid, txn))


@dataclass
class MemoryDurable:
    """An in-memory DurableState; ``write`` applies one record at once."""

    accepted_epoch: int = 0
    current_epoch: int = 0
    log: list[tuple[Zxid, bytes]] = field(default_factory=list)
    snapshot_zxid: Zxid = 0
    snapshot_data: bytes = field(default_factory=lambda: App().serialize())
    app: App | None = None  # whose state snapshot() returns; set by the node
    staged: bytearray | None = None  # a SNAP being received

    def write(self, record: Record) -> None:
        match record:
            case LogEntry(zxid=zxid, txn=txn):
                assert zxid > self.last_zxid()
                self.log.append((zxid, txn))
            case EpochRecord(accepted_epoch=accepted, current_epoch=current):
                if accepted is not None:
                    self.accepted_epoch = accepted
                if current is not None:
                    self.current_epoch = current
            case TruncateRecord(zxid=zxid):
                assert zxid >= self.snapshot_zxid
                self.log = [entry for entry in self.log if entry[0] <= zxid]
            case SnapshotChunkRecord(offset=offset, data=data):
                if offset == 0:
                    self.staged = bytearray()
                assert self.staged is not None and len(self.staged) == offset, "chunks in order"
                self.staged.extend(data)
            case SnapshotRecord(zxid=zxid, size=size, digest=digest):
                assert self.staged is not None and len(self.staged) == size
                assert hashlib.sha256(self.staged).digest() == digest
                self.log = []
                self.snapshot_zxid, self.snapshot_data = zxid, bytes(self.staged)
                self.staged = None

    def last_zxid(self) -> Zxid:
        return self.log[-1][0] if self.log else self.snapshot_zxid

    def entries_after(self, zxid: Zxid) -> list[tuple[Zxid, bytes]] | None:
        if zxid < self.snapshot_zxid:
            return None
        return [entry for entry in self.log if entry[0] > zxid]

    def contains(self, zxid: Zxid) -> bool:
        return zxid <= self.snapshot_zxid or any(entry[0] == zxid for entry in self.log)

    def snapshot(self) -> tuple[Zxid, Iterator[bytes]]:
        assert self.app is not None
        return self.app.last_zxid, iter([self.app.serialize()])

    def purge_through(self, zxid: Zxid) -> None:
        """Take a snapshot of the application at ``zxid`` and drop the log up to it."""
        assert self.app is not None and self.app.last_zxid >= zxid
        state = [entry for entry in self.app.entries if entry[0] <= zxid]
        self.snapshot_zxid, self.snapshot_data = zxid, App(state).serialize()
        self.log = [entry for entry in self.log if entry[0] > zxid]

    def recover_app(self) -> App:
        """What recovery builds: the snapshot, then every logged txn replayed."""
        return App(App.deserialize(self.snapshot_data) + self.log)

    def history(self) -> list[Zxid]:
        return [zxid for zxid, _ in self.log]


def config_for(me: int, voters: tuple[int, ...], **overrides: int) -> PeerConfig:
    return PeerConfig(server_id=me, voters=voters, **overrides)


# --- a deterministic cluster ----------------------------------------------------------


@dataclass
class Node:
    server_id: int
    durable: MemoryDurable
    peer: Peer
    app: App
    alive: bool = True
    disk_stalled: bool = False  # records wait in `unwritten` until the disk resumes
    unwritten: list[Record] = field(default_factory=list)
    roles: list[tuple[Role, int | None, int]] = field(default_factory=list)
    barriers: list[int] = field(default_factory=list)  # confirmed barrier ids


class Cluster:
    """N peers, instant ordered links, instant disks. ``pump`` runs to quiescence."""

    def __init__(
        self,
        size: int = 3,
        *,
        seed: int = 0,
        bugs: frozenset[str] = frozenset(),
        durables: dict[int, MemoryDurable] | None = None,
        **config: int,
    ) -> None:
        self.voters = tuple(range(1, size + 1))
        self.config = config
        self.bugs = bugs
        self._rng = random.Random(seed)
        self.network: deque[Envelope] = deque()
        self.cut: set[tuple[int, int]] = set()  # (source, target) links that drop everything
        self.nodes: dict[int, Node] = {}
        self.sent: list[Envelope] = []
        for server in self.voters:
            self.nodes[server] = self._start(server, (durables or {}).get(server) or MemoryDurable())
        self.pump()

    def _start(self, server: int, durable: MemoryDurable) -> Node:
        app = durable.recover_app()
        durable.app = app
        peer = Peer(
            config_for(server, self.voters, **self.config),
            durable,
            random.Random(self._rng.getrandbits(32)),
            roles=roles_with(self.bugs),
        )
        return Node(server_id=server, durable=durable, peer=peer, app=app)

    # --- running ------------------------------------------------------------------------

    def _drain(self, node: Node) -> bool:
        """Carry out one node's output; whether there was any."""
        did_something = False
        while node.alive:
            output = node.peer.take_output()
            if output != Output():
                did_something = True
                node.roles.extend((change.role, change.leader, change.epoch) for change in output.roles)
                node.barriers.extend(output.barriers)
                node.app.apply(output, node.durable)
                for envelope in output.send:
                    self.sent.append(envelope)
                    if (envelope.source, envelope.target) not in self.cut:
                        self.network.append(envelope)
                node.unwritten.extend(output.persist)
            if node.unwritten and not node.disk_stalled:
                did_something = True
                for record in node.unwritten:
                    node.durable.write(record)
                last = node.unwritten[-1].seq
                node.unwritten.clear()
                node.peer.persisted(last)
            elif output == Output():
                return did_something
        return did_something

    def pump(self, max_messages: int = 100_000) -> None:
        for _ in range(max_messages):
            progressed = False
            for node in self.nodes.values():
                progressed |= self._drain(node)
            if self.network:
                envelope = self.network.popleft()
                target = self.nodes[envelope.target]
                if target.alive and (envelope.source, envelope.target) not in self.cut:
                    target.peer.step(envelope)
                progressed = True
            if not progressed:
                return
        raise AssertionError("the cluster did not quiesce")

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            for node in self.nodes.values():
                if node.alive:
                    node.peer.tick()
            self.pump()

    def settle(self, *, ignore: tuple[int, ...] = (), max_ticks: int = 200) -> int:
        """Tick until one established leader and every live node ready; returns the leader."""
        for _ in range(max_ticks):
            leader = self.leader()
            if leader is not None and all(node.peer.is_ready for node in self.live() if node.server_id not in ignore):
                return leader
            self.tick()
        raise AssertionError(f"no stable leader within {max_ticks} ticks: {self.describe()}")

    # --- faults ---------------------------------------------------------------------------

    def kill(self, server: int) -> None:
        node = self.nodes[server]
        node.alive = False
        node.unwritten.clear()  # a crash loses what was not written
        self.network = deque(e for e in self.network if server not in (e.source, e.target))

    def restart(self, server: int) -> None:
        old = self.nodes[server]
        assert not old.alive
        self.nodes[server] = self._start(server, old.durable)
        self.pump()

    def isolate(self, server: int) -> None:
        for other in self.voters:
            if other != server:
                self.cut |= {(server, other), (other, server)}

    def heal(self) -> None:
        self.cut.clear()

    # --- looking --------------------------------------------------------------------------

    def live(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.alive]

    def leader(self) -> int | None:
        leaders = [node.server_id for node in self.live() if node.peer.is_established_leader]
        assert len(leaders) <= 1 or len({self.nodes[s].peer.epoch for s in leaders}) == len(leaders)
        return max(leaders, key=lambda server: self.nodes[server].peer.epoch) if leaders else None

    def propose(self, *txns: bytes) -> list[Zxid]:
        leader = self.leader()
        assert leader is not None
        zxids = [self.nodes[leader].peer.propose(txn) for txn in txns]
        self.pump()
        return zxids

    def describe(self) -> str:
        return "; ".join(
            f"{node.server_id}:{node.peer.role.name}"
            f"{'' if node.alive else '(dead)'} e{node.peer.epoch} ready={node.peer.is_ready}"
            for node in self.nodes.values()
        )

    def check_agreement(self) -> None:
        """Every application holds a prefix of the longest one; logs match on common zxids."""
        apps = sorted((node.app.entries for node in self.nodes.values()), key=len)
        longest = apps[-1]
        for entries in apps:
            assert entries == longest[: len(entries)], "applications diverge"


# --- driving one lone peer -------------------------------------------------------------


def envelope(source: int, target: int, message: Message) -> Envelope:
    return Envelope(source=source, target=target, message=message)


def persist_all(peer: Peer, output: Output, durable: MemoryDurable | None = None) -> None:
    """Write every record of ``output`` (to ``durable`` if given) and report it persisted."""
    if output.persist:
        if durable is not None:
            for record in output.persist:
                durable.write(record)
        peer.persisted(output.persist[-1].seq)


def sent(output: Output) -> list[Message]:
    return [envelope.message for envelope in output.send]


def of_type(output: Output, kind: type[_T]) -> list[_T]:
    return [envelope.message for envelope in output.send if isinstance(envelope.message, kind)]


def make_follower(
    me: int = 2,
    leader: int = 1,
    epoch: int = 3,
    *,
    voters: tuple[int, ...] = (1, 2, 3),
    durable: MemoryDurable | None = None,
    bugs: frozenset[str] = frozenset(),
) -> tuple[Peer, MemoryDurable, int]:
    """A peer FOLLOWING ``leader`` in ``epoch``, synchronised by an empty DIFF and up to date.

    Returns the peer, its disk and the handshake of its attempt.
    """
    durable = durable or MemoryDurable()
    durable.app = durable.recover_app()
    peer = Peer(config_for(me, voters), durable, random.Random(me), roles=roles_with(bugs))
    peer.take_output()
    other = next(server for server in voters if server not in (me, leader))
    settled = Notification(leader=leader, zxid=0, epoch=epoch - 1, election_round=1, state=Role.FOLLOWING)
    peer.step(envelope(other, me, settled))
    peer.step(envelope(leader, me, replace(settled, state=Role.LEADING)))
    assert peer.role is Role.FOLLOWING and peer.leader_id == leader
    output = peer.take_output()
    [info] = of_type(output, FollowerInfo)
    handshake = info.handshake
    peer.step(envelope(leader, me, NewEpoch(epoch=epoch, handshake=handshake)))
    persist_all(peer, peer.take_output(), durable)
    assert len(of_type(peer.take_output(), AckEpoch)) == 1
    last = peer.last_logged_zxid
    peer.step(envelope(leader, me, Diff(handshake=handshake, zxid=last)))
    peer.step(envelope(leader, me, NewLeader(epoch=epoch, zxid=last, handshake=handshake)))
    persist_all(peer, peer.take_output(), durable)
    assert of_type(peer.take_output(), AckNewLeader) == [AckNewLeader(epoch=epoch, handshake=handshake)]
    peer.step(envelope(leader, me, UpToDate(epoch=epoch, zxid=last, handshake=handshake)))
    output = peer.take_output()
    assert output.ready is True and peer.is_ready
    return peer, durable, handshake


def start_leading(
    me: int = 1,
    *,
    voters: tuple[int, ...] = (1, 2, 3),
    durable: MemoryDurable | None = None,
    delivered_zxid: Zxid | None = None,
    bugs: frozenset[str] = frozenset(),
    **config: int,
) -> tuple[Peer, MemoryDurable]:
    """A peer that won the election (a quorum voted for it) and starts discovery."""
    durable = durable or MemoryDurable()
    durable.app = durable.recover_app()
    if delivered_zxid is not None:  # the application holds less than the whole log
        durable.app.entries = [entry for entry in durable.app.entries if entry[0] <= delivered_zxid]
    peer = Peer(
        config_for(me, voters, **config),
        durable,
        random.Random(me),
        roles=roles_with(bugs),
        delivered_zxid=delivered_zxid,
    )
    peer.take_output()
    vote = Notification(
        leader=me,
        zxid=peer.last_logged_zxid,
        epoch=peer.current_epoch,
        election_round=1,
        state=Role.LOOKING,
    )
    for voter in [server for server in voters if server != me][: len(voters) // 2]:
        peer.step(envelope(voter, me, vote))
    peer.tick()  # finalize wait
    assert peer.role is Role.LEADING
    return peer, durable


def connect_follower(
    leader: Peer,
    durable: MemoryDurable,
    follower: int,
    *,
    last_zxid: Zxid = 0,
    accepted_epoch: int = 0,
    current_epoch: int = 0,
    delivered_zxid: Zxid = 0,
    handshake: int = 77,
    is_first_ack: bool = True,
) -> Output:
    """Play one follower's discovery against ``leader`` (writing the leader's records).

    Returns the leader's output after the follower's ACKEPOCH.
    """
    info = FollowerInfo(
        accepted_epoch=accepted_epoch, last_zxid=last_zxid, delivered_zxid=delivered_zxid, handshake=handshake
    )
    me = leader.server_id
    leader.step(envelope(follower, me, info))
    persist_all(leader, leader.take_output(), durable)  # the leader's acceptedEpoch, once a quorum connected
    leader.take_output()
    ack = AckEpoch(current_epoch=current_epoch, last_zxid=last_zxid, handshake=handshake, is_first_ack=is_first_ack)
    leader.step(envelope(follower, me, ack))
    output = leader.take_output()
    persist_all(leader, output, durable)  # the leader's currentEpoch
    return output


def make_leader(
    me: int = 1,
    *,
    voters: tuple[int, ...] = (1, 2, 3),
    followers: int = 1,
    durable: MemoryDurable | None = None,
    bugs: frozenset[str] = frozenset(),
    **config: int,
) -> tuple[Peer, MemoryDurable]:
    """A peer that leads an established epoch with ``followers`` synchronised followers (the next voters).

    The followers' logs are empty: they got the whole history by DIFF. Handshakes are 77.
    """
    peer, durable = start_leading(me, voters=voters, durable=durable, bugs=bugs, **config)
    synced = [server for server in voters if server != me][:followers]
    for follower in synced:
        connect_follower(peer, durable, follower, handshake=77)
    for follower in synced:
        peer.step(envelope(follower, me, AckNewLeader(epoch=peer.epoch, handshake=77)))
    while (output := peer.take_output()).persist:  # standalone: its own epoch records
        persist_all(peer, output, durable)
    assert peer.is_established_leader and peer.is_ready
    return peer, durable


def zxid(epoch: int, counter: int) -> Zxid:
    return make_zxid(epoch, counter)


def snap_messages(handshake: int, zxid: Zxid, data: bytes, chunk_bytes: int = 4) -> list[Snap | SnapChunk | SnapEnd]:
    """What a leader streams for a SNAP of ``data`` at ``zxid``."""
    chunks = [
        SnapChunk(handshake=handshake, offset=start, data=data[start : start + chunk_bytes])
        for start in range(0, len(data), chunk_bytes)
    ]
    end = SnapEnd(handshake=handshake, size=len(data), digest=hashlib.sha256(data).digest())
    return [Snap(handshake=handshake, zxid=zxid), *chunks, end]
