"""What shapes one run of the whole-server simulator (:mod:`tests.sim.servers`), and how a seed picks it.

Apart from the simulator so that the mix a seed gets reads in one place: each seed
switches whole kinds of fault (:data:`FAULT_KINDS`) on or off (swarm testing) and draws
the delays, disk speeds, number of clients and snapshot frequency that go with them.
:meth:`ServerSimOptions.from_seed` draws from its own generator, in a fixed order: a
change to that order changes which seeds run what.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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
    snap_chunk_bytes: int = 1 << 20  # a SNAP streams in chunks this large
    snap_window_chunks: int = 4

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
        clients = rng.choice((2, 4, 6, 8))
        delay_max = rng.choice((5, 20, 50)) if delays else 3
        slow_prob = rng.choice((0.0, 0.01, 0.05)) if delays else 0.0
        stale_prob = rng.choice((0.0, 0.05)) if "link_breaks" in faults else 0.0
        client_delay_max = rng.choice((5, 20, 40)) if delays else 3
        disk_max = tuple(rng.choice((5, 20, 60, 150)) for _ in range(servers)) if disk else ()
        partial_flush_prob = rng.choice((0.0, 0.3)) if disk else 0.0
        crash_keep_prob = rng.choice((0.0, 0.3, 0.7))
        fault_mean = rng.choice((100, 250, 500))
        op_mean = rng.choice((10, 30, 80))
        snapshot_every_txns = rng.choice((5, 20, 100, 1_000_000))
        clock_skew = rng.choice((0.0, 0.05, 0.1))
        # Drawn after the others (a seed keeps its mix): SNAPs in many small chunks, or one.
        snap_chunk_bytes = rng.choice((256, 4096, 1 << 20))
        snap_window_chunks = rng.choice((2, 4))
        return cls(
            seed=seed,
            servers=servers,
            faults=faults,
            clients=clients,
            delay_max=delay_max,
            slow_prob=slow_prob,
            stale_prob=stale_prob,
            client_delay_max=client_delay_max,
            disk_max=disk_max,
            partial_flush_prob=partial_flush_prob,
            crash_keep_prob=crash_keep_prob,
            fault_mean=fault_mean,
            op_mean=op_mean,
            one_way_prob=one_way_prob if one_way else 0.0,
            snapshot_every_txns=snapshot_every_txns,
            clock_skew=clock_skew,
            max_down=(servers - 1) // 2,
            snap_chunk_bytes=snap_chunk_bytes,
            snap_window_chunks=snap_window_chunks,
        )

    def describe(self) -> str:
        """One line for failure reports."""
        faults = ",".join(kind for kind in FAULT_KINDS if kind in self.faults) or "none"
        return (
            f"seed={self.seed} servers={self.servers} faults=[{faults}] clients={self.clients} "
            f"delay<={self.delay_max} slow={self.slow_prob} stale={self.stale_prob} client_delay<="
            f"{self.client_delay_max} disk<={list(self.disk_max) or 3} partial={self.partial_flush_prob} "
            f"keep={self.crash_keep_prob} fault_mean={self.fault_mean} op_mean={self.op_mean} "
            f"one_way={self.one_way_prob} snapshot_every={self.snapshot_every_txns} skew={self.clock_skew} "
            f"snap_chunk={self.snap_chunk_bytes}x{self.snap_window_chunks}"
        )
