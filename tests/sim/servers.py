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

Where the code is
-----------------
:class:`ServerSimulation` is one object (one clock, one event queue, one random source
in one order, one trace) built in layers, each a subclass of the one below:

- :mod:`tests.sim.server_sim_base`: the shared state, scheduling, the trace;
- :mod:`tests.sim.server_shell`: each server's shell (its core's input and output, its
  disk, its peer messages, its end of client connections);
- :mod:`tests.sim.sim_clients`: what the clients do and check;
- :mod:`tests.sim.server_faults`: the faults;
- this module: the event loop, healing, reports and :func:`run_server_seed`.

The options are in :mod:`tests.sim.server_options`, the disk in
:mod:`tests.sim.server_disk`, the servers', connections' and clients' state in
:mod:`tests.sim.sim_state`.
"""

from __future__ import annotations

import heapq
import random
from typing import Any

from coord.protocol import CreateMode, CreateRequest
from coord.server.core import ServerCore
from tests.sim.network import Network
from tests.sim.server_checks import ServerChecker
from tests.sim.server_disk import TreeDisk
from tests.sim.server_faults import FaultInjection
from tests.sim.server_options import EVENT_FAULTS, ServerSimOptions
from tests.sim.server_options import FAULT_KINDS as FAULT_KINDS
from tests.sim.server_sim_base import (
    C2S,
    FAULT,
    FLUSH,
    HEAL,
    LINK_UP,
    PEER,
    RESET,
    RESTART,
    S2C,
    SESSION_TICK_MS,
    SNAP_START,
    SNAP_WRITE,
    STALE_LATE_MS,
    STICK,
    TICK_MS,
    WAKE,
    ZTICK,
)
from tests.sim.sim_state import Client, SimServer
from tests.sim.trace import zxid_str


class InvariantError(AssertionError):
    """An invariant failed; the message names the seed, the fault kinds and ends with the trace tail."""


class LivenessError(AssertionError):
    """After healing, the ensemble did not make progress within the bound."""


class ServerSimulation(FaultInjection):
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
