"""A seeded whole-server simulator: N real :class:`~coord.server.core.ServerCore`\\ s and their clients.

Where :mod:`tests.sim.sim` drives bare ZAB cores with a toy application, this drives
the whole server as the trio shell (:mod:`coord.server.shell`) does: the request
pipeline, sessions, watches, the tree and ZAB, with real encoded client frames. The
bug the ZAB-only simulator could not see (a leader answering its own client's
``sync`` before applying its commit point) lived here.

Theory of operation
-------------------
One priority queue of events ordered by (time, sequence number); time is integer
milliseconds; one :meth:`ServerSimulation.step` handles events until one did
something. Every random choice comes from ``random.Random(seed)`` (the options from a
generator derived from the seed), so a seed replays exactly.

Per server (:class:`SimServer`) the simulator plays the shell:

- **peers**: :class:`CoreOutput.send <coord.server.core.CoreOutput>` goes on the FIFO
  links of :mod:`tests.sim.network` (delays, breaks with late stale messages,
  partitions); a delivered message is ``peer_message``; a broken link is
  ``peer_link_down`` at both ends (a partition is a black hole: nobody is told);
- **disk** (:class:`TreeDisk`): ``persist`` records join a write queue; a flush event
  makes a prefix durable and reports ``persisted``; ``snapshot_due`` takes an image of
  the tree and writes it a little later, purging the log as the shell does. A crash
  loses the queue (or keeps a random prefix); a restart builds a new core over the
  newest durable snapshot only (as :func:`coord.recovery.recover` with ``replay=False``:
  the log after it may hold proposals a new leader truncates);
- **clock**: each server's ZAB ticker and session ticker run at its own slightly
  skewed period; its clock is global time plus an offset that clock jumps increase;
- **clients** (:class:`Client`): each holds a session through one connection at a
  time, sends real encoded requests (creates incl. ephemeral and sequential, sets and
  deletes with versions, multis, gets and exists with watches, children, sync then
  get, a read pipelined behind a write, pings), reads every frame the server sends
  (reporting the bytes with ``client_sent``), reconnects elsewhere with its session id,
  password and last zxid when its connection closes or its server goes quiet,
  re-registers its watches with ``SetWatches``, and now and then closes its session or
  goes silent until it expires.

Faults are *swarm* chosen: each seed switches whole kinds on or off
(:data:`FAULT_KINDS`). :meth:`ServerSimulation.heal_and_settle` ends them and requires
progress: one leader that everyone follows, a fresh write acknowledged, equal trees.

The invariants are in :mod:`tests.sim.server_checks` (checked after every step).

Model notes
-----------
- A partition is a black hole (as in :mod:`tests.sim.sim`): messages across it are
  lost and nobody is told; a link break loses what is in flight (a few messages turn
  up late) and both ends get ``peer_link_down``. One-way partitions are off unless
  ``from_seed(..., one_way=True)`` (finding S2).
- A disk stall (part of ``disk_delays``) holds one server's flushes for up to 400 ms.
- A clock jump moves one server's clock forward by up to 1.5 s, then fires its ZAB
  ticker one to three times and its session ticker once (trio's sleeping tickers
  wake); session expiry is checked on the expiring leader's own clock.
- A client that another client told of a write (out of band) syncs and reads that
  path next: the pattern ``sync`` exists for, and how a leader that answers ``sync``
  too early is caught.

Left out: storage errors (``storage_failed`` / ``rejoin``), process pauses, standalone
servers, TTL and container nodes, persistent and recursive watches and
``remove_watches``, backpressure limits (the defaults are never reached), malformed
frames, and exist watches across a reconnect (ZooKeeper's ``setWatches`` misses a node
created and deleted meanwhile too).
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coord.errors import NoNodeError, SessionExpiredError
from coord.pipeline import Mode, Pipeline, PipelineConfig
from coord.protocol import (
    WATCH_XID,
    CheckRequest,
    CloseSessionRequest,
    ConnectRequest,
    ConnectResponse,
    CreateMode,
    CreateRequest,
    DeleteRequest,
    ExistsRequest,
    GetChildrenRequest,
    GetDataRequest,
    MultiRequest,
    PingRequest,
    Request,
    SetDataRequest,
    SetWatchesRequest,
    SyncRequest,
    decode_body,
    decode_event,
    decode_handshake_reply,
    decode_reply,
    decode_request,
    encode_frame,
    encode_request,
)
from coord.server.core import ServerCore
from coord.tree import DataTree
from coord.txn import CloseSessionTxn, Txn
from coord.zab import PeerConfig, decode_message
from coord.zab.types import Envelope, EpochRecord, LogEntry, Record, SnapshotRecord, TruncateRecord, Zxid
from coord.zxid import log_follows
from tests.sim.network import InFlight, Network
from tests.sim.server_checks import FIRED_BY, FIRES, ServerChecker, Stint
from tests.sim.trace import format_message, zxid_str

TICK_MS = 100  # the ZAB tick (PeerConfig limits are in ticks)
SESSION_TICK_MS = 100  # the pipeline's tick_ms and the session ticker's period
WALL_OFFSET_MS = 1_700_000_000_000  # txn times are wall-clock-like
SNAPSHOTS_RETAINED = 2
STALE_LATE_MS = 300  # the latest a message that survived a break or crash arrives after it
KEYS = 8  # shared znodes /k0 .. /k7

FAULT_KINDS = (
    "delays",
    "link_breaks",
    "partitions",
    "crashes",
    "crash_all",
    "disk_delays",
    "clock_jumps",
    "client_disconnects",
    "session_expiry",
)
"""Kinds of fault a seed switches on or off as a whole (swarm testing)."""

EVENT_FAULTS = (
    "disk_delays",
    "link_breaks",
    "partitions",
    "crashes",
    "crash_all",
    "clock_jumps",
    "client_disconnects",
    "session_expiry",
)
"""The kinds that happen as events (``delays`` shapes every message; ``disk_delays`` every flush, and
stalls one server's disk now and then)."""


class InvariantError(AssertionError):
    """An invariant failed; the message names the seed, the fault kinds and ends with the trace tail."""


class LivenessError(AssertionError):
    """After healing, the ensemble did not make progress within the bound."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSimOptions:
    """Everything that shapes one run. :meth:`from_seed` picks a mix from a seed."""

    seed: int
    servers: int = 3
    faults: frozenset[str] = frozenset()
    clients: int = 4
    delay_max: int = 3  # peer messages: 1..delay_max ms
    slow_prob: float = 0.0  # chance a peer message takes up to slow_max instead
    slow_max: int = 300
    stale_prob: float = 0.0  # chance a message in flight at a link break still arrives, late
    client_delay_max: int = 3
    disk_max: tuple[int, ...] = ()  # per server: a flush happens 1..disk_max ms after the write is queued (default 3)
    partial_flush_prob: float = 0.0
    crash_keep_prob: float = 0.0  # at a crash, a random prefix of the write queue made it
    fault_mean: int = 800  # mean ms between fault events
    op_mean: int = 30  # mean think time of a client between operations
    one_way_prob: float = 0.0  # chance a partition is one-way
    snapshot_every_txns: int = 1_000_000
    session_timeouts: tuple[int, ...] = (600, 1_000, 2_000)
    clock_skew: float = 0.05
    max_down: int = 1  # crashes leave at least servers - max_down up (crash_all ignores it)
    init_limit_ticks: int = 10
    sync_limit_ticks: int = 4

    @classmethod
    def from_seed(cls, seed: int, servers: int = 3, *, one_way: bool = True) -> ServerSimOptions:
        """Pick a fault mix from ``seed``: each kind of :data:`FAULT_KINDS` on with probability 1/2.

        ``one_way``: partitions may also be one-way (on by default, since findings S2 and
        S3 in tests/sim/SERVER_FINDINGS.md were fixed).
        """
        rng = random.Random(f"server-options/{seed}/{servers}")
        faults = frozenset(kind for kind in FAULT_KINDS if rng.random() < 0.5)
        delays = "delays" in faults
        one_way_prob = rng.choice((0.3, 0.6))  # drawn either way: one_way=True is the same mix plus one-way cuts
        disk = "disk_delays" in faults
        return cls(
            seed=seed,
            servers=servers,
            faults=faults,
            clients=rng.choice((2, 4, 6, 8)),
            delay_max=rng.choice((5, 20, 50)) if delays else 3,
            slow_prob=rng.choice((0.0, 0.01, 0.05)) if delays else 0.0,
            stale_prob=rng.choice((0.0, 0.05)) if "link_breaks" in faults else 0.0,
            client_delay_max=rng.choice((5, 20, 40)) if delays else 3,
            disk_max=tuple(rng.choice((5, 20, 60, 150)) for _ in range(servers)) if disk else (),
            partial_flush_prob=rng.choice((0.0, 0.3)) if disk else 0.0,
            crash_keep_prob=rng.choice((0.0, 0.3, 0.7)),
            fault_mean=rng.choice((100, 250, 500)),
            op_mean=rng.choice((10, 30, 80)),
            one_way_prob=one_way_prob if one_way else 0.0,
            snapshot_every_txns=rng.choice((5, 20, 100, 1_000_000)),
            clock_skew=rng.choice((0.0, 0.05, 0.1)),
            max_down=(servers - 1) // 2,
        )

    def describe(self) -> str:
        """One line for failure reports."""
        faults = ",".join(kind for kind in FAULT_KINDS if kind in self.faults) or "none"
        return (
            f"seed={self.seed} servers={self.servers} faults=[{faults}] clients={self.clients} "
            f"delay<={self.delay_max} slow={self.slow_prob} stale={self.stale_prob} client_delay<="
            f"{self.client_delay_max} disk<={list(self.disk_max) or 3} partial={self.partial_flush_prob} "
            f"keep={self.crash_keep_prob} fault_mean={self.fault_mean} op_mean={self.op_mean} "
            f"one_way={self.one_way_prob} snapshot_every={self.snapshot_every_txns} skew={self.clock_skew}"
        )


# --- the disk -------------------------------------------------------------------------------


class TreeDisk:
    """One server's durable state (epochs, tree snapshots, the txn log) and its write queue.

    Implements :class:`coord.zab.types.DurableState` over the durable state only, as
    :class:`coord.durable.LogDurableState` does over LMDB; ``snapshot()`` is the
    server's *current* tree. Records are applied as :func:`coord.durable.write_records`
    does. Problems (an append that does not follow, epochs going back, a truncation below
    the log's base, a log that recovery would refuse) are collected for the checker.
    """

    def __init__(self, server_id: int) -> None:
        self.server_id = server_id
        self.accepted_epoch = 0
        self.current_epoch = 0
        self.snapshots: list[tuple[Zxid, bytes]] = []  # (zxid, image), oldest first
        self.log: list[tuple[Zxid, bytes]] = []
        self.log_zxids: list[Zxid] = []
        self.log_index: dict[Zxid, bytes] = {}
        self.base: Zxid = 0  # entries at or before it were purged (log.base_zxid)
        self.pending: list[Record] = []
        self.loaded_zxid: Zxid = 0  # the snapshot the running core's tree was loaded from
        self.current_tree: Callable[[], DataTree] | None = None
        self.problems: list[str] = []

    # --- DurableState ---------------------------------------------------------------

    def last_zxid(self) -> Zxid:
        top = self.log_zxids[-1] if self.log_zxids else 0
        return max(top, self._base(), self.loaded_zxid)

    def _base(self) -> Zxid:
        return max(self.base, self.loaded_zxid if not self.log_zxids else 0)

    def entries_after(self, zxid: Zxid) -> list[tuple[Zxid, bytes]] | None:
        if not self.log_zxids:
            return [] if zxid >= self.last_zxid() else None
        if zxid < self._base():
            return None
        return self.log[bisect.bisect_right(self.log_zxids, zxid) :]

    def contains(self, zxid: Zxid) -> bool:
        if zxid == 0 or zxid == self.loaded_zxid or zxid == self._base():
            return True
        return zxid in self.log_index

    def applied_zxid(self) -> Zxid:
        return self.loaded_zxid

    def snapshot(self) -> tuple[Zxid, bytes]:
        assert self.current_tree is not None
        tree = self.current_tree()
        return tree.last_zxid, DataTree.serialize_image(tree.image())

    # --- the write queue --------------------------------------------------------------

    def append(self, records: list[Record]) -> None:
        if records and self.pending and records[0].seq <= self.pending[-1].seq:
            self.problems.append(f"s{self.server_id}: persist seq {records[0].seq} not after {self.pending[-1].seq}")
        self.pending.extend(records)

    def flush(self, count: int) -> int:
        """Make the first ``count`` queued records durable; returns the last one's seq."""
        batch, self.pending = self.pending[:count], self.pending[count:]
        for record in batch:
            self._apply(record)
        return batch[-1].seq

    def crash(self, keep: int) -> None:
        keep = min(keep, len(self.pending))
        if keep:
            self.flush(keep)
        self.pending = []

    def _truncate_after(self, zxid: Zxid) -> None:
        keep = bisect.bisect_right(self.log_zxids, zxid)
        for gone, _ in self.log[keep:]:
            del self.log_index[gone]
        del self.log[keep:]
        del self.log_zxids[keep:]

    def _purge_through(self, zxid: Zxid) -> None:
        cut = bisect.bisect_right(self.log_zxids, zxid)
        for gone, _ in self.log[:cut]:
            del self.log_index[gone]
        del self.log[:cut]
        del self.log_zxids[:cut]
        self.base = max(self.base, zxid)

    def _apply(self, record: Record) -> None:
        sid = self.server_id
        match record:
            case LogEntry(zxid=zxid, txn=txn):
                last = self.log_zxids[-1] if self.log_zxids else self.base
                if zxid <= last:
                    self.problems.append(f"s{sid}: append {zxid_str(zxid)} not after {zxid_str(last)}")
                elif self.log_zxids and not log_follows(last, zxid):
                    self.problems.append(f"s{sid}: gap in the log: {zxid_str(zxid)} after {zxid_str(last)}")
                self.log.append((zxid, txn))
                self.log_zxids.append(zxid)
                self.log_index[zxid] = txn
            case EpochRecord(accepted_epoch=accepted, current_epoch=current):
                if accepted is not None:
                    if accepted < self.accepted_epoch:
                        self.problems.append(f"s{sid}: acceptedEpoch {self.accepted_epoch} -> {accepted}")
                    self.accepted_epoch = accepted
                if current is not None:
                    if current < self.current_epoch:
                        self.problems.append(f"s{sid}: currentEpoch {self.current_epoch} -> {current}")
                    self.current_epoch = current
            case TruncateRecord(zxid=zxid):
                if zxid < self.base:
                    self.problems.append(f"s{sid}: truncate to {zxid_str(zxid)} below the base {zxid_str(self.base)}")
                self._truncate_after(zxid)
            case SnapshotRecord(zxid=zxid, data=data):
                self._store_snapshot(zxid, data)
                top = self.log_zxids[-1] if self.log_zxids else self.base
                self._truncate_after(max(self.base, min(zxid, top)))
                self._purge_through(zxid)
            case _:
                raise AssertionError(f"unknown record {record!r}")

    def _store_snapshot(self, zxid: Zxid, data: bytes) -> None:
        self.snapshots = [item for item in self.snapshots if item[0] != zxid]
        self.snapshots.append((zxid, data))
        self.snapshots.sort(key=lambda item: item[0])

    def write_snapshot(self, zxid: Zxid, data: bytes) -> None:
        """The shell's periodic snapshot: write it, keep the newest few, purge the log they cover."""
        self._store_snapshot(zxid, data)
        del self.snapshots[:-SNAPSHOTS_RETAINED]
        oldest = self.snapshots[0][0]
        top = self.log_zxids[-1] if self.log_zxids else self.base
        self._purge_through(min(oldest, top))

    def recover(self) -> DataTree:
        """The tree a restarted server starts from: the newest snapshot (checked as recovery does)."""
        if self.snapshots:
            zxid, data = self.snapshots[-1]
            tree = DataTree.from_bytes(data)
            if tree.last_zxid != zxid:
                self.problems.append(f"s{self.server_id}: snapshot {zxid_str(zxid)} holds {zxid_str(tree.last_zxid)}")
        else:
            tree = DataTree()
        zxid = tree.last_zxid
        if self.base > zxid:
            self.problems.append(
                f"s{self.server_id}: the log was purged through {zxid_str(self.base)}, no snapshot reaches it "
                f"(newest {zxid_str(zxid)}): recovery would refuse"
            )
        previous = zxid
        for entry in self.log_zxids[bisect.bisect_right(self.log_zxids, zxid) :]:
            if previous and not log_follows(previous, entry):
                self.problems.append(
                    f"s{self.server_id}: gap in the log after the snapshot: {zxid_str(entry)} after "
                    f"{zxid_str(previous)}: recovery would refuse"
                )
                break
            previous = entry
        self.loaded_zxid = zxid
        return tree

    def describe(self) -> str:
        snaps = ",".join(zxid_str(zxid) for zxid, _ in self.snapshots) or "-"
        top = zxid_str(self.log_zxids[-1]) if self.log_zxids else "-"
        pending = f" pending={len(self.pending)}" if self.pending else ""
        return (
            f"acc={self.accepted_epoch} cur={self.current_epoch} snaps=[{snaps}] base={zxid_str(self.base)} "
            f"log={len(self.log)}..{top}{pending}"
        )


# --- the recording pipeline --------------------------------------------------------------------


class RecordingPipeline(Pipeline):
    """The production pipeline, telling the checker what it applies and which sessions it expires."""

    def __init__(self, *args: Any, sim: ServerSimulation, sid: int, **kwargs: Any) -> None:
        self._sim = sim
        self._sid = sid
        super().__init__(*args, **kwargs)

    def committed(self, txns: list[Txn]) -> None:
        self._sim.checker.on_apply(self._sid, self.tree.last_zxid, txns)
        super().committed(txns)

    def _propose(self, txn: Txn) -> None:
        body = txn.body
        if type(body) is CloseSessionTxn and txn.session_id == 0:
            self._sim.on_expire_decision(self._sid, body.session_id)
        super()._propose(txn)


# --- servers, connections, clients ---------------------------------------------------------------


@dataclass(slots=True, eq=False)
class SimServer:
    """One simulated server: its disk (outlives crashes), its clock, its running core."""

    id: int
    disk: TreeDisk
    zab_period: int
    session_period: int
    disk_max: int
    core: ServerCore | None = None
    incarnation: int = 0
    offset: int = 0  # local clock = global time + offset
    jump_indices: list[int] = field(default_factory=lambda: [0])  # global numbers of this server's clock jumps
    offset_values: list[int] = field(default_factory=lambda: [0])  # its offset after each
    flush_scheduled: bool = False
    stalled_until: int = 0  # its disk writes nothing before this (an fsync stall)
    snapshot_busy: bool = False
    conns: dict[int, Conn] = field(default_factory=dict)
    seen_tree: DataTree | None = None
    seen_zxid: int = -1
    stint: Stint | None = None
    roles_seen: int = 0  # len(core.role_changes) when last observed
    mode: Mode = Mode.OFFLINE
    leader_since: tuple[int, int, int] = (0, 0, 0)  # (time, order, clock jumps) its pipeline became leader

    @property
    def is_up(self) -> bool:
        return self.core is not None


@dataclass(slots=True, eq=False)
class Conn:
    """A client connection: two FIFO byte streams and who still holds which end."""

    id: int
    client: Client
    sid: int
    incarnation: int
    opened_at: int
    answered: bool = False  # the client got the handshake answer
    server_open: bool = False  # the server's core has it (open_client called, not closed since)
    closing: bool = False  # the server asked to close it once its frames are sent
    s2c_cut: bool = False  # frames to the client are lost from now on
    c2s_cut: bool = False
    s2c_last: int = 0
    c2s_last: int = 0
    inbound: deque[tuple[int, Request, int]] = field(default_factory=deque)


@dataclass(slots=True)
class Pending:
    """A request sent and not answered yet."""

    xid: int
    request: Request
    what: str
    required: int | None = None  # synced_get: the zxid the read must reach; setwatches: the relative zxid
    then: Request | None = None  # sync: the get to send once it is answered


@dataclass(slots=True, eq=False)
class Client:
    """A simulated client: one session at a time, one connection at a time."""

    id: int
    requested_timeout: int
    session_id: int = 0
    password: bytes = b""
    timeout: int = 0
    last_zxid: int = 0  # the newest zxid seen in a reply or event
    conn: Conn | None = None
    xid: int = 0
    pending: deque[Pending] = field(default_factory=deque)
    watches: dict[str, dict[str, int]] = field(default_factory=dict)  # path -> kind -> registration zxid
    replaying: bool = False  # a SetWatches is in flight: events before its reply are replays
    versions: dict[str, int] = field(default_factory=dict)
    ephemerals: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)  # the last children of /q seen
    last_sent: int = 0
    last_heard: int = 0
    next_op_at: int = 0
    silent_until: int = 0
    wake_at: int = -1
    wake_token: int = 0
    counter: int = 0
    prefer: int | None = None  # the server to connect to next (None: any)
    script: deque[Request] = field(default_factory=deque)  # scripted ops instead of random ones
    acked: list[int] = field(default_factory=list)  # zxids of this client's acknowledged writes
    sessions: int = 0
    hint: str | None = None  # another client told it of a write to this path: sync, then read it
    write_share: float = 0.5  # the share of its operations that write


# Event kinds.
PEER, ZTICK, STICK, FLUSH, SNAP_START, SNAP_WRITE, C2S, S2C, RESET, WAKE, FAULT, RESTART, LINK_UP, HEAL = range(14)
HANDSHAKE = "hs"
EOF = "eof"


class ServerSimulation:
    """N servers and their clients, one seed. See the module docstring."""

    def __init__(
        self,
        options: ServerSimOptions,
        core_class: type[ServerCore] = ServerCore,
        *,
        known_findings: frozenset[str] = frozenset(),
    ) -> None:
        """Args:
        options: the run's options (:meth:`ServerSimOptions.from_seed`).
        core_class: the server core (a deliberately broken subclass, in tests).
        known_findings: open findings in the core that are tolerated and counted
            (``checker.findings``) instead of failing the run; empty: strict.
        """
        self.options = options
        self.core_class = core_class
        self.known_findings = known_findings
        self.run_steps: int | None = None  # the length of the run (for the replay line of reports)
        self.rng = random.Random(options.seed)
        self.ids = list(range(1, options.servers + 1))
        self.now = 0
        self.steps = 0
        self._seq = 0
        self._events: list[tuple[int, int, int, Any]] = []
        self._trace: list[tuple[int, str, tuple[Any, ...]]] = []
        self.network = Network(self.ids)
        self.session_tick_ms = SESSION_TICK_MS
        self.servers: dict[int, SimServer] = {}
        skew = options.clock_skew
        for sid in self.ids:
            zab_period = max(1, round(TICK_MS * (1 + self.rng.uniform(-skew, skew))))
            session_period = max(1, round(SESSION_TICK_MS * (1 + self.rng.uniform(-skew, skew))))
            disk_max = options.disk_max[sid - 1] if options.disk_max else 3
            self.servers[sid] = SimServer(sid, TreeDisk(sid), zab_period, session_period, disk_max)
        # How long a follower's report of a client's activity takes to reach the leader, and
        # within how long a follower cut off from its leader stops serving (see the checker).
        periods = [server.zab_period for server in self.servers.values()]
        session_periods = [server.session_period for server in self.servers.values()]
        delay = options.slow_max if options.slow_prob else options.delay_max
        self.session_period_max = max(session_periods)
        self.forward_ms = self.session_period_max + delay + 1
        # (a message in flight at a break or crash may still arrive up to STALE_LATE_MS later,
        # and keep a follower of a dead leader following that much longer)
        stale = STALE_LATE_MS if options.stale_prob else 0
        self.recent_ms = 2 * max(periods) + delay  # a follower that heard its leader this recently still hears it
        # The leader drops a follower it has not heard for the sync limit (then sends it
        # nothing); the follower still counts as hearing it for recent_ms after that.
        self.unheard_ms = (options.sync_limit_ticks + 2) * max(periods) + 2 * delay + stale + self.recent_ms
        # Per link, when messages were lost (dropped, or in flight at a break), and when the
        # last message arrived: for invariants 5 and 7.
        self.losses: dict[tuple[int, int], list[int]] = {}
        self.heard: dict[tuple[int, int], int] = {}
        self.checker = ServerChecker(self)
        self.faults_enabled = bool(options.faults & set(EVENT_FAULTS))
        self.clients_working = True
        self.conn_ids = 0
        self.jumps = 0  # clock jumps so far (orders them against activity in the same millisecond)
        self._partition = 0
        self.links_down_until: dict[tuple[int, int], int] = {}
        for sid in self.ids:
            self.servers[sid].incarnation = 0
        for sid in self.ids:
            self._start(self.servers[sid])
        for sid in self.ids:
            server = self.servers[sid]
            self._schedule(self.rng.randrange(1, server.zab_period), ZTICK, (sid, server.incarnation))
            self._schedule(self.rng.randrange(1, server.session_period), STICK, (sid, server.incarnation))
        self.clients: list[Client] = []
        for cid in range(1, options.clients + 1):
            client = Client(
                id=cid,
                requested_timeout=self.rng.choice(options.session_timeouts),
                write_share=self.rng.choice((0.1, 0.5, 0.8)),
            )
            self.clients.append(client)
            # Clients start once the first election is likely over, so that they spread over
            # the servers (those that start earlier land on whichever serves first).
            start = self.rng.randint(1, 400) if self.rng.random() < 0.3 else self.rng.randint(150, 500)
            client.next_op_at = start
            self._wake_client(client, start)
        if self.faults_enabled:
            self._schedule(self._exp(options.fault_mean), FAULT, None)

    # --- plumbing --------------------------------------------------------------------------

    def _schedule(self, delay: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + max(0, delay), self._seq, kind, payload))

    def _at(self, time: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (time, self._seq, kind, payload))

    def _exp(self, mean: int) -> int:
        return 1 + int(self.rng.expovariate(1 / mean))

    def note(self, kind: str, *args: Any) -> None:
        self._trace.append((self.now, kind, args))

    def local(self, server: SimServer) -> int:
        return self.now + server.offset

    def _lost(self, source: int, target: int) -> None:
        times = self.losses.get((source, target))
        if times is None:
            self.losses[(source, target)] = [self.now]
        elif times[-1] != self.now:
            times.append(self.now)

    def lost_between(self, source: int, target: int, start: int, end: int) -> bool:
        """Whether a message from ``source`` to ``target`` was lost in [start, end]."""
        times = self.losses.get((source, target))
        if not times:
            return False
        index = bisect.bisect_left(times, start)
        return index < len(times) and times[index] <= end

    def clock_offset_at(self, sid: int, jumps: int) -> int:
        """Server ``sid``'s clock offset once the first ``jumps`` clock jumps (of any server) happened."""
        server = self.servers[sid]
        return server.offset_values[bisect.bisect_right(server.jump_indices, jumps) - 1]

    @property
    def trace(self) -> list[str]:
        return [_format(time, kind, args) for time, kind, args in self._trace]

    def trace_tail(self, lines: int = 60) -> list[str]:
        return [_format(time, kind, args) for time, kind, args in self._trace[-lines:]]

    def peer_config(self, sid: int) -> PeerConfig:
        return PeerConfig(
            server_id=sid,
            voters=tuple(self.ids),
            init_limit_ticks=self.options.init_limit_ticks,
            sync_limit_ticks=self.options.sync_limit_ticks,
        )

    # --- server lifecycle -------------------------------------------------------------------

    def _start(self, server: SimServer) -> None:
        server.incarnation += 1
        disk = server.disk
        tree = disk.recover()
        now_ms = self.local(server)
        pipeline = RecordingPipeline(
            tree,
            PipelineConfig(
                server_id=server.id,
                tick_ms=SESSION_TICK_MS,
                min_session_timeout_ms=400,
                max_session_timeout_ms=20_000,
            ),
            rng=random.Random(self.rng.getrandbits(64)),
            now_ms=now_ms,
            epoch=0,
            wall_offset_ms=WALL_OFFSET_MS,
            mode=Mode.OFFLINE,
            sim=self,
            sid=server.id,
        )
        core = self.core_class(
            pipeline,
            self.peer_config(server.id),
            disk,
            delivered_zxid=disk.loaded_zxid,
            snapshot_every_txns=self.options.snapshot_every_txns,
            standalone=False,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        server.core = core
        disk.current_tree = lambda: core.tree
        server.flush_scheduled = False
        server.snapshot_busy = False
        server.seen_tree = None
        server.seen_zxid = -1
        server.roles_seen = 0
        server.mode = Mode.OFFLINE
        for other in self.ids:
            if other != server.id and self.servers[other].is_up:
                self.network.restore_link(server.id, other)
                self.network.restore_link(other, server.id)
        self.note("note", f"s{server.id} start #{server.incarnation} at {zxid_str(tree.last_zxid)}: {disk.describe()}")
        core.start(now_ms)
        self._after(server)

    def crash(self, sid: int, *, keep: int | None = None) -> None:
        server = self.servers[sid]
        if server.core is None:
            return
        pending = len(server.disk.pending)
        if keep is None:
            keep = self.rng.randint(0, pending) if pending and self.rng.random() < self.options.crash_keep_prob else 0
        server.core = None
        server.disk.crash(keep)
        self._drain_disk_problems()
        self.note("note", f"s{sid} CRASH (kept {keep} of {pending} queued writes)")
        if server.stint is not None:
            server.stint.end = self.now
            server.stint = None
        for conn in server.conns.values():
            conn.s2c_cut = conn.c2s_cut = True
            conn.server_open = False
            self._reset_client(conn)
        server.conns.clear()
        for other in self.ids:
            if other != sid:
                self._lost(sid, other)
                self._lost(other, sid)
                for message in self.network.break_link(sid, other, self.rng, self.options.stale_prob):
                    self._push_delivery(message, self.now + self.rng.randint(1, STALE_LATE_MS))
                self.network.break_link(other, sid, self.rng, 0.0)
        self._schedule(self.rng.randint(50, 2_000), RESTART, sid)

    def restart(self, sid: int) -> None:
        if not self.servers[sid].is_up:
            self._start(self.servers[sid])
            server = self.servers[sid]
            self._schedule(self.rng.randrange(1, server.zab_period), ZTICK, (sid, server.incarnation))
            self._schedule(self.rng.randrange(1, server.session_period), STICK, (sid, server.incarnation))

    # --- carrying out a core's output ----------------------------------------------------------

    def _after(self, server: SimServer) -> None:
        """Carry out everything the core asked for (and what that leads to), then observe it."""
        core = server.core
        assert core is not None
        while True:
            deferred = self._carry_out(server, core.take_output())
            if not deferred:
                break
            for action in deferred:
                action()
        self._observe(server)

    def _carry_out(self, server: SimServer, out: Any) -> list[Callable[[], None]]:
        deferred: list[Callable[[], None]] = []
        conns = server.conns
        core = server.core
        assert core is not None
        for conn_id, frame in out.frames:
            conn = conns.get(conn_id)
            if conn is not None and not conn.s2c_cut:
                self._s2c(conn, frame)
        for conn_id in out.close:
            conn = conns.get(conn_id)
            if conn is not None and not conn.closing and not conn.s2c_cut:
                conn.closing = True
                self._s2c(conn, EOF)
        for conn_id in out.abort:
            conn = conns.pop(conn_id, None)
            if conn is not None:
                self.note("conn", conn.client.id, server.id, conn_id, "aborted by the server")
                conn.s2c_cut = conn.c2s_cut = True
                conn.server_open = False
                self._reset_client(conn)
                deferred.append(lambda conn_id=conn_id: self._server_closed(server, conn_id))
        for conn_id in out.resume:
            conn = conns.get(conn_id)
            if conn is not None and conn.inbound:
                deferred.append(lambda conn=conn: self._drain(server, conn))
        for target, reason in out.disconnect:
            self.note("note", f"s{server.id} drops its link to s{target}: {reason}")
            self._schedule(0, LINK_UP, ("break", server.id, target))
        sid = server.id
        options = self.options
        for target, data in out.send:
            delay = self.rng.randint(1, options.delay_max)
            if options.slow_prob and self.rng.random() < options.slow_prob:
                delay = self.rng.randint(options.delay_max, options.slow_max)
            envelope = _envelope(sid, target, data)
            message = self.network.send(envelope, self.now, delay, self.servers[target].incarnation)
            if message is None:
                self._lost(sid, target)
            else:
                self._push_delivery(message, self.network.arrival(message))
        if out.persist:
            server.disk.append(out.persist)
            self._schedule_flush(server)
        if out.snapshot_due and not server.snapshot_busy:
            server.snapshot_busy = True
            self._schedule(self.rng.randint(1, 20), SNAP_START, (sid, server.incarnation))
        return deferred

    def _server_closed(self, server: SimServer, conn_id: int) -> None:
        core = server.core
        if core is not None:
            core.client_closed(conn_id)

    def _observe(self, server: SimServer) -> None:
        core = server.core
        assert core is not None
        tree = core.tree
        zxid = tree.last_zxid
        if tree is not server.seen_tree or zxid != server.seen_zxid:
            if zxid < server.seen_zxid:
                self.note(
                    "note", f"s{server.id}'s tree goes back from {zxid_str(server.seen_zxid)} to {zxid_str(zxid)}"
                )
            server.seen_tree = tree
            server.seen_zxid = zxid
            self.note("tree", server.id, zxid)
            self.checker.on_tree(server.id, tree)
        serving = core.is_serving
        stint = server.stint
        changes = len(core.role_changes)
        if serving != (stint is not None) or changes != server.roles_seen:
            # (every change of role or of serving is one more entry in core.role_changes)
            server.roles_seen = changes
            if serving:
                zab = core.zab
                if stint is None or stint.leader != zab.leader_id or stint.epoch != zab.epoch:
                    if stint is not None:
                        stint.end = self.now
                    server.stint = Stint(server.id, zab.leader_id, zab.epoch, self.now)
                    self.note("role", server.id, core.role, zab.epoch)
            elif stint is not None:
                stint.end = self.now
                server.stint = None
                self.note("role", server.id, core.role, core.zab.epoch)
        mode = core.pipeline.mode
        if mode is not server.mode:
            if mode is Mode.LEADER:
                server.leader_since = (self.now, self.checker.next_order(), self.jumps)
            server.mode = mode
        if server.disk.problems:
            self._drain_disk_problems()

    def _drain_disk_problems(self) -> None:
        for server in self.servers.values():
            for problem in server.disk.problems:
                self.checker.fail(f"disk: {problem}")
            server.disk.problems.clear()

    def on_expire_decision(self, sid: int, session_id: int) -> None:
        server = self.servers[sid]
        self.note("note", f"s{sid} expires session {session_id:#x}")
        if server.stint is None:
            self.checker.fail(f"s{sid} expires session {session_id:#x} while not serving (invariant 5)")
            return
        self.checker.on_expire_decision(sid, session_id, server.stint, server.leader_since)

    # --- disk and snapshots ------------------------------------------------------------------

    def _schedule_flush(self, server: SimServer) -> None:
        if server.disk.pending and not server.flush_scheduled:
            server.flush_scheduled = True
            self._schedule(self.rng.randint(1, server.disk_max), FLUSH, (server.id, server.incarnation))

    def _flush(self, sid: int, incarnation: int) -> bool:
        server = self.servers[sid]
        core = server.core
        if core is None or server.incarnation != incarnation:
            return False
        if server.stalled_until > self.now:
            self._at(server.stalled_until, FLUSH, (sid, incarnation))
            return False
        server.flush_scheduled = False
        pending = len(server.disk.pending)
        if not pending:
            return False
        count = pending
        if pending > 1 and self.options.partial_flush_prob and self.rng.random() < self.options.partial_flush_prob:
            count = self.rng.randint(1, pending - 1)
        seq = server.disk.flush(count)
        self.note("durable", sid, seq, count)
        core.persisted(seq, self.local(server))
        self._after(server)
        self._schedule_flush(server)
        return True

    def _snapshot_start(self, sid: int, incarnation: int) -> bool:
        server = self.servers[sid]
        core = server.core
        if core is None or server.incarnation != incarnation:
            return False
        core.snapshot_taken()
        image = core.tree.image()
        payload = DataTree.serialize_image(image)
        self.note("note", f"s{sid} snapshot at {zxid_str(image.last_zxid)}")
        self._schedule(self.rng.randint(1, server.disk_max), SNAP_WRITE, (sid, incarnation, image.last_zxid, payload))
        return True

    def _snapshot_write(self, sid: int, incarnation: int, zxid: int, payload: bytes) -> bool:
        server = self.servers[sid]
        if server.core is None or server.incarnation != incarnation:
            return False
        server.disk.write_snapshot(zxid, payload)
        server.snapshot_busy = False
        self.note("note", f"s{sid} snapshot {zxid_str(zxid)} written: {server.disk.describe()}")
        return True

    # --- peers ---------------------------------------------------------------------------------

    def _push_delivery(self, message: InFlight, time: int) -> None:
        message.due = time
        self._at(time, PEER, message)

    def _deliver(self, message: InFlight) -> bool:
        envelope = message.envelope
        if not self.network.take(message):
            self._lost(envelope.source, envelope.target)
            return False
        target = self.servers[envelope.target]
        if target.core is None or message.incarnation != target.incarnation:
            self._lost(envelope.source, envelope.target)
            return False
        self.heard[(envelope.source, envelope.target)] = self.now
        self.note("recv", envelope.source, envelope.target, envelope.message)
        target.core.peer_message(envelope.source, envelope.message, self.local(target))
        self._after(target)
        return True

    def _link_down(self, a: int, b: int) -> None:
        """Tell both ends that the link between ``a`` and ``b`` closed."""
        for me, other in ((a, b), (b, a)):
            server = self.servers[me]
            if server.core is not None:
                server.core.peer_link_down(other, self.local(server))
                self._after(server)

    def break_link(self, source: int, target: int, *, down_for: int) -> None:
        self.note("note", f"link s{source}->s{target} BREAK for {down_for}")
        self._lost(source, target)
        for message in self.network.break_link(source, target, self.rng, self.options.stale_prob):
            self._push_delivery(message, self.now + down_for + self.rng.randint(1, STALE_LATE_MS - 150))
        self.links_down_until[(source, target)] = self.now + down_for
        self._schedule(down_for, LINK_UP, (source, target))

    def partition(self, pairs: set[tuple[int, int]], text: str) -> None:
        self._partition += 1
        self.network.blocked = set(pairs)
        self.note("note", text)
        for source, target in sorted(pairs):
            self._lost(source, target)
            self.network.break_link(source, target, self.rng, 0.0)
            if self.servers[source].is_up and self.servers[target].is_up:
                self.network.restore_link(source, target)

    def heal(self) -> None:
        self._partition += 1
        self.network.blocked = set()
        self.note("note", "HEAL")

    # --- connections ----------------------------------------------------------------------------

    def _c2s(self, conn: Conn, item: Any) -> None:
        time = max(self.now + self.rng.randint(1, self.options.client_delay_max), conn.c2s_last)
        conn.c2s_last = time
        self._at(time, C2S, (conn, item))

    def _s2c(self, conn: Conn, item: Any) -> None:
        time = max(self.now + self.rng.randint(1, self.options.client_delay_max), conn.s2c_last)
        conn.s2c_last = time
        self._at(time, S2C, (conn, item))

    def _reset_client(self, conn: Conn) -> None:
        """The client will see its connection fail (not in order with the frames: they are lost)."""
        self._schedule(self.rng.randint(1, self.options.client_delay_max), RESET, conn)

    def _to_server(self, conn: Conn, item: Any) -> bool:
        server = self.servers[conn.sid]
        core = server.core
        if item == HANDSHAKE:
            if core is None or server.incarnation != conn.incarnation or conn.c2s_cut:
                self._reset_client(conn)  # connection refused
                return False
            server.conns[conn.id] = conn
            conn.server_open = True
            client = conn.client
            self.note("conn", client.id, server.id, conn.id, f"handshake session={client.session_id:#x}")
            core.open_client(conn.id, _handshake(client), self.local(server))
            if client.session_id and core.pipeline.session_of(conn.id) == client.session_id:
                self._activity(server, client.session_id)
            self._after(server)
            return True
        if conn.c2s_cut or not conn.server_open or core is None or server.incarnation != conn.incarnation:
            return False
        if item == EOF:
            conn.server_open = False
            server.conns.pop(conn.id, None)
            core.client_closed(conn.id)
            self._after(server)
            return True
        body = item[4:]
        xid, request = decode_request(decode_body(body))
        conn.inbound.append((xid, request, len(item)))
        self._drain(server, conn)
        self._after(server)
        return True

    def _drain(self, server: SimServer, conn: Conn) -> None:
        """Feed buffered requests to the core while it wants them (the shell's read loop)."""
        core = server.core
        if core is None or not conn.server_open:
            return
        inbound = conn.inbound
        fed = False
        while inbound and core.wants_input(conn.id):
            xid, request, size = inbound.popleft()
            session_id = core.pipeline.session_of(conn.id)
            if session_id:
                self._activity(server, session_id)
            core.client_request(conn.id, xid, request, self.local(server), size)
            fed = True
        if inbound and not core.has_connection(conn.id):
            inbound.clear()
        if fed:
            core.flush()

    def _activity(self, server: SimServer, session_id: int) -> None:
        if server.stint is not None:
            self.checker.on_activity(session_id, server.id, server.stint)

    def _to_client(self, conn: Conn, item: Any) -> bool:
        if conn.s2c_cut:
            return False
        client = conn.client
        if item == EOF:
            server = self.servers[conn.sid]
            if conn.server_open and server.core is not None and server.incarnation == conn.incarnation:
                conn.server_open = False
                server.conns.pop(conn.id, None)
                server.core.client_closed(conn.id)
                self._after(server)
            if client.conn is conn:
                self._client_lost(client, "closed by the server")
            return True
        if client.conn is not conn:
            return False  # the client hung up; the bytes go nowhere
        self._client_frame(client, conn, item)
        server = self.servers[conn.sid]
        if conn.server_open and server.core is not None and server.incarnation == conn.incarnation:
            server.core.client_sent(conn.id, len(item), self.local(server))
            self._after(server)
        return True

    # --- clients -----------------------------------------------------------------------------------

    def _wake_client(self, client: Client, delay: int) -> None:
        time = self.now + max(1, delay)
        if client.wake_at > self.now and client.wake_at <= time:
            return
        client.wake_at = time
        client.wake_token += 1
        self._at(time, WAKE, (client, client.wake_token))

    def _client_next_wake(self, client: Client) -> None:
        now = self.now
        if client.silent_until > now:
            self._wake_client(client, client.silent_until - now)
            return
        conn = client.conn
        if conn is None:
            self._wake_client(client, 1)
            return
        timeout = client.timeout or client.requested_timeout
        if not conn.answered:
            self._wake_client(client, conn.opened_at + timeout * 2 // 3 + 1 - now)
            return
        times = [client.last_sent + timeout // 3, client.last_heard + timeout * 2 // 3 + 1]
        if not client.pending and (self.clients_working or client.script):
            times.append(client.next_op_at)
        self._wake_client(client, min(times) - now)

    def _client_wake(self, client: Client, token: int) -> bool:
        if token != client.wake_token:
            return False
        client.wake_at = -1
        now = self.now
        did = False
        conn = client.conn
        timeout = client.timeout or client.requested_timeout
        if client.silent_until > now:
            pass
        elif conn is None:
            self._connect(client)
            did = True
        elif not conn.answered:
            if now - conn.opened_at > timeout * 2 // 3:
                self._client_hang_up(client, "no handshake answer")
                did = True
        elif now - client.last_heard > timeout * 2 // 3:
            self._client_hang_up(client, "the server went quiet")
            did = True
        elif client.pending and client.pending[-1].what == "close":
            pass  # nothing more on a session being closed
        elif client.hint is not None and self.clients_working:
            self._client_op(client)  # told of a write elsewhere: sync and read now, behind what is pending
            did = True
        elif not client.pending and now >= client.next_op_at and (self.clients_working or client.script):
            self._client_op(client)
            did = True
        elif now - client.last_sent >= timeout // 3:
            self._send(client, PingRequest(), "ping")
            did = True
        self._client_next_wake(client)
        return did

    def _connect(self, client: Client) -> None:
        sid = client.prefer if client.prefer is not None else self.rng.choice(self.ids)
        server = self.servers[sid]
        self.conn_ids += 1
        conn = Conn(id=self.conn_ids, client=client, sid=sid, incarnation=server.incarnation, opened_at=self.now)
        client.conn = conn
        client.pending.clear()
        client.replaying = False
        client.last_sent = client.last_heard = self.now
        self.note("conn", client.id, sid, conn.id, f"connect session={client.session_id:#x}")
        self._c2s(conn, HANDSHAKE)

    def _client_hang_up(self, client: Client, why: str) -> None:
        """The client closes its connection (and will reconnect, to another server)."""
        conn = client.conn
        assert conn is not None
        self.note("conn", client.id, conn.sid, conn.id, f"client hangs up: {why}")
        self._c2s(conn, EOF)
        self._client_lost(client, why, hung_up=True)

    def _client_lost(self, client: Client, why: str, *, hung_up: bool = False) -> None:
        conn = client.conn
        assert conn is not None
        if not hung_up:
            self.note("conn", client.id, conn.sid, conn.id, f"lost: {why}")
        client.conn = None
        client.pending.clear()  # unknown outcomes
        client.replaying = False
        for kinds in client.watches.values():
            kinds.pop("exist", None)  # not re-registered (see _send_set_watches)
        client.watches = {path: kinds for path, kinds in client.watches.items() if kinds}
        if client.prefer == conn.sid and self.rng.random() < 0.8:
            client.prefer = None
        others = [sid for sid in self.ids if sid != conn.sid]
        if client.prefer is None:
            client.prefer = self.rng.choice(others)
        self._wake_client(client, self.rng.randint(1, 50))

    def _reset(self, conn: Conn) -> bool:
        client = conn.client
        if client.conn is not conn:
            return False
        self._client_lost(client, "connection failed")
        return True

    def _session_gone(self, client: Client, why: str) -> None:
        self.note("note", f"c{client.id}: session {client.session_id:#x} gone ({why})")
        client.session_id = 0
        client.password = b""
        client.timeout = 0
        client.watches = {}
        client.ephemerals = []

    def _send(self, client: Client, request: Request, what: str, **extra: Any) -> Pending:
        conn = client.conn
        assert conn is not None and conn.answered
        client.xid += 1
        pending = Pending(client.xid, request, what, **extra)
        client.pending.append(pending)
        client.last_sent = self.now
        self.note("send", client.id, conn.sid, client.xid, request)
        self._c2s(conn, encode_frame(encode_request(client.xid, request)))
        return pending

    def _data(self, client: Client) -> bytes:
        client.counter += 1
        return f"c{client.id}-{client.counter}".encode()

    def _client_op(self, client: Client) -> None:
        rng = self.rng
        if client.script:
            self._send(client, client.script[0], "scripted")
            return
        key = f"/k{rng.randrange(KEYS)}"
        # Writes take [0, 47) and [90, 100) of the range, reads [47, 90).
        if rng.random() < client.write_share:
            choice = rng.random() * 57
            if choice >= 47:
                choice += 43
        else:
            choice = 47 + rng.random() * 43
        if client.hint is not None:
            key, client.hint = client.hint, None
            choice = 80  # sync, then get what the other client wrote
        if choice < 14:
            self._send(client, CreateRequest(path=key, data=self._data(client)), "create")
        elif choice < 19:
            self._send(
                client,
                CreateRequest(
                    path=f"/e/c{client.id}-",
                    data=self._data(client),
                    mode=CreateMode.EPHEMERAL_SEQUENTIAL,
                    makepath=True,
                ),
                "create",
            )
        elif choice < 23:
            self._send(
                client,
                CreateRequest(
                    path="/q/s-", data=self._data(client), mode=CreateMode.PERSISTENT_SEQUENTIAL, makepath=True
                ),
                "create",
            )
        elif choice < 38:
            version = client.versions.get(key, -1) if rng.random() < 0.7 else -1
            self._send(client, SetDataRequest(path=key, data=self._data(client), version=version), "set")
        elif choice < 44:
            if client.ephemerals and rng.random() < 0.4:
                path = client.ephemerals.pop(rng.randrange(len(client.ephemerals)))
            elif client.children and rng.random() < 0.3:
                path = "/q/" + client.children.pop(rng.randrange(len(client.children)))
            else:
                path = key
            version = client.versions.get(path, -1) if rng.random() < 0.5 else -1
            self._send(client, DeleteRequest(path=path, version=version), "delete")
        elif choice < 47:
            other = f"/k{rng.randrange(KEYS)}"
            ops = (
                CheckRequest(path=key, version=client.versions.get(key, 0)),
                SetDataRequest(path=other, data=self._data(client)),
            )
            self._send(client, MultiRequest(ops=ops), "multi")
        elif choice < 62:
            self._send(client, GetDataRequest(path=key, watch=rng.random() < 0.35), "get")
        elif choice < 71:
            self._send(client, ExistsRequest(path=key, watch=rng.random() < 0.35), "exists")
        elif choice < 75:
            path = "/q" if rng.random() < 0.7 else "/"
            self._send(client, GetChildrenRequest(path=path, watch=rng.random() < 0.35), "children")
        elif choice < 90:
            # sync, then a get: pipelined, or sent once the sync is answered
            required = self.checker.acked_max
            get = GetDataRequest(path=key, watch=rng.random() < 0.2)
            if rng.random() < 0.5:
                self._send(client, SyncRequest(path="/"), "sync")
                self._send(client, get, "synced_get", required=required)
            else:
                self._send(client, SyncRequest(path="/"), "sync", then=get, required=required)
        elif choice < 99.7:
            # a write with a read pipelined behind it (the read must see the write)
            self._send(client, SetDataRequest(path=key, data=self._data(client)), "set")
            self._send(client, GetDataRequest(path=key), "get")
        else:
            self._send(client, CloseSessionRequest(), "close")

    def _notify(self, writer: Client, request: Request) -> None:
        """Tell another client, out of band, about an acknowledged write: it will sync and read
        the path next (the use ``sync`` is for: a read that must see a write made elsewhere)."""
        path = getattr(request, "path", None)
        if path is None or not path.startswith("/k"):
            path = f"/k{self.rng.randrange(KEYS)}"
        others = [
            client
            for client in self.clients
            if client is not writer
            and client.conn is not None
            and client.conn.answered
            and client.hint is None
            and client.silent_until <= self.now
        ]
        if not others:
            return
        assert writer.conn is not None
        elsewhere = [client for client in others if client.conn is not None and client.conn.sid != writer.conn.sid]
        if elsewhere and self.rng.random() < 0.8:
            others = elsewhere  # sync matters most to a reader on another server
        idle = [client for client in others if not client.pending]
        if idle and self.rng.random() < 0.8:
            others = idle
        for reader in self.rng.sample(others, min(len(others), self.rng.choice((1, 1, 2)))):
            reader.hint = path
            self._wake_client(reader, self.rng.randint(1, self.options.client_delay_max))

    def _send_set_watches(self, client: Client) -> None:
        """Re-register data and child watches after a reconnect (exist watches are dropped: the
        replay only looks at the current state, so a node created and deleted meanwhile is missed,
        as in ZooKeeper)."""
        data = sorted(path for path, kinds in client.watches.items() if "data" in kinds)
        child = sorted(path for path, kinds in client.watches.items() if "child" in kinds)
        relative = client.last_zxid
        for kinds in client.watches.values():
            for kind in kinds:
                kinds[kind] = relative
        client.replaying = True
        self._send(
            client,
            SetWatchesRequest(relative_zxid=relative, data=tuple(data), child=tuple(child)),
            "setwatches",
            required=relative,
        )

    def _client_frame(self, client: Client, conn: Conn, frame: bytes) -> None:
        checker = self.checker
        client.last_heard = self.now
        item = decode_body(frame[4:])
        if not conn.answered:
            conn.answered = True
            answer = decode_handshake_reply(item)
            if isinstance(answer, tuple):
                code, message = answer
                self.note("recv_hs", client.id, conn.id, f"refused {code}: {message}")
                if code == SessionExpiredError.code:
                    self._session_gone(client, "refused as expired")
                # the server closes the connection; the client then tries another server
                return
            assert isinstance(answer, ConnectResponse)
            self.note("recv_hs", client.id, conn.id, f"session={answer.session_id:#x} zxid={zxid_str(answer.zxid)}")
            if answer.zxid < client.last_zxid:
                checker.fail(
                    f"c{client.id}: s{conn.sid} accepted the session at {zxid_str(answer.zxid)}, behind the client's "
                    f"{zxid_str(client.last_zxid)} (invariant 4: reads go back in time)"
                )
            if client.session_id and answer.session_id != client.session_id:
                checker.fail(f"c{client.id}: reconnected to session {answer.session_id:#x}, not {client.session_id:#x}")
            if not client.session_id:
                client.sessions += 1
                client.watches = {}
            client.session_id = answer.session_id
            client.password = answer.password
            client.timeout = answer.timeout_ms
            client.prefer = None
            if client.watches:
                self._send_set_watches(client)
            self._client_next_wake(client)
            return
        xid, zxid, err, result = decode_reply(item)
        self.note("recv_c", client.id, conn.id, xid, zxid, err, result)
        if zxid < client.last_zxid:
            checker.fail(
                f"c{client.id}: a frame at {zxid_str(zxid)} after one at {zxid_str(client.last_zxid)} "
                "(invariant 4: reads go back in time)"
            )
        else:
            client.last_zxid = zxid
        if xid == WATCH_XID:
            self._client_event(client, zxid, result)
            return
        pending = client.pending
        if not pending or pending[0].xid != xid:
            expected = pending[0].xid if pending else None
            if err == SessionExpiredError.code and "expired_reply_out_of_order" in self.known_findings:
                # Finding S1 (tests/sim/SERVER_FINDINGS.md): the pipeline answers a request of an
                # expired session at once, ahead of the session's earlier unanswered requests.
                # The project's client treats that as a protocol error and drops the
                # connection; so does this one (it learns of the expiry at its next handshake).
                checker.findings["expired_reply_out_of_order"] += 1
                self._client_hang_up(client, f"reply to xid {xid} while {expected} is the oldest (finding S1)")
                return
            checker.fail(f"c{client.id}: reply to xid {xid}, expected {expected}: replies out of order")
            return
        request = pending.popleft()
        if request.what == "setwatches" and err != 0:
            client.watches = {}  # not re-registered: they will not fire
        if err != SessionExpiredError.code:  # (the session's watches die with it)
            self._check_watches_fired(client, zxid)
        self._client_reply(client, request, zxid, err, result)
        if not pending:
            client.next_op_at = self.now + self._exp(self.options.op_mean)
            self._client_next_wake(client)

    def _check_watches_fired(self, client: Client, zxid: int) -> None:
        first_change = self.checker.first_change
        for path, kinds in client.watches.items():
            for kind, registered in kinds.items():
                missed = first_change(path, registered, zxid, FIRED_BY[kind])
                if missed is not None:
                    self.checker.fail(
                        f"c{client.id}: a reply at {zxid_str(zxid)} arrived before the {kind} watch on {path} "
                        f"(registered at {zxid_str(registered)}) fired for the change at {zxid_str(missed)} "
                        "(invariant 4)"
                    )
                    kinds[kind] = zxid  # report once

    def _client_event(self, client: Client, zxid: int, result: Any) -> None:
        checker = self.checker
        checker.events_checked += 1
        event = decode_event(zxid, result)
        path = event.path
        kinds = client.watches.get(path)
        fired = [kind for kind in FIRES[event.type] if kinds and kind in kinds]
        if not fired:
            checker.fail(
                f"c{client.id}: {event.type.name} event for {path} at {zxid_str(zxid)}, which no registered "
                "watch of its (not fired yet) covers (invariant 4)"
            )
            return
        assert kinds is not None
        for kind in fired:
            registered = kinds.pop(kind)
            if not client.replaying and zxid <= registered:
                checker.fail(
                    f"c{client.id}: {kind} watch on {path} registered at {zxid_str(registered)} fired for "
                    f"{zxid_str(zxid)} (invariant 4)"
                )
        if not kinds:
            del client.watches[path]
        if not client.replaying and not checker.changed_at(path, zxid, event.type):
            checker.fail(
                f"c{client.id}: {event.type.name} event for {path} at {zxid_str(zxid)}: no such change (invariant 4)"
            )

    def _register(self, client: Client, path: str, kind: str, zxid: int) -> None:
        kinds = client.watches.setdefault(path, {})
        kinds.setdefault(kind, zxid)

    def _client_reply(self, client: Client, pending: Pending, zxid: int, err: int, result: Any) -> None:
        checker = self.checker
        request = pending.request
        what = pending.what
        if err == SessionExpiredError.code:
            self._session_gone(client, "a request was answered as expired")
            return
        if what in ("create", "set", "delete", "multi", "scripted"):
            if err == 0:
                checker.on_ack(client.id, client.session_id, pending.xid, zxid, what)
                client.acked.append(zxid)
                if self.clients_working and self.rng.random() < 0.6:
                    self._notify(client, request)
                if what == "scripted":
                    client.script.popleft()
                match request:
                    case CreateRequest(mode=mode):
                        path = result[0]
                        client.versions[path] = 0
                        if mode.is_ephemeral:
                            client.ephemerals.append(path)
                    case SetDataRequest(path=path):
                        client.versions[path] = result[4]
                    case DeleteRequest(path=path):
                        client.versions.pop(path, None)
            return
        if what in ("get", "synced_get"):
            assert isinstance(request, GetDataRequest)
            if err == 0:
                data, stat = result
                checker.check_get(client.id, request.path, zxid, data, stat[1])
                client.versions[request.path] = stat[4]
                if request.watch:
                    self._register(client, request.path, "data", zxid)
            elif err == NoNodeError.code:
                checker.check_get(client.id, request.path, zxid, None, None)
            if what == "synced_get" and pending.required is not None and err in (0, NoNodeError.code):
                checker.check_synced_read(client.id, pending.required, zxid, f"get {request.path}")
            return
        if what == "exists":
            assert isinstance(request, ExistsRequest)
            if err == 0:
                checker.check_get(client.id, request.path, zxid, None, result[1] if result is not None else None)
                if request.watch:
                    self._register(client, request.path, "data" if result is not None else "exist", zxid)
            return
        if what == "children":
            assert isinstance(request, GetChildrenRequest)
            if err == 0:
                if request.path == "/q":
                    client.children = list(result[0])
                if request.watch:
                    self._register(client, request.path, "child", zxid)
            return
        if what == "sync":
            follow = client.pending[0] if client.pending else None
            if err != 0:
                if follow is not None and follow.what == "synced_get":
                    follow.required = None  # the sync failed: a plain read
                return
            if pending.then is not None and client.conn is not None:
                self._send(client, pending.then, "synced_get", required=pending.required)
            return
        if what == "setwatches":
            client.replaying = False
            return
        if what == "close":
            if err == 0:
                self._session_gone(client, "closed by its client")
            return
        assert what == "ping", what

    # --- faults ----------------------------------------------------------------------------------

    def _fault(self) -> bool:
        kinds = [kind for kind in EVENT_FAULTS if kind in self.options.faults]
        kind = self.rng.choice(kinds)
        rng = self.rng
        up = [sid for sid in self.ids if self.servers[sid].is_up]
        if kind == "disk_delays":
            if not up:
                return False
            server = self.servers[rng.choice(up)]
            stall = rng.randint(20, 400)
            server.stalled_until = self.now + stall
            self.note("note", f"s{server.id} DISK STALL for {stall} ms")
        elif kind == "crashes":
            if not up or len(self.ids) - len(up) >= self.options.max_down:
                return False
            self.crash(rng.choice(up))
        elif kind == "crash_all":
            if rng.random() > 0.15 or not up:
                return False
            self.note("note", "POWER FAILURE")
            for sid in up:
                self.crash(sid)
        elif kind == "partitions":
            if rng.random() < self.options.one_way_prob:
                pairs = set()
                for _ in range(rng.randint(1, len(self.ids))):
                    a, b = rng.sample(self.ids, 2)
                    pairs.add((a, b))
                text = "ONE-WAY " + " ".join(f"s{a}-/->s{b}" for a, b in sorted(pairs))
            else:
                shuffled = self.ids[:]
                rng.shuffle(shuffled)
                cut = rng.randint(1, len(shuffled) - 1)
                side_a, side_b = sorted(shuffled[:cut]), sorted(shuffled[cut:])
                pairs = {(a, b) for a in side_a for b in side_b} | {(b, a) for a in side_a for b in side_b}
                text = f"PARTITION {side_a} | {side_b}"
            self.partition(pairs, text)
            self._schedule(rng.randint(100, 3_000), HEAL, self._partition)
        elif kind == "link_breaks":
            a, b = rng.sample(self.ids, 2)
            down_for = rng.randint(1, 150)
            self.break_link(a, b, down_for=down_for)
            self.break_link(b, a, down_for=down_for)
            self._link_down(a, b)
        elif kind == "clock_jumps":
            if not up:
                return False
            server = self.servers[rng.choice(up)]
            jump = rng.randint(100, 1_500)
            server.offset += jump
            self.jumps += 1
            server.jump_indices.append(self.jumps)
            server.offset_values.append(server.offset)
            self.note("note", f"s{server.id} CLOCK JUMP +{jump} ms")
            core = server.core
            assert core is not None
            for _ in range(rng.randint(1, 3)):
                core.zab_tick(self.local(server))
                self._after(server)
            core.session_tick(self.local(server))
            self._after(server)
        elif kind == "client_disconnects":
            connected = [client for client in self.clients if client.conn is not None]
            if not connected:
                return False
            client = rng.choice(connected)
            self._client_hang_up(client, "DISCONNECT (fault)")
        elif kind == "session_expiry":
            candidates = [c for c in self.clients if c.session_id and c.silent_until <= self.now]
            if not candidates:
                return False
            client = rng.choice(candidates)
            silence = int(client.timeout * rng.uniform(1.2, 2.5))
            client.silent_until = self.now + silence
            self.note("note", f"c{client.id} goes SILENT for {silence} ms (timeout {client.timeout})")
            self._client_next_wake(client)
        return True

    # --- the loop ---------------------------------------------------------------------------------

    def step(self) -> None:
        """Handle events until one of them did something."""
        for _ in range(100_000):
            if self._handle(*heapq.heappop(self._events)):
                self.steps += 1
                return
        raise AssertionError(self.report("simulator stuck: 100,000 events in a row did nothing"))

    def _handle(self, time: int, _seq: int, kind: int, payload: Any) -> bool:
        self.now = time
        if kind == PEER:
            return self._deliver(payload)
        if kind == C2S:
            return self._to_server(*payload)
        if kind == S2C:
            return self._to_client(*payload)
        if kind == WAKE:
            return self._client_wake(*payload)
        if kind in (ZTICK, STICK):
            sid, incarnation = payload
            server = self.servers[sid]
            if server.core is None or server.incarnation != incarnation:
                return False
            if kind == ZTICK:
                self._schedule(server.zab_period, ZTICK, payload)
                stint = server.stint
                if stint is not None and stint.leader is not None and stint.leader != sid:
                    leader = stint.leader
                    self.checker.check_follower_heard(
                        sid, stint, self.heard.get((sid, leader), 0), self.heard.get((leader, sid), 0)
                    )
                server.core.zab_tick(self.local(server))
            else:
                self._schedule(server.session_period, STICK, payload)
                server.core.session_tick(self.local(server))
            self._after(server)
            return True
        if kind == FLUSH:
            return self._flush(*payload)
        if kind == RESET:
            return self._reset(payload)
        if kind == SNAP_START:
            return self._snapshot_start(*payload)
        if kind == SNAP_WRITE:
            return self._snapshot_write(*payload)
        if kind == FAULT:
            if not self.faults_enabled:
                return False
            self._schedule(self._exp(self.options.fault_mean), FAULT, None)
            return self._fault()
        if kind == RESTART:
            if self.servers[payload].is_up:
                return False
            self.restart(payload)
            return True
        if kind == LINK_UP:
            if payload[0] == "break":  # a core dropped a link (an oversized message)
                _, a, b = payload
                self.break_link(a, b, down_for=self.rng.randint(1, 50))
                self.break_link(b, a, down_for=self.rng.randint(1, 50))
                self._link_down(a, b)
                return True
            source, target = payload
            if self.links_down_until.get(payload, 0) > time:
                return False
            if not (self.servers[source].is_up and self.servers[target].is_up):
                return False
            self.network.restore_link(source, target)
            return True
        if kind == HEAL:
            if payload != self._partition or not self.network.blocked:
                return False
            self.heal()
            return True
        raise AssertionError(kind)  # pragma: no cover

    def run(self, steps: int, *, check: bool = True) -> None:
        for _ in range(steps):
            self.step()
            if check:
                self.check_invariants()

    def check_invariants(self) -> None:
        checker = self.checker
        if checker.violations:
            raise InvariantError(self.report("; ".join(checker.violations[:5])))

    # --- healing ----------------------------------------------------------------------------------

    def converged(self) -> SimServer | None:
        """The leader, if every server is up and serving under it in one epoch."""
        leaders = [s for s in self.servers.values() if s.core is not None and s.core.role == "leader"]
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        assert leader.core is not None
        epoch = leader.core.zab.epoch
        for server in self.servers.values():
            core = server.core
            if core is None or not core.is_serving or core.zab.leader_id != leader.id or core.zab.epoch != epoch:
                return None
        return leader

    def heal_and_settle(self, *, max_ms: int = 60_000) -> SimServer:
        """End all faults, then require progress.

        Heals partitions and links, restarts crashed servers, wakes silent clients, stops
        the random operations (clients keep their sessions alive), and runs until one
        leader leads everyone; then a fresh client writes through the leader, and the run
        goes on until every server applied that write and all trees are equal.

        Raises:
            LivenessError: no progress within ``max_ms`` of simulated time.
            InvariantError: as :meth:`check_invariants`, checked after every step.
        """
        self.faults_enabled = False
        self.clients_working = False
        self.note("note", "HEAL AND SETTLE")
        self.heal()
        self.links_down_until.clear()
        for sid in self.ids:
            self.restart(sid)
        for source, target in self.network.links:
            self.network.restore_link(source, target)
        for client in self.clients:
            if client.silent_until > self.now:
                client.silent_until = self.now
                self._client_next_wake(client)
        deadline = self.now + max_ms
        settler: Client | None = None
        while self.now < deadline:
            self.step()
            self.check_invariants()
            leader = self.converged()
            if settler is None:
                if leader is None:
                    continue
                settler = Client(id=len(self.clients) + 1, requested_timeout=4_000)
                settler.prefer = leader.id
                settler.script.append(
                    CreateRequest(path="/settled-", data=b"settled", mode=CreateMode.PERSISTENT_SEQUENTIAL)
                )
                self.clients.append(settler)
                self._wake_client(settler, 1)
                continue
            if settler.script:
                if settler.conn is None and leader is not None:
                    settler.prefer = leader.id
                continue
            target = settler.acked[-1]
            trees = [server.core.tree for server in self.servers.values() if server.core is not None]
            if (
                leader is not None
                and all(tree.last_zxid >= target for tree in trees)
                and len({tree.last_zxid for tree in trees}) == 1
            ):
                break
        else:
            raise LivenessError(self.report(f"no progress within {max_ms} ms after healing"))
        self.checker.final_check({sid: server.core.tree for sid, server in self.servers.items() if server.core})
        self.check_invariants()
        leader = self.converged()
        assert leader is not None
        return leader

    # --- reports ------------------------------------------------------------------------------------

    def report(self, headline: str, lines: int = 60) -> str:
        options = self.options
        one_way = ", one_way=True" if options.one_way_prob else ""
        steps = self.run_steps if self.run_steps is not None else "STEPS"
        parts = [
            headline,
            f"replay: pytest tests/sim/test_server_sim.py --seed {options.seed} (with --soak -k soak for a soak seed), "
            f"or run_server_seed(ServerSimOptions.from_seed({options.seed}, {options.servers}{one_way}), {steps})",
            f"options: {options.describe()}",
            f"step {self.steps}, time {self.now} ms",
        ]
        for sid, server in self.servers.items():
            parts.append(f"  s{sid}: {self.describe_server(server)}")
        for client in self.clients:
            conn = f"conn {client.conn.id} to s{client.conn.sid}" if client.conn else "no connection"
            parts.append(
                f"  c{client.id}: session {client.session_id:#x} timeout {client.timeout} {conn} "
                f"pending={len(client.pending)} watches={len(client.watches)} last_zxid={zxid_str(client.last_zxid)}"
            )
        parts.append(f"last {lines} trace lines:")
        parts.extend(self.trace_tail(lines))
        return "\n".join(parts)

    def describe_server(self, server: SimServer) -> str:
        core = server.core
        if core is None:
            state = "DOWN"
        else:
            state = (
                f"{core.role} leader={core.zab.leader_id} epoch={core.zab.epoch} tree={zxid_str(core.tree.last_zxid)}"
            )
        return f"{state} clock+{server.offset} disk: {server.disk.describe()}"

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "time_ms": self.now,
            "incarnations": sum(server.incarnation for server in self.servers.values()),
            "sessions": sum(client.sessions for client in self.clients),
            **self.checker.stats(),
        }


def _envelope(source: int, target: int, data: bytes) -> Envelope:
    return Envelope(source=source, target=target, message=data)


def _handshake(client: Client) -> ConnectRequest:
    return ConnectRequest(
        last_zxid=client.last_zxid,
        session_id=client.session_id,
        password=client.password,
        timeout_ms=client.requested_timeout,
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _format(time: int, kind: str, args: tuple[Any, ...]) -> str:
    """One trace line (formatted only when read)."""
    match kind:
        case "recv":
            source, target, data = args
            try:
                message = format_message(decode_message(data))
            except ValueError:
                message = f"<{len(data)} undecodable bytes>"
            return f"{time:>7} s{target} <- s{source} {message}"
        case "send":
            cid, sid, xid, request = args
            return f"{time:>7} c{cid} -> s{sid} #{xid} {_short(request)}"
        case "recv_c":
            cid, conn, xid, zxid, err, result = args
            what = "event" if xid == WATCH_XID else f"#{xid}"
            return f"{time:>7} c{cid} <- conn{conn} {what} zxid={zxid_str(zxid)} err={err} {_short(result)}"
        case "recv_hs":
            cid, conn, text = args
            return f"{time:>7} c{cid} <- conn{conn} handshake: {text}"
        case "conn":
            cid, sid, conn, text = args
            return f"{time:>7} c{cid} conn{conn} s{sid}: {text}"
        case "tree":
            sid, zxid = args
            return f"{time:>7} s{sid} tree at {zxid_str(zxid)}"
        case "durable":
            sid, seq, count = args
            return f"{time:>7} s{sid} durable through seq {seq} ({count} records)"
        case "role":
            sid, role, epoch = args
            return f"{time:>7} s{sid} is {role} (epoch {epoch})"
        case _:
            return f"{time:>7} {kind}: " + " ".join(str(arg) for arg in args)


def run_server_seed(
    options: ServerSimOptions,
    steps: int,
    core_class: type[ServerCore] = ServerCore,
    *,
    known_findings: frozenset[str] = frozenset(),
) -> ServerSimulation:
    """Run ``steps`` checked steps, then heal and settle; any failure names the seed.

    Raises:
        InvariantError: an invariant failed, or the core raised (its message has the report).
        LivenessError: no progress after healing.
    """
    sim = ServerSimulation(options, core_class, known_findings=known_findings)
    sim.run_steps = steps
    try:
        sim.run(steps)
        sim.heal_and_settle()
    except (InvariantError, LivenessError):
        raise
    except Exception as error:
        raise InvariantError(sim.report(f"the core raised {error!r}")) from error
    return sim


__all__ = [
    "EVENT_FAULTS",
    "FAULT_KINDS",
    "InvariantError",
    "LivenessError",
    "ServerSimOptions",
    "ServerSimulation",
    "TreeDisk",
    "run_server_seed",
]
