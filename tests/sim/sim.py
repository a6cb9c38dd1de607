"""A seeded, single-threaded simulator that drives the real ZAB cores of N servers.

Theory of operation
-------------------
Everything is a discrete event on one priority queue ordered by (time, sequence
number); one :meth:`Simulation.step` handles one event that did something. Time is an
integer; a server ticks about every ``TICK`` units (each server's clock runs at its own
slightly different rate). Every random choice comes from one ``random.Random(seed)``
(options from a second one derived from the seed), so a seed replays exactly; no trio,
no wall clock, no threads. :attr:`Simulation.trace` is a one-line-per-event record.

Per server (:class:`Server`) the simulator plays the shell of production:

- **network** (:mod:`tests.sim.network`): every ``Output.send`` goes on the FIFO link to
  its target with a random delay; links break (in-flight messages lost, a few delivered
  late as stale ones), partitions (symmetric and one-way) block links until healed;
- **disk** (:mod:`tests.sim.disk`): ``Output.persist`` records join a write queue; a
  flush event makes a prefix durable and reports ``persisted(seq)``;
- **application**: the list of delivered ``(zxid, txn)``. ``Output.install`` replaces
  it with a snapshot (CBOR of that list), ``Output.deliver`` appends to it. At a
  restart it is rebuilt from durable state only: the disk's snapshot base.
- **clients**: the simulator proposes unique txns ``c<seed>-<n>`` to random servers
  (mostly the established leader; others must answer ``NotLeaderError``).

Faults (chosen by :class:`SimOptions`): message delays and slow messages, link
breaks, partitions, pauses, clock jumps, crashes (losing unflushed writes, or keeping a
random prefix of them), fsync errors (a crash), crashes of every server at once, and
the shell's own snapshot-and-purge of the log. :meth:`Simulation.heal_and_settle` ends
the faults and requires progress: a leader, a fresh committed txn, equal states.

Invariants are checked incrementally by :class:`tests.sim.checkers.Checker`;
:meth:`Simulation.check_invariants` raises :class:`InvariantError` with the seed and
the trace tail.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from coord.errors import NotLeaderError
from coord.zab.peer import Peer
from coord.zab.types import DurableState, Envelope, EpochRecord, Output, PeerConfig, Role, Zxid
from tests.sim.broken import roles_with
from tests.sim.checkers import Checker
from tests.sim.disk import AppState, FakeDisk, encode_state
from tests.sim.network import InFlight, Network
from tests.sim.trace import format_event, zxid_str

TICK = 100  # time units per tick


class PeerLike(Protocol):
    """What the simulator uses of :class:`coord.zab.peer.Peer`."""

    role: Role
    leader_id: int | None
    epoch: int
    is_ready: bool

    def step(self, envelope: Envelope) -> None: ...
    def tick(self) -> None: ...
    def persisted(self, through_seq: int) -> None: ...
    def propose(self, txn: bytes) -> Zxid: ...
    def take_output(self) -> Output: ...


PeerFactory = Callable[[PeerConfig, DurableState, random.Random, frozenset[str]], PeerLike]


def real_peer_factory(config: PeerConfig, durable: DurableState, rng: random.Random, bugs: frozenset[str]) -> PeerLike:
    """Build the production core.

    The application state the simulator restores at a start is the disk's snapshot base
    only (never the log after it, which may hold proposals a new leader truncates), so
    the core is told so (``delivered_zxid``).
    """
    return Peer(config, durable, rng, roles=roles_with(bugs), delivered_zxid=durable.applied_zxid())


class InvariantError(AssertionError):
    """An invariant failed; the message names the seed and ends with the trace tail."""


class LivenessError(AssertionError):
    """After healing, the ensemble did not make progress within the bound."""


FAULTS = ("crash", "crash_all", "partition", "one_way", "link_break", "pause", "clock_jump", "purge")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    """Everything that shapes one run. :meth:`from_seed` picks a mix from a seed."""

    seed: int
    servers: int = 3
    # Network (time units; a tick is TICK units).
    delay_min: int = 1
    delay_max: int = 20
    slow_prob: float = 0.0  # chance a message takes up to slow_max instead
    slow_max: int = 400
    stale_prob: float = 0.0  # chance a message in flight at a break still arrives, late
    # Disk.
    disk_min: int = 1
    disk_max: int = 30
    partial_flush_prob: float = 0.2  # a flush makes only a prefix of the queue durable
    fsync_error_prob: float = 0.0  # per flush: the write fails and the server dies
    # Per flush that would make a new currentEpoch durable: the server dies right before
    # that record, after the synced history before it (the window that docs/correctness.md, rule 1, is about).
    epoch_crash_prob: float = 0.0
    late_report_prob: float = 0.0  # a flush is reported to the core (persisted) a little later
    crash_keep_prob: float = 0.3  # at a crash, a random prefix of the queue made it
    # Clocks.
    clock_skew: float = 0.05  # each server's tick period is TICK * (1 ± skew)
    tick_phases: tuple[int, ...] = ()  # first tick of each server (default: random in the first tick)
    # Clients.
    propose_mean: int = 100  # mean time between client proposals (0: no clients)
    propose_to_leader_prob: float = 0.85
    # Faults: mean time between them (0: none) and their relative weights.
    fault_mean: int = 1_000
    fault_weights: tuple[tuple[str, float], ...] = tuple((name, 1.0) for name in FAULTS)
    max_down: int = 1  # crashes leave at least servers - max_down up (crash_all ignores it)
    down_min: int = 50
    down_max: int = 2_000
    partition_min: int = 100
    partition_max: int = 3_000
    pause_max: int = 800
    # Buggify: at a role change to LEADING or FOLLOWING, crash that server within
    # role_crash_within time units with this probability (a leader dying while it
    # synchronises its followers, a follower dying mid-sync: the windows between
    # acceptedEpoch, the synced history and currentEpoch, which evenly spread faults
    # rarely hit).
    role_crash_prob: float = 0.0
    role_crash_within: int = 300
    # Core configuration (PeerConfig fields to override) and broken variants (tests/sim/broken.py).
    config: tuple[tuple[str, int], ...] = ()
    bugs: frozenset[str] = frozenset()

    @classmethod
    def from_seed(
        cls, seed: int, servers: int = 3, *, aggressive: bool = False, bugs: frozenset[str] = frozenset()
    ) -> SimOptions:
        """Pick a fault mix from ``seed``.

        Args:
            seed: the run's seed; the options come from their own generator derived from it.
            servers: ensemble size (3 or 5).
            aggressive: more frequent faults and slower disks, for hunting broken variants.
            bugs: broken variants (tests/sim/broken.py) to switch on in every core.
        """
        rng = random.Random(f"options/{seed}/{servers}/{aggressive}")
        minority = (servers - 1) // 2
        weights = tuple((name, rng.choice((0.0, 0.5, 1.0, 2.0))) for name in FAULTS)
        if not any(weight for _, weight in weights):
            weights = tuple((name, 1.0) for name in FAULTS)
        config: list[tuple[str, int]] = []
        if rng.random() < 0.4:
            config.append(("snap_threshold_txns", rng.choice((0, 2, 5, 20))))
        if rng.random() < 0.3:
            config.append(("max_batch_txns", rng.choice((1, 2, 5))))
        if aggressive:
            fault_mean = rng.choice((200, 400, 800))
        else:  # one seed in ten runs without faults: the steady state must hold up too
            fault_mean = rng.choice((0, 300, 500, 700, 1_000, 1_000, 1_500, 2_000, 2_000, 4_000))
        # Drawn in the order they always were, so that a seed keeps its mix.
        delay_max = rng.choice((5, 20, 50, 90))
        slow_prob = rng.choice((0.0, 0.0, 0.01, 0.05))
        stale_prob = rng.choice((0.0, 0.05, 0.2))
        disk_max = rng.choice((10, 40, 120)) if not aggressive else rng.choice((60, 150, 300))
        partial_flush_prob = rng.choice((0.0, 0.2, 0.5))
        fsync_error_prob = rng.choice((0.0, 0.0, 0.002))
        epoch_crash_prob = rng.choice((0.0, 0.05, 0.2)) if aggressive else rng.choice((0.0, 0.0, 0.02))
        late_report_prob = rng.choice((0.0, 0.0, 0.3))
        crash_keep_prob = rng.choice((0.0, 0.3, 0.7))
        clock_skew = rng.choice((0.0, 0.05, 0.2))
        propose_mean = rng.choice((30, 100, 300))
        max_down = servers if rng.random() < 0.1 else minority
        role_crash_prob = 0.0
        if aggressive:  # buggify (drawn last): crashes in the windows of an epoch change
            role_crash_prob = rng.choice((0.0, 0.0, 0.1, 0.3))
            epoch_crash_prob = rng.choice((0.05, 0.2, 0.5, 0.5))
        # Drawn after everything else: a SNAP streams in chunks this small (or in one).
        config.append(("snap_chunk_bytes", rng.choice((64, 512, 1 << 20))))
        config.append(("snap_window_chunks", rng.choice((2, 4, 8))))
        return cls(
            seed=seed,
            servers=servers,
            delay_min=1,
            delay_max=delay_max,
            slow_prob=slow_prob,
            stale_prob=stale_prob,
            disk_min=1,
            disk_max=disk_max,
            partial_flush_prob=partial_flush_prob,
            fsync_error_prob=fsync_error_prob,
            epoch_crash_prob=epoch_crash_prob,
            late_report_prob=late_report_prob,
            crash_keep_prob=crash_keep_prob,
            clock_skew=clock_skew,
            propose_mean=propose_mean,
            fault_mean=fault_mean,
            fault_weights=weights,
            max_down=max_down,
            role_crash_prob=role_crash_prob,
            config=tuple(config),
            bugs=bugs,
        )

    def describe(self) -> str:
        """One line for failure reports."""
        weights = ",".join(f"{name}={weight:g}" for name, weight in self.fault_weights if weight)
        return (
            f"seed={self.seed} servers={self.servers} delay<={self.delay_max} slow={self.slow_prob} "
            f"stale={self.stale_prob} disk<={self.disk_max} partial={self.partial_flush_prob} "
            f"fsync_err={self.fsync_error_prob} epoch_crash={self.epoch_crash_prob} late={self.late_report_prob} "
            f"keep={self.crash_keep_prob} "
            f"skew={self.clock_skew} "
            f"propose_mean={self.propose_mean} fault_mean={self.fault_mean} [{weights}] max_down={self.max_down} "
            f"role_crash={self.role_crash_prob} config={dict(self.config)} bugs={sorted(self.bugs)}"
        )


@dataclass(slots=True)
class Server:
    """One simulated server: its durable disk, its application state, its live core."""

    id: int
    disk: FakeDisk
    period: int  # time units between this server's ticks
    peer: PeerLike | None = None
    incarnation: int = 0
    app: AppState = field(default_factory=list)
    paused_until: int = 0
    flush_scheduled: bool = False
    disk_held: bool = False  # scripted scenarios: the disk accepts writes but flushes none
    durable_seq: int = 0  # the last seq of this incarnation's writes that is durable
    reported_seq: int = 0  # the last seq reported to the core with persisted()
    ready: bool = False
    delivered: list[tuple[int, Zxid, bytes]] = field(default_factory=list)  # (incarnation, zxid, txn), ever

    @property
    def is_up(self) -> bool:
        """Whether the process is running (possibly paused)."""
        return self.peer is not None

    def app_snapshot(self) -> tuple[Zxid, bytes]:
        """``DurableState.snapshot()``: the application state and the zxid it is at."""
        return (self.app[-1][0] if self.app else 0), encode_state(self.app)


# Event kinds (ints: cheap to compare; the payload never is, as sequence numbers are unique).
DELIVER, TICK_EVENT, FLUSH, PROPOSE, FAULT, RESTART, LINK_UP, HEAL, REPORT, CRASH = range(10)


class Simulation:
    """N servers, one seed. See the module docstring."""

    def __init__(self, options: SimOptions, peer_factory: PeerFactory | None = None) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.peer_factory = peer_factory or real_peer_factory
        self.ids = list(range(1, options.servers + 1))
        self.config_overrides = dict(options.config)
        self.now = 0
        self.steps = 0
        self._seq = 0
        self._events: list[tuple[int, int, int, Any]] = []
        self._trace: list[tuple[int, str, tuple[Any, ...]]] = []
        self.network = Network(self.ids)
        self.servers: dict[int, Server] = {}
        for sid in self.ids:
            skew = options.clock_skew
            period = max(1, round(TICK * (1 + self.rng.uniform(-skew, skew))))
            server = Server(id=sid, disk=FakeDisk(sid), period=period)
            server.disk.app_snapshot = server.app_snapshot
            self.servers[sid] = server
        self.quorum = options.servers // 2 + 1
        self.checker = Checker({sid: server.disk for sid, server in self.servers.items()}, self.quorum)
        self.faults_enabled = options.fault_mean > 0
        self.clients_enabled = options.propose_mean > 0
        self.txn_count = 0
        self.flushes = 0  # durable writes so far (flush events that wrote something)
        # (n, after): crash the server doing the n-th durable write, before or after it.
        self.crash_at_flush: tuple[int, bool] | None = None
        self._partition = 0  # id of the current partition (a HEAL for an older one is void)
        self.links_down_until: dict[tuple[int, int], int] = {}
        for sid in self.ids:
            # All processes exist before any speaks, so early messages reach incarnation 1.
            self.servers[sid].incarnation = 1
        for sid in self.ids:
            self._start(self.servers[sid], fresh=True)
            phase = options.tick_phases[sid - 1] if options.tick_phases else self.rng.randrange(1, TICK)
            self._schedule(phase, TICK_EVENT, sid)
        if self.clients_enabled:
            self._schedule(self._exp(options.propose_mean), PROPOSE, None)
        if self.faults_enabled:
            self._schedule(self._exp(options.fault_mean), FAULT, None)

    # --- plumbing --------------------------------------------------------------------

    def _schedule(self, delay: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + max(0, delay), self._seq, kind, payload))

    def _exp(self, mean: int) -> int:
        return 1 + int(self.rng.expovariate(1 / mean))

    def note(self, kind: str, *args: Any) -> None:
        """Add one event to the trace (formatted only when read)."""
        self._trace.append((self.now, kind, args))

    @property
    def trace(self) -> list[str]:
        """The whole run, one line per event."""
        return [format_event(time, kind, args) for time, kind, args in self._trace]

    def trace_tail(self, lines: int = 50) -> list[str]:
        """The last ``lines`` trace lines."""
        return [format_event(time, kind, args) for time, kind, args in self._trace[-lines:]]

    def peer_config(self, sid: int) -> PeerConfig:
        """The core configuration of server ``sid``."""
        return PeerConfig(server_id=sid, voters=tuple(self.ids), **self.config_overrides)

    # --- server lifecycle ---------------------------------------------------------------

    def _start(self, server: Server, *, fresh: bool = False) -> None:
        if not fresh:
            server.incarnation += 1
        server.app = list(server.disk.base)
        server.disk.loaded_zxid = server.disk.base_zxid
        server.ready = False
        server.paused_until = 0
        server.flush_scheduled = False
        server.durable_seq = server.reported_seq = 0
        peer_rng = random.Random(self.rng.getrandbits(64))
        server.peer = self.peer_factory(self.peer_config(server.id), server.disk, peer_rng, self.options.bugs)
        for other in self.ids:
            if other != server.id and self.servers[other].is_up:
                self.network.restore_link(server.id, other)
                self.network.restore_link(other, server.id)
        self.note("note", f"s{server.id} start #{server.incarnation}: {server.disk.describe()}")
        self._handle_output(server)

    def crash(self, sid: int, *, keep: int | None = None) -> None:
        """Kill server ``sid``: lose its unflushed writes (all but a random prefix unless ``keep``)."""
        server = self.servers[sid]
        if not server.is_up:
            return
        pending = len(server.disk.pending)
        if keep is None:
            keep = self.rng.randint(0, pending) if pending and self.rng.random() < self.options.crash_keep_prob else 0
        server.peer = None
        server.ready = False
        _, removed = server.disk.crash(keep)
        self.note("note", f"s{sid} CRASH (kept {keep} of {pending} queued writes)")
        self.checker.on_removed(sid, removed)
        for other in self.ids:
            if other != sid:
                # Its outgoing messages may still be read by the others; nothing reaches it any more.
                for message in self.network.break_link(sid, other, self.rng, self.options.stale_prob):
                    self._push_delivery(message, self.now + self.rng.randint(1, 300))
                self.network.break_link(other, sid, self.rng, 0.0)

    def restart(self, sid: int) -> None:
        """Start a new core for ``sid`` from its durable state only."""
        server = self.servers[sid]
        if server.is_up:
            return
        self._start(server)

    # --- one event ---------------------------------------------------------------------

    def step(self) -> None:
        """Handle events until one of them did something."""
        for _ in range(100_000):
            if self._handle(*heapq.heappop(self._events)):
                self.steps += 1
                return
        raise AssertionError(self.report("simulator stuck: 100,000 events in a row did nothing"))

    def run(self, steps: int, *, check: bool = True) -> None:
        """``steps`` steps, checking the invariants after each one."""
        for _ in range(steps):
            self.step()
            if check:
                self.check_invariants()

    def _handle(self, time: int, _seq: int, kind: int, payload: Any) -> bool:
        self.now = time
        if kind == DELIVER:
            return self._deliver(payload)
        if kind == TICK_EVENT:
            server = self.servers[payload]
            self._schedule(server.period, TICK_EVENT, payload)
            if server.peer is None or server.paused_until > time:
                return False
            self.note("tick", payload)
            server.peer.tick()
            self._handle_output(server)
            return True
        if kind == FLUSH:
            return self._flush(*payload)
        if kind == PROPOSE:
            if not self.clients_enabled:
                return False
            self._schedule(self._exp(self.options.propose_mean), PROPOSE, None)
            return self._client_propose()
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
            source, target = payload
            if self.links_down_until.get(payload, 0) > time:
                return False
            if not (self.servers[source].is_up and self.servers[target].is_up):
                return False
            self.network.restore_link(source, target)
            self.note("note", f"link s{source}->s{target} up")
            return True
        if kind == HEAL:
            if payload != self._partition or not self.network.blocked:
                return False
            self.heal()
            return True
        if kind == REPORT:
            return self._report(*payload)
        if kind == CRASH:
            return self._buggify_crash(*payload)
        raise AssertionError(kind)  # pragma: no cover

    def _deliver(self, message: InFlight) -> bool:
        envelope = message.envelope
        target = self.servers[envelope.target]
        if target.is_up and target.paused_until > self.now and message.state != "lost":
            # A paused process reads nothing; the message waits in its socket (FIFO kept:
            # every later message of this link is deferred behind it).
            self._push_delivery(message, target.paused_until)
            return False
        if message.state == "live":
            front = self.network.front(message)
            if front is not message:
                # An earlier message of this link was deferred behind a pause: go after it.
                self._push_delivery(message, max(self.now, front.due))
                return False
        stale = message.state == "stale"
        if not self.network.take(message):
            self.note("drop", envelope, "link broke")
            return True
        if target.peer is None or message.incarnation != target.incarnation:
            self.note("drop", envelope, "target restarted" if target.peer else "target down")
            return True
        self.note("stale" if stale else "recv", envelope)
        target.peer.step(envelope)
        self._handle_output(target)
        return True

    def _push_delivery(self, message: InFlight, time: int) -> None:
        message.due = time
        self._seq += 1
        heapq.heappush(self._events, (time, self._seq, DELIVER, message))

    def _flush(self, sid: int, incarnation: int) -> bool:
        server = self.servers[sid]
        if server.peer is None or server.incarnation != incarnation:
            return False
        if server.paused_until > self.now:
            self._seq += 1
            heapq.heappush(self._events, (server.paused_until, self._seq, FLUSH, (sid, incarnation)))
            return False
        server.flush_scheduled = False
        pending = len(server.disk.pending)
        if not pending or server.disk_held:
            return False
        faulty = self.faults_enabled  # heal_and_settle ends the disk's faults too
        if faulty and self.options.fsync_error_prob and self.rng.random() < self.options.fsync_error_prob:
            self.note("note", f"s{sid} fsync error")
            self.crash(sid, keep=0)
            self._schedule(self.rng.randint(self.options.down_min, self.options.down_max), RESTART, sid)
            return True
        count = pending
        if pending > 1 and self.rng.random() < self.options.partial_flush_prob:
            count = self.rng.randint(1, pending - 1)
        if faulty and self.options.epoch_crash_prob:
            cut = next(
                (
                    index
                    for index, record in enumerate(server.disk.pending[:count])
                    if isinstance(record, EpochRecord) and record.current_epoch is not None
                ),
                None,
            )
            if cut is not None and self.rng.random() < self.options.epoch_crash_prob:
                self.note("note", f"s{sid} crashes before its currentEpoch write ({cut} of {pending} queued made it)")
                self.crash(sid, keep=cut)
                self._schedule(self.rng.randint(self.options.down_min, self.options.down_max), RESTART, sid)
                return True
        self.flushes += 1
        if self.crash_at_flush is not None and self.crash_at_flush[0] == self.flushes:
            # Crash exactly at this durable step: before the write, or after it but before
            # the core hears of it.
            after = self.crash_at_flush[1]
            self.note("note", f"s{sid} crashes {'after' if after else 'before'} durable write #{self.flushes}")
            self.crash(sid, keep=count if after else 0)
            self._schedule(self.rng.randint(self.options.down_min, self.options.down_max), RESTART, sid)
            return True
        seq, removed = server.disk.flush(count)
        self.note("durable", sid, seq, count)
        self.checker.on_removed(sid, removed)
        server.durable_seq = seq
        if self.options.late_report_prob and self.rng.random() < self.options.late_report_prob:
            # The write is durable (and visible through DurableState) but the shell has not
            # told the core yet: allowed by the contract, and a window worth testing.
            self._schedule(self.rng.randint(1, self.options.disk_max), REPORT, (sid, server.incarnation))
        else:
            server.peer.persisted(seq)
            server.reported_seq = seq
            self._handle_output(server)
        self._schedule_flush(server)
        return True

    def _buggify_crash(self, sid: int, incarnation: int) -> bool:
        """The crash a role change scheduled (:attr:`SimOptions.role_crash_prob`)."""
        server = self.servers[sid]
        down = sum(1 for other in self.servers.values() if not other.is_up)
        if not self.faults_enabled or server.peer is None or server.incarnation != incarnation:
            return False
        if down >= self.options.max_down:
            return False
        self.note("note", f"s{sid} crashes soon after a role change (buggify)")
        self.crash(sid)
        self._schedule(self.rng.randint(self.options.down_min, self.options.down_max), RESTART, sid)
        return True

    def _report(self, sid: int, incarnation: int) -> bool:
        server = self.servers[sid]
        if server.peer is None or server.incarnation != incarnation or server.reported_seq >= server.durable_seq:
            return False
        if server.paused_until > self.now:
            self._seq += 1
            heapq.heappush(self._events, (server.paused_until, self._seq, REPORT, (sid, incarnation)))
            return False
        self.note("note", f"s{sid} told: durable through seq {server.durable_seq}")
        server.peer.persisted(server.durable_seq)
        server.reported_seq = server.durable_seq
        self._handle_output(server)
        return True

    def flush_now(self, sid: int, count: int | None = None) -> None:
        """Make the first ``count`` (default: all) queued writes of ``sid`` durable right now."""
        server = self.servers[sid]
        assert server.peer is not None, f"s{sid} is down"
        pending = len(server.disk.pending)
        count = pending if count is None else min(count, pending)
        if not count:
            return
        seq, removed = server.disk.flush(count)
        self.note("durable", sid, seq, count)
        self.checker.on_removed(sid, removed)
        server.peer.persisted(seq)
        server.durable_seq = server.reported_seq = seq
        self._handle_output(server)

    def hold_disk(self, sid: int, held: bool) -> None:
        """Stop (or resume) flushing server ``sid``'s write queue."""
        server = self.servers[sid]
        server.disk_held = held
        self.note("note", f"s{sid} disk {'HELD' if held else 'released'}")
        if not held:
            self._schedule_flush(server)

    def _schedule_flush(self, server: Server) -> None:
        if server.disk.pending and not server.flush_scheduled and not server.disk_held:
            server.flush_scheduled = True
            delay = self.rng.randint(self.options.disk_min, self.options.disk_max)
            self._schedule(delay, FLUSH, (server.id, server.incarnation))

    # --- carrying out a core's output -------------------------------------------------------

    def _handle_output(self, server: Server) -> None:
        assert server.peer is not None
        out = server.peer.take_output()
        sid = server.id
        options = self.options
        for envelope in out.send:
            if envelope.source != sid or envelope.target == sid or envelope.target not in self.servers:
                self.checker.fail(f"s{sid}: bad envelope {envelope!r}")
                continue
            delay = self.rng.randint(options.delay_min, options.delay_max)
            if options.slow_prob and self.rng.random() < options.slow_prob:
                delay = self.rng.randint(options.delay_max, options.slow_max)
            target = self.servers[envelope.target]
            message = self.network.send(envelope, self.now, delay, target.incarnation)
            if message is None:
                self.note("drop", envelope, "no link")
            else:
                self._push_delivery(message, self.network.arrival(message))
        if out.persist:
            self.note("persist", sid, tuple(out.persist))
            for record in out.persist:
                zxid = getattr(record, "zxid", None)
                txn = getattr(record, "txn", None)
                if zxid is not None and txn is not None:
                    self.checker.on_log(sid, zxid, txn)
            server.disk.append(out.persist)
            self._schedule_flush(server)
        if out.install is not None:
            zxid = out.install
            # The application reloads from the snapshot that was just made durable.
            if server.disk.base_zxid != zxid:
                self.checker.fail(
                    f"s{sid}: installs {zxid_str(zxid)}, its disk holds {zxid_str(server.disk.base_zxid)}"
                )
            state = list(server.disk.base)
            self.note("install", sid, zxid, len(state))
            self.checker.on_install(sid, server.app, zxid, state)
            server.app = state
        for zxid, txn in out.deliver:
            self.note("deliver", sid, zxid, txn)
            self.checker.on_deliver(sid, server.incarnation, server.app, zxid, txn)
            server.app.append((zxid, txn))
            server.delivered.append((server.incarnation, zxid, txn))
        for target in out.disconnect:
            # A hint (the follower would learn of it through link_down in production,
            # which this simulator does not model): the links break, their messages are lost.
            self.note("note", f"s{sid} drops its links with s{target}")
            for source, dest in ((sid, target), (target, sid)):
                self.network.break_link(source, dest, self.rng, 0.0)
                if self.servers[source].is_up and self.servers[dest].is_up:
                    self.network.restore_link(source, dest)
        for change in out.roles:
            self.note("role", sid, change)
            if (
                self.faults_enabled
                and options.role_crash_prob
                and change.role is not Role.LOOKING
                and self.rng.random() < options.role_crash_prob
            ):
                self._schedule(self.rng.randint(1, options.role_crash_within), CRASH, (sid, server.incarnation))
        if out.ready is not None:
            self.note("ready", sid, out.ready)
            server.ready = out.ready
            if out.ready:
                peer = server.peer
                self.checker.on_ready(sid, peer.role, peer.leader_id, peer.epoch)
        self.checker.drain_disk_problems()

    # --- clients ---------------------------------------------------------------------------

    def leaders(self) -> list[Server]:
        """Servers whose core is an established leader right now."""
        return [
            server
            for server in self.servers.values()
            if server.peer is not None and server.peer.is_ready and server.peer.role is Role.LEADING
        ]

    def new_txn(self) -> bytes:
        """A unique txn for this run."""
        self.txn_count += 1
        return f"c{self.options.seed}-{self.txn_count}".encode()

    def propose(self, sid: int, txn: bytes | None = None) -> Zxid | None:
        """A client asks ``sid`` to order ``txn`` (default: a fresh one). None if refused."""
        server = self.servers[sid]
        assert server.peer is not None
        peer = server.peer
        txn = txn if txn is not None else self.new_txn()
        was_leader = peer.is_ready and peer.role is Role.LEADING
        try:
            zxid = peer.propose(txn)
        except NotLeaderError:
            self.note("propose", sid, txn, "NotLeaderError")
            if was_leader:
                self.note("note", f"s{sid} refused a proposal while an established leader")
            return None
        self.note("propose", sid, txn, zxid_str(zxid))
        if not was_leader:
            self.checker.fail(f"s{sid}: accepted a proposal while not an established leader")
        self.checker.on_propose(sid, server.incarnation, txn, zxid)
        self._handle_output(server)
        return zxid

    def _client_propose(self) -> bool:
        awake = [s for s in self.servers.values() if s.peer is not None and s.paused_until <= self.now]
        if not awake:
            return False
        leaders = [s for s in self.leaders() if s.paused_until <= self.now]
        if leaders and self.rng.random() < self.options.propose_to_leader_prob:
            target = self.rng.choice(leaders)
        else:
            target = self.rng.choice(awake)
        self.propose(target.id)
        return True

    # --- faults ----------------------------------------------------------------------------

    def _fault(self) -> bool:
        names = [name for name, _ in self.options.fault_weights]
        weights = [weight for _, weight in self.options.fault_weights]
        if not any(weights):
            return False
        name = self.rng.choices(names, weights)[0]
        up = [sid for sid in self.ids if self.servers[sid].is_up]
        options = self.options
        if name == "crash":
            down = len(self.ids) - len(up)
            if not up or down >= options.max_down:
                return False
            sid = self.rng.choice(up)
            self.crash(sid)
            self._schedule(self.rng.randint(options.down_min, options.down_max), RESTART, sid)
        elif name == "crash_all":
            if self.rng.random() > 0.2 or not up:  # rarer than the others
                return False
            self.note("note", "POWER FAILURE")
            for sid in up:
                self.crash(sid)
                self._schedule(self.rng.randint(options.down_min, options.down_max), RESTART, sid)
        elif name in ("partition", "one_way"):
            if name == "partition":
                shuffled = self.ids[:]
                self.rng.shuffle(shuffled)
                cut = self.rng.randint(1, len(shuffled) - 1)
                side_a, side_b = shuffled[:cut], shuffled[cut:]
                pairs = {(a, b) for a in side_a for b in side_b} | {(b, a) for a in side_a for b in side_b}
                text = f"PARTITION {side_a} | {side_b}"
            else:
                pairs = set()
                for _ in range(self.rng.randint(1, len(self.ids))):
                    a, b = self.rng.sample(self.ids, 2)
                    pairs.add((a, b))
                text = "ONE-WAY " + " ".join(f"s{a}-/->s{b}" for a, b in sorted(pairs))
            self.partition(pairs, text)
            self._schedule(self.rng.randint(options.partition_min, options.partition_max), HEAL, self._partition)
        elif name == "link_break":
            a, b = self.rng.sample(self.ids, 2)
            directions = [(a, b), (b, a)] if self.rng.random() < 0.5 else [(a, b)]
            for source, target in directions:
                self.break_link(source, target, down_for=self.rng.randint(1, 150))
        elif name == "pause":
            candidates = [sid for sid in up if self.servers[sid].paused_until <= self.now]
            if not candidates:
                return False
            sid = self.rng.choice(candidates)
            length = self.rng.randint(10, options.pause_max)
            self.servers[sid].paused_until = self.now + length
            self.note("note", f"s{sid} PAUSE for {length}")
        elif name == "clock_jump":
            candidates = [sid for sid in up if self.servers[sid].paused_until <= self.now]
            if not candidates:
                return False
            sid = self.rng.choice(candidates)
            ticks = self.rng.randint(2, 6)
            self.note("note", f"s{sid} CLOCK JUMP {ticks} ticks")
            server = self.servers[sid]
            for _ in range(ticks):
                assert server.peer is not None
                server.peer.tick()
                self._handle_output(server)
        elif name == "purge":
            candidates = [sid for sid in up if self.servers[sid].app]
            if not candidates:
                return False
            sid = self.rng.choice(candidates)
            self.purge(sid)
        return True

    def partition(self, pairs: set[tuple[int, int]], text: str = "") -> None:
        """Block every (source, target) in ``pairs`` (replacing any current partition)."""
        self._partition += 1
        self.network.blocked = set(pairs)
        self.note("note", text or "PARTITION " + " ".join(f"s{a}-/->s{b}" for a, b in sorted(pairs)))
        for source, target in sorted(pairs):
            for message in self.network.break_link(source, target, self.rng, self.options.stale_prob):
                self._push_delivery(message, self.now + self.rng.randint(1, 300))
            if self.servers[source].is_up and self.servers[target].is_up:
                self.network.restore_link(source, target)  # reconnects, but the block drops everything

    def heal(self) -> None:
        """Remove every partition."""
        self._partition += 1
        self.network.blocked = set()
        self.note("note", "HEAL")

    def break_link(self, source: int, target: int, *, down_for: int) -> None:
        """Break one link; it reconnects after ``down_for`` time units."""
        self.note("note", f"link s{source}->s{target} BREAK for {down_for}")
        for message in self.network.break_link(source, target, self.rng, self.options.stale_prob):
            self._push_delivery(message, self.now + down_for + self.rng.randint(1, 100))
        self.links_down_until[(source, target)] = self.now + down_for
        self._schedule(down_for, LINK_UP, (source, target))

    def purge(self, sid: int) -> None:
        """The shell snapshots server ``sid``'s application state and drops the log it covers."""
        server = self.servers[sid]
        self.note("note", f"s{sid} snapshot+purge at {zxid_str(server.app[-1][0] if server.app else 0)}")
        server.disk.purge(server.app)
        self.checker.drain_disk_problems()

    # --- checks ----------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise :class:`InvariantError` if any invariant failed so far."""
        if self.checker.violations:
            raise InvariantError(self.report("; ".join(self.checker.violations[:5])))

    def report(self, headline: str, lines: int = 50) -> str:
        """A failure message: seed, options, server states and the trace tail."""
        parts = [
            f"{headline}",
            f"replay: pytest tests/sim --seed {self.options.seed}   ({self.options.describe()})",
            f"step {self.steps}, time {self.now}",
        ]
        for sid, server in self.servers.items():
            parts.append(f"  s{sid}: {self.describe_server(server)}")
        parts.append(f"last {lines} trace lines:")
        parts.extend(self.trace_tail(lines))
        return "\n".join(parts)

    def describe_server(self, server: Server) -> str:
        """One line of a server's state."""
        if server.peer is None:
            state = "DOWN"
        else:
            peer = server.peer
            state = f"{peer.role.name} leader={peer.leader_id} epoch={peer.epoch} ready={peer.is_ready}"
        top = zxid_str(server.app[-1][0]) if server.app else "0.0"
        return f"{state} delivered={len(server.app)}@{top} disk: {server.disk.describe()}"

    def converged(self) -> Server | None:
        """The leader, if every server is up and in one established epoch under it."""
        leaders = self.leaders()
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        assert leader.peer is not None
        for server in self.servers.values():
            peer = server.peer
            if peer is None or not peer.is_ready:
                return None
            if server is not leader and (
                peer.role is not Role.FOLLOWING or peer.leader_id != leader.id or peer.epoch != leader.peer.epoch
            ):
                return None
        return leader

    def heal_and_settle(self, *, max_ticks: int = 400, check: bool = True) -> Server:
        """End all faults, then require progress.

        Heals partitions and links, wakes paused servers, restarts crashed ones, stops the
        random clients and faults, and runs until one leader leads everyone, then until a
        fresh txn proposed to it is delivered everywhere, and all application states are equal.

        Returns:
            The leader.

        Raises:
            LivenessError: no progress within ``max_ticks`` ticks.
            InvariantError: as :meth:`check_invariants`, checked after every step.
        """
        self.faults_enabled = False
        self.clients_enabled = False
        self.note("note", "HEAL AND SETTLE")
        self.heal()
        self.links_down_until.clear()
        for sid in self.ids:
            self.servers[sid].paused_until = 0
            self.servers[sid].disk_held = False
            self.restart(sid)
            self._schedule_flush(self.servers[sid])
        for source, target in self.network.links:
            self.network.restore_link(source, target)
        deadline = self.now + max_ticks * TICK
        zxid: Zxid | None = None
        proposed_under: tuple[int, int, int] | None = None  # (leader, incarnation, epoch) that took the txn
        while self.now < deadline:
            self.step()
            if check:
                self.check_invariants()
            leader = self.converged()
            if leader is None or leader.peer is None:
                continue
            under = (leader.id, leader.incarnation, leader.peer.epoch)
            if proposed_under != under:
                # No txn yet, or the leader that took it lost its epoch (the txn may be gone): a fresh one.
                zxid = self.propose(leader.id)
                proposed_under = under if zxid is not None else None
                continue
            assert zxid is not None
            if all(server.app and server.app[-1][0] >= zxid for server in self.servers.values()):
                break
        else:
            raise LivenessError(self.report(f"no progress within {max_ticks} ticks after healing"))
        # Let the leader's own in-flight work drain a little, then compare.
        self.checker.full_check({sid: server.app for sid, server in self.servers.items()})
        if check:
            self.check_invariants()
        states = {tuple(server.app) for server in self.servers.values()}
        if len(states) != 1:
            raise InvariantError(self.report("after settling, the servers' delivered states differ"))
        final = next(iter(states))
        if list(final) != self.checker.committed:
            raise InvariantError(self.report("after settling, the common state is not the committed sequence"))
        return leader  # type: ignore[return-value]

    def summary(self) -> dict[str, Any]:
        """Counters for reports and tuning."""
        return {
            "steps": self.steps,
            "time": self.now,
            "committed": len(self.checker.committed),
            "proposed": len(self.checker.proposed),
            "epochs": len(self.checker.leaders),
            "incarnations": sum(server.incarnation for server in self.servers.values()),
        }


def roles_line(sim: Simulation) -> str:
    """``s1=FOLLOWING(3)@2 s2=DOWN ...`` for transcripts."""
    parts = []
    for sid, server in sim.servers.items():
        if server.peer is None:
            parts.append(f"s{sid}=DOWN")
        else:
            peer = server.peer
            ready = "" if peer.is_ready else "?"
            parts.append(f"s{sid}={peer.role.name}{ready}(e{peer.epoch})")
    return " ".join(parts)


def run_seed(options: SimOptions, steps: int, peer_factory: PeerFactory | None = None) -> Simulation:
    """Run ``steps`` checked steps, then heal and settle; any failure names the seed.

    Raises:
        InvariantError: an invariant failed, or the core raised (its message has the report).
        LivenessError: no progress after healing.
    """
    sim = Simulation(options, peer_factory)
    try:
        sim.run(steps)
        sim.heal_and_settle()
    except (InvariantError, LivenessError):
        raise
    except Exception as error:
        raise InvariantError(sim.report(f"the core raised {error!r}")) from error
    return sim
