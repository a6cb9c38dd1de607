"""The sans-IO core of one server: the pipeline and the ZAB core wired together.

:class:`ServerCore` owns everything a server decides: the request
:class:`~coord.pipeline.Pipeline` (sessions, watches, the preparer and the tree) and
the ZAB core :class:`~coord.zab.peer.Peer`, the proposals this server ordered, the
syncs waiting for their quorum round, and the role changes between them. It does no
I/O and reads no clock: the trio shell (:mod:`coord.server.shell`) calls it with
inputs and carries out the :class:`CoreOutput` it returns; the whole-server
simulator can drive the same object with a simulated network, disk and clock.

Inputs: a client's handshake, request, sent bytes and close (by connection id);
a peer's message or lost link; a ZAB tick and a session tick (with the time);
"durable through record N"; a storage failure and the rejoin that follows it.

Outputs (:class:`CoreOutput`): frames to send per connection, connections to close
(after their frames) or abort (now), connections to read again, peer messages to
send, peer links to drop, records to persist (in order), whether a snapshot is due.

After every input the core *pumps*: it moves outputs between the pipeline and ZAB
until both are quiet. The rules it enforces there:

- A write is applied only when ZAB delivers it: committed and durable here
  (docs/correctness.md, rule 4).
- A sync of a client of the leader is answered only after the quorum round that
  confirms the leadership, and after the leader applied everything committed when
  the sync arrived; a follower's sync is answered through ZAB, which holds the
  answer until the follower delivered that far (docs/correctness.md, rule 8).
- A message that cannot be sent to one peer (over the peer frame limit) drops that
  peer's link only; ZAB syncs the peer again when it is back.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from coord.errors import ConnectionLossError, CoordError, NotLeaderError, StorageFullError
from coord.pipeline import Mode, Pipeline
from coord.protocol import ConnectRequest, ProtocolError, Request
from coord.transport import FRAME_BYTES_MAX_DEFAULT as PEER_FRAME_BYTES_MAX
from coord.tree import DataTree
from coord.txn import Txn, decode_txn, encode_txn
from coord.zab import Peer, PeerConfig, Role, decode_message, encode_message
from coord.zab.types import DurableState, Envelope, Record

log = logging.getLogger(__name__)

_PUMP_ROUNDS_MAX = 1_000

SNAPSHOT_MIN_BYTES = 4 << 20
"""The smallest snapshot threshold: a small tree is snapshotted after 4 MiB of txns."""

Sync = tuple[int, int, int]
"""A sync waiting for its quorum round: (origin server, session, xid)."""


class ServerDurable(DurableState, Protocol):
    """ZAB's view of the disk, plus what the server needs to install a SNAP."""

    def load_tree(self, zxid: int) -> DataTree:
        """The tree of the durable snapshot of ``zxid`` (read in pieces; the server
        calls this when a SNAP it received is installed, before it serves again).

        Raises:
            StorageError: no such snapshot, or it is damaged.
        """
        ...


@dataclass(slots=True)
class CoreOutput:
    """What the core asks the shell to do, since the last :meth:`ServerCore.take_output`."""

    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (connection, frame), in send order
    close: list[int] = field(default_factory=list)  # connections to close once their frames are sent
    abort: list[int] = field(default_factory=list)  # connections to close now, dropping what is unsent
    resume: list[int] = field(default_factory=list)  # paused connections to read again
    send: list[tuple[int, bytes]] = field(default_factory=list)  # (peer, encoded ZAB message)
    disconnect: list[tuple[int, str]] = field(default_factory=list)  # (peer, why): drop its links
    persist: list[Record] = field(default_factory=list)  # in seq order
    snapshot_due: bool = False
    serving_changed: bool = False  # :attr:`ServerCore.is_serving` changed


class ServerCore:
    """One server's decisions, without I/O. See the module docstring."""

    def __init__(
        self,
        pipeline: Pipeline,
        peer_config: PeerConfig,
        durable: ServerDurable,
        *,
        delivered_zxid: int,
        snapshot_every_txns: int,
        snapshot_every_bytes: int = 64 << 20,
        snapshot_bytes: int = 0,
        standalone: bool,
        rng: random.Random,
        peer_frame_bytes_max: int = PEER_FRAME_BYTES_MAX,
    ) -> None:
        """Args:
        pipeline: the request pipeline over the recovered tree (it starts OFFLINE).
        peer_config: the ZAB core's configuration.
        durable: the durable state ZAB reads and appends to (its records are written
            by the shell from :attr:`CoreOutput.persist`).
        delivered_zxid: the zxid the recovered tree holds.
        snapshot_every_txns: ask for a snapshot after this many applied txns,
        snapshot_every_bytes: or after this many bytes of them (a multi of 500 creates is one
            txn: counting txns alone let the log a restart replays grow without bound),
            or sooner, after an eighth of the last snapshot's size (see :meth:`snapshot_threshold`).
        snapshot_bytes: the size of the snapshot the state was recovered from (0: none).
        standalone: an ensemble of one (no peers).
        rng: randomness for the ZAB core (election jitter).
        peer_frame_bytes_max: the largest peer message the transport carries.
        """
        self.pipeline = pipeline
        self.server_id = peer_config.server_id
        self.is_standalone = standalone
        self._peer_config = peer_config
        self._rng = rng
        self._snapshot_every_txns = snapshot_every_txns
        self._snapshot_every_bytes = snapshot_every_bytes
        self._since_snapshot_bytes = 0
        self._snapshot_bytes = snapshot_bytes
        self._peer_frame_bytes_max = peer_frame_bytes_max
        self.zab = Peer(peer_config, durable, rng, delivered_zxid=delivered_zxid)
        self._durable = durable
        self._out = CoreOutput()
        self._since_snapshot = 0
        self._own_txns: dict[int, Txn] = {}  # proposals of this leader, by zxid, until delivered
        self._barriers: dict[int, tuple[Sync, int]] = {}  # ZAB barrier id -> (sync, commit zxid then)
        self._confirmed_syncs: list[tuple[Sync, int]] = []
        self._was_serving = False
        self._suspended = False  # between storage_failed and rejoin: ZAB is not fed
        self.now_ms = 0
        self.role_changes: list[str] = []

    # --- state ---------------------------------------------------------------------------

    @property
    def tree(self) -> DataTree:
        return self.pipeline.tree

    @property
    def is_serving(self) -> bool:
        """Whether this server serves clients (it leads, or follows an established leader)."""
        return self.zab.is_ready

    @property
    def role(self) -> str:
        """``standalone``, ``leader``, ``follower`` or ``looking``."""
        if not self.zab.is_ready:
            return "looking"
        if self.is_standalone:
            return "standalone"
        return "leader" if self.zab.role is Role.LEADING else "follower"

    def status(self) -> dict[str, Any]:
        status = self.pipeline.status()
        status["role"] = self.role
        status["epoch"] = self.zab.epoch
        status["leader"] = self.zab.leader_id
        return status

    def take_output(self) -> CoreOutput:
        out = self._out
        self._out = CoreOutput()
        return out

    # --- inputs: clients ----------------------------------------------------------------

    def open_client(self, conn_id: int, handshake: ConnectRequest, now_ms: int) -> None:
        self.now_ms = now_ms
        self.pipeline.open_connection(conn_id, handshake, now_ms)
        self._pump()

    def client_request(self, conn_id: int, xid: int, request: Request, now_ms: int, size: int) -> None:
        """One decoded request; call :meth:`flush` after a batch of them."""
        self.now_ms = now_ms
        self.pipeline.request(conn_id, xid, request, now_ms, size)

    def client_bad_request(self, conn_id: int, xid: int, error: CoordError) -> None:
        """A request whose xid could be read but not the rest: answered with ``error`` in its turn."""
        self.pipeline.refuse_request(conn_id, xid, error)

    def flush(self) -> None:
        """Carry out what a batch of :meth:`client_request` calls produced."""
        self._pump()

    def client_sent(self, conn_id: int, size: int, now_ms: int) -> None:
        self.now_ms = now_ms
        self.pipeline.sent(conn_id, size, now_ms)
        self._pump()

    def client_closed(self, conn_id: int) -> None:
        self.pipeline.close_connection(conn_id)
        self._pump()

    def wants_input(self, conn_id: int) -> bool:
        return self.pipeline.wants_input(conn_id)

    def has_connection(self, conn_id: int) -> bool:
        return self.pipeline.has_connection(conn_id)

    # --- inputs: peers, time, disk ------------------------------------------------------

    def start(self, now_ms: int) -> None:
        """Start the first election at once."""
        self.now_ms = now_ms
        self.zab.tick()
        self._pump()

    def peer_message(self, source: int, data: bytes, now_ms: int) -> None:
        """A frame from peer ``source``.

        Raises:
            ProtocolError: it is not a well-formed ZAB message (the transport then
                closes that link, and only it).
        """
        try:
            message = decode_message(data)
        except ValueError as error:
            raise ProtocolError(f"malformed ZAB message: {error}") from None
        self.now_ms = now_ms
        if self._suspended:
            return  # dropped, as a lost message: ZAB recovers from lost messages
        self.zab.step(Envelope(source=source, target=self.server_id, message=message))
        self._pump()

    def peer_link_down(self, source: int, now_ms: int) -> None:
        self.now_ms = now_ms
        if self._suspended:
            return
        self.zab.link_down(source)
        self._pump()

    def zab_tick(self, now_ms: int) -> None:
        self.now_ms = now_ms
        if self._suspended:
            return
        self.zab.tick()
        self._pump()

    def session_tick(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.pipeline.tick(now_ms)
        self._pump()

    def persisted(self, through_seq: int, now_ms: int) -> None:
        """Every record up to ``through_seq`` given in :attr:`CoreOutput.persist` is durable."""
        self.now_ms = now_ms
        if self._suspended:
            return
        self.zab.persisted(through_seq)
        self._pump()
        if self.zab.is_ready:
            self.pipeline.set_offline_error(None)  # serving again: writes get their own answers

    def storage_failed(self, error: CoordError) -> None:
        """The disk refused a write: nothing after the last durable record was written.

        ZAB's in-memory state assumed those records would be durable, so it must be
        rebuilt from what really is (docs/correctness.md, rule 4): the shell reopens the log if it needs to,
        then calls :meth:`rejoin`. Everything in flight fails with ``error``; clients
        stay connected for reads. A full disk is remembered until this server serves
        again, so writes meanwhile get it too, not "no leader; retry" (docs/storage.md).
        """
        self._suspended = True  # until rejoin: the old ZAB core's durable state is gone
        self._forget_in_flight()
        self.pipeline.go_offline(error, disconnect=False)
        self.pipeline.set_offline_error(error if isinstance(error, StorageFullError) else None)
        self._pump_pipeline_only()

    def rejoin(self, durable: ServerDurable, now_ms: int) -> None:
        """Start a new ZAB core over ``durable`` (after :meth:`storage_failed`); it delivers
        only what the tree does not have yet. A standalone server re-elects itself at once."""
        self.now_ms = now_ms
        self._suspended = False
        self._durable = durable
        self.zab = Peer(self._peer_config, durable, self._rng, delivered_zxid=self.pipeline.tree.last_zxid)
        self._pump()

    def expire_session(self, session_id: int, now_ms: int) -> bool:
        """Expire ``session_id`` now, as if it had timed out (leader only)."""
        self.now_ms = now_ms
        expired = self.pipeline.expire_session(session_id, now_ms)
        self._pump()
        return expired

    def snapshot_taken(self) -> None:
        self._since_snapshot = 0
        self._since_snapshot_bytes = 0

    def snapshot_written(self, size: int) -> None:
        """The snapshot asked for is durable, ``size`` bytes (it sets the next threshold)."""
        self._snapshot_bytes = size

    @property
    def snapshot_threshold(self) -> int:
        """Bytes of applied txns after which a snapshot is due.

        A restart loads the newest snapshot and replays the log after it, and a byte of
        log costs about five times as much to replay as a byte of snapshot to load
        (measured at a million znodes: 40 against 8 ms per MB). So the log may grow to
        an eighth of the last snapshot's size (at least SNAPSHOT_MIN_BYTES, at most
        ``snapshot_every_bytes``): a restart then costs at most about 1.6 loads of the
        tree at any size, and each snapshot is paid for by writes of an eighth of its
        size, about ZooKeeper's ratio for single creates (100,000 txns of ~150 bytes
        between snapshots of a 150 MB tree). ZooKeeper counts txns only, so a restart
        after many large multis replays a log as long as the tree.
        """
        return min(self._snapshot_every_bytes, max(SNAPSHOT_MIN_BYTES, self._snapshot_bytes // 8))

    # --- the pump -----------------------------------------------------------------------

    def _forget_in_flight(self) -> None:
        self._own_txns.clear()
        self._barriers.clear()
        self._confirmed_syncs.clear()

    def _take_pipeline_output(self) -> bool:
        """Move the pipeline's output into ZAB and the core's output; whether ZAB got work."""
        out = self.pipeline.take_output()
        mine = self._out
        busy = False
        if out.frames:
            mine.frames += out.frames
        mine.close += out.close
        mine.abort += out.abort
        mine.resume += out.resume
        for source in out.bad_peers:
            mine.disconnect.append((source, "it sent a malformed application message"))
        zab = self.zab
        for txn in out.proposals:
            busy = True
            # The preparer numbered the txn; ZAB refuses a number that does not extend its log.
            try:
                zab.propose(encode_txn(txn), zxid=txn.zxid)
            except NotLeaderError:
                # The zxid counter ran out: ZAB stepped down, and the role change below
                # answers every request in flight (this one too) with a connection loss.
                break
            self._own_txns[txn.zxid] = txn
        for payload in out.to_leader:
            busy = True
            zab.app_to_leader(payload)
        for target, payload in out.to_followers:
            busy = True
            zab.send_app(target, payload)
        for barrier in out.barriers:
            busy = True
            # Remember what was committed when the sync arrived: the answer must
            # reflect at least that (every write acknowledged before it).
            self._barriers[zab.barrier()] = (barrier, zab.last_committed_zxid)
        return busy

    def _pump_pipeline_only(self) -> None:
        """After a storage failure, before :meth:`rejoin`: only the pipeline's answers go out."""
        out = self.pipeline.take_output()
        self._out.frames += out.frames
        self._out.close += out.close
        self._out.abort += out.abort
        self._out.resume += out.resume

    def _pump(self) -> None:
        """Move outputs between the pipeline and ZAB until both are quiet."""
        if self._suspended:
            self._pump_pipeline_only()
            return
        pipeline = self.pipeline
        for _ in range(_PUMP_ROUNDS_MAX):
            busy = self._take_pipeline_output()
            zab = self.zab
            zout = zab.take_output()
            if zout.send:
                busy = self._send_to_peers(zout.send) or busy
            if zout.persist:
                self._out.persist += zout.persist
            for target in zout.disconnect:
                self._out.disconnect.append((target, "the leader dropped this follower; it must sync again"))
            if zout.install is not None:
                busy = True
                zxid = zout.install
                # The SNAP is durable (its digest checked as it was staged and installed);
                # the tree is read back from it in pieces.
                tree = self._durable.load_tree(zxid)
                if tree.last_zxid != zxid:
                    raise RuntimeError(f"a snapshot sent as {zxid:#x} holds {tree.last_zxid:#x}")
                pipeline.install(tree)
            if zout.deliver:
                busy = True
                own = self._own_txns
                txns = [own.pop(zxid) if zxid in own else decode_txn(data) for zxid, data in zout.deliver]
                pipeline.committed(txns)
                self._since_snapshot += len(txns)
                self._since_snapshot_bytes += sum(len(data) for _, data in zout.deliver)
                if (
                    self._since_snapshot >= self._snapshot_every_txns
                    or self._since_snapshot_bytes >= self.snapshot_threshold
                ):
                    self._out.snapshot_due = True
            for source, payload in zout.app:
                busy = True
                if zab.role is Role.LEADING:
                    pipeline.from_follower(source, payload, self.now_ms)
                else:
                    pipeline.from_leader(source, payload)
            for barrier_id in zout.barriers:
                busy = True
                pending = self._barriers.pop(barrier_id, None)
                if pending is not None:
                    self._confirmed_syncs.append(pending)
            if self._confirmed_syncs:
                busy = self._release_syncs() or busy
            if zout.ready is not None or zout.roles:
                busy = True
                self._role_changed(zout.ready)
            if not busy:
                break
        else:
            raise RuntimeError("the pipeline and ZAB did not quiesce")  # pragma: no cover
        if self.zab.is_ready != self._was_serving:
            self._was_serving = self.zab.is_ready
            self._out.serving_changed = True

    def _send_to_peers(self, envelopes: list[Envelope]) -> bool:
        """Encode ZAB's messages for the shell to send. One that cannot be encoded or is
        over the peer frame limit drops that peer's link only: the ZAB core treats the
        peer as lost and syncs it again when it is back. Returns whether one was dropped."""
        dropped = False
        send = self._out.send
        for envelope in envelopes:
            try:
                data = encode_message(envelope.message)
            except (ValueError, TypeError) as error:
                reason = f"a {type(envelope.message).__name__} could not be encoded: {error}"
            else:
                if len(data) <= self._peer_frame_bytes_max:
                    send.append((envelope.target, data))
                    continue
                reason = (
                    f"a {type(envelope.message).__name__} of {len(data)} bytes is over the peer frame limit "
                    f"of {self._peer_frame_bytes_max}"
                )
            log.error("server %d: %s; dropping the link to server %d", self.server_id, reason, envelope.target)
            self._out.disconnect.append((envelope.target, reason))
            self.zab.link_down(envelope.target)
            dropped = True
        return dropped

    def _release_syncs(self) -> bool:
        """Answer the syncs whose quorum round is done, once this server applied what
        was committed when each arrived.

        A follower's sync is answered through ZAB, which holds the answer on the
        follower until it delivered that far. A sync of the leader's own client must
        wait here: the leader can count a write committed (a quorum of followers
        acknowledged it, and a follower may already have answered its client) before
        its own disk write is done and the write applied to its tree.
        """
        applied = self.pipeline.tree.last_zxid
        released = False
        waiting: list[tuple[Sync, int]] = []
        for barrier, commit_zxid in self._confirmed_syncs:
            origin = barrier[0]
            if origin == self.server_id and applied < commit_zxid:
                waiting.append((barrier, commit_zxid))
            else:
                self.pipeline.barrier_done(*barrier)
                released = True
        self._confirmed_syncs = waiting
        return released

    def _role_changed(self, ready: bool | None) -> None:
        zab = self.zab
        pipeline = self.pipeline
        if ready is False or (not zab.is_ready and pipeline.mode is not Mode.OFFLINE):
            self._forget_in_flight()
            pipeline.go_offline(ConnectionLossError("this server lost its leader; reconnect"))
            self.role_changes.append("looking")
            log.info("server %d: not serving (looking for a leader)", self.server_id)
        elif zab.is_ready:
            if zab.role is Role.LEADING and pipeline.mode is not Mode.LEADER:
                pipeline.become_leader(zab.epoch, self.now_ms)
            elif zab.role is Role.FOLLOWING and pipeline.mode is not Mode.FOLLOWER:
                pipeline.become_follower(self.now_ms)
            else:
                return
            self.role_changes.append(self.role)
            log.info("server %d: %s in epoch %d", self.server_id, self.role, zab.epoch)


__all__ = ["CoreOutput", "ServerCore", "Sync"]
