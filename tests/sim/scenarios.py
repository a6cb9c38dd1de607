"""Scripted scenarios: a tiny language over the simulator, with checked-in transcripts.

A scenario is a text file in ``tests/sim/transcripts/``. Lines starting with ``> `` are
commands; lines starting with ``#`` are comments, kept as they are; everything else is
the transcript the commands produced last time. The test reruns the commands and
compares: a protocol change shows up as a diff to review. To accept new transcripts,
run with ``COORD_UPDATE_TRANSCRIPTS=1``.

Header lines before the first command set up the run: ``# servers: 5`` (default 3) and
``# config: init_limit_ticks=20 snap_threshold_txns=2`` (``PeerConfig`` overrides).

Commands (server ids are 1..N; the leader is whoever is the established leader now):

``elect [TICKS]``              run until one established leader leads every server that is up
                               and not cut off from it
``propose [S] TXN``            a client asks S (default: the leader) to order TXN
``run TICKS``                  let time pass
``wait-role S ROLE [TICKS]``   run until S's core is LOOKING / FOLLOWING / LEADING
``wait-pending S N [TICKS]``   run until S has at least N writes queued (see ``hold``)
``settle [TICKS]``             run until nothing changes any more (at most TICKS, default 60)
``partition 1 | 2 3``          cut the ensemble in two (symmetric)
``block 1->3 2->1``            one-way blocks (replacing any partition)
``heal``                       remove all partitions
``crash S [keep N]``           kill a server: its queued writes are lost (but the first N)
``restart S``                  start it again from its durable state
``hold S`` / ``release S``     stop / resume flushing S's disk on its own
``flush S [N]``                make S's first N (default: all) queued writes durable now
``purge S``                    S snapshots its state and drops the log the snapshot covers
``state``                      print every server's disk and delivered state
``expect-leader S``            fail unless S is the established leader
``expect-delivered S TXN...``  fail unless S delivered exactly these txns (in order)

During each command the transcript shows the events that matter (messages other than
heartbeats, writes, deliveries, installs, role changes, crashes) without times, then one
``=`` line with every server's role and epoch. Invariants are checked after every step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from coord.zab.types import Role
from tests.sim.sim import TICK, PeerFactory, SimOptions, Simulation, roles_line
from tests.sim.trace import format_event, zxid_str

TRANSCRIPTS = Path(__file__).parent / "transcripts"

# Message types the transcript leaves out: they recur every tick and say nothing new.
QUIET_MESSAGES = ("Ping", "Pong", "Heartbeat")
HANDSHAKE = re.compile(r"handshake=(\d+)")


class ScriptError(AssertionError):
    """A command failed (bad syntax, or an ``expect`` that did not hold)."""


def scenario_options(servers: int = 3, seed: int = 0) -> SimOptions:
    """Options for scripted runs: no random faults, no random clients, short delays.

    Server i first ticks at 10 * i, then about every 100 time units, each clock running a
    little (fixed, seeded) bit fast or slow, as real clocks do. (Phase-locked clocks once
    livelocked the election: FINDINGS.md F2, now a regression test.)
    """
    return SimOptions(
        seed=seed,
        servers=servers,
        delay_min=1,
        delay_max=10,
        disk_min=1,
        disk_max=10,
        partial_flush_prob=0.0,
        crash_keep_prob=0.0,
        clock_skew=0.05,
        tick_phases=tuple(10 * sid for sid in range(1, servers + 1)),
        propose_mean=0,
        fault_mean=0,
    )


class Scenario:
    """Runs commands against one :class:`Simulation` and collects the transcript."""

    def __init__(
        self, servers: int = 3, *, seed: int = 0, peer_factory: PeerFactory | None = None, **options: object
    ) -> None:
        self.sim = Simulation(replace(scenario_options(servers, seed), **options), peer_factory)  # type: ignore[arg-type]
        self.lines: list[str] = []
        self._handshakes: dict[str, str] = {}
        self._mark = 0
        self._flush_events()  # start-up events belong to no command

    # --- transcript -----------------------------------------------------------------

    def _flush_events(self) -> None:
        events = self.sim._trace[self._mark :]
        self._mark = len(self.sim._trace)
        for time, kind, args in events:
            if kind == "tick":
                continue
            if kind in ("recv", "stale", "drop"):
                name = type(args[0].message).__name__
                if name.startswith(QUIET_MESSAGES):
                    continue
            line = format_event(time, kind, args).lstrip().split(" ", 1)[1]
            self.lines.append("  " + HANDSHAKE.sub(self._handshake_name, line))

    def _handshake_name(self, match: re.Match[str]) -> str:
        # Handshakes are random 64-bit numbers: name them in order of appearance instead,
        # so that a change in how the core draws them does not rewrite every transcript.
        name = self._handshakes.setdefault(match.group(1), f"h{len(self._handshakes) + 1}")
        return f"handshake={name}"

    def _status(self) -> None:
        self.lines.append(f"  = {roles_line(self.sim)}")

    # --- running ----------------------------------------------------------------------

    def _step(self) -> None:
        self.sim.step()
        self.sim.check_invariants()

    def _run_until(self, done: Callable[[], bool], ticks: int, what: str) -> None:
        deadline = self.sim.now + ticks * TICK
        while not done():
            if self.sim.now >= deadline:
                raise ScriptError(self.sim.report(f"{what}: not within {ticks} ticks"))
            self._step()

    def _signature(self) -> tuple[object, ...]:
        parts: list[object] = []
        for server in self.sim.servers.values():
            peer = server.peer
            parts.append(
                (
                    None if peer is None else (peer.role, peer.epoch, peer.is_ready, peer.leader_id),
                    len(server.app),
                    server.disk.last_zxid(),
                    len(server.disk.pending),
                )
            )
        return tuple(parts)

    def established(self) -> bool:
        """One established leader, and every up server it can talk to (both ways) ready under it."""
        leaders = self.sim.leaders()
        if len(leaders) != 1:
            return False
        leader = leaders[0]
        assert leader.peer is not None
        network = self.sim.network
        for server in self.sim.servers.values():
            peer = server.peer
            if peer is None or server is leader:
                continue
            if (leader.id, server.id) in network.blocked or (server.id, leader.id) in network.blocked:
                continue
            if not (peer.is_ready and peer.leader_id == leader.id and peer.epoch == leader.peer.epoch):
                return False
        return True

    def leader_id(self) -> int:
        """The established leader (fails if there is none)."""
        leaders = self.sim.leaders()
        if len(leaders) != 1:
            raise ScriptError(self.sim.report(f"expected one established leader, found {[s.id for s in leaders]}"))
        return leaders[0].id

    def run(self, command: str) -> None:
        """Run one command line and add its transcript."""
        words = command.split()
        if not words:
            return
        self.lines.append(f"> {command}")
        name, args = words[0], words[1:]
        sim = self.sim
        names_server = len(args) >= (2 if name == "propose" else 1)
        if name in ("propose", "flush") and names_server and sim.servers[int(args[0])].peer is None:
            raise ScriptError(f"{command}: s{args[0]} is down")
        if name == "elect":
            self._run_until(self.established, int(args[0]) if args else 100, "elect")
            self._flush_events()
            self.lines.append(f"  leader s{self.leader_id()}")
        elif name == "propose":
            if len(args) == 2:
                sid, txn = int(args[0]), args[1]
            else:
                sid, txn = self.leader_id(), args[0]
            zxid = sim.propose(sid, txn.encode())
            sim.check_invariants()
            self._flush_events()
            if zxid is None:
                self.lines.append(f"  s{sid} refused {txn}")
        elif name == "run":
            deadline = sim.now + int(args[0]) * TICK
            while sim.now < deadline:
                self._step()
            self._flush_events()
        elif name == "settle":
            ticks = int(args[0]) if args else 60
            deadline = sim.now + ticks * TICK
            signature, stable_since = self._signature(), sim.now
            while sim.now - stable_since < 3 * TICK or any(s.disk.pending for s in sim.servers.values() if s.peer):
                if sim.now >= deadline:
                    break
                self._step()
                now_signature = self._signature()
                if now_signature != signature:
                    signature, stable_since = now_signature, sim.now
            self._flush_events()
        elif name == "partition":
            if "|" not in args:
                raise ScriptError(f"partition needs a '|': {command}")
            cut = args.index("|")
            side_a, side_b = [int(a) for a in args[:cut]], [int(b) for b in args[cut + 1 :]]
            pairs = {(a, b) for a in side_a for b in side_b} | {(b, a) for a in side_a for b in side_b}
            sim.partition(pairs, f"PARTITION {side_a} | {side_b}")
            self._flush_events()
        elif name == "block":
            pairs = set()
            for arg in args:
                source, target = arg.split("->")
                pairs.add((int(source), int(target)))
            sim.partition(pairs)
            self._flush_events()
        elif name == "heal":
            sim.heal()
            self._flush_events()
        elif name == "crash":
            keep = int(args[2]) if len(args) == 3 and args[1] == "keep" else 0
            sim.crash(int(args[0]), keep=keep)
            sim.check_invariants()
            self._flush_events()
        elif name == "restart":
            sim.restart(int(args[0]))
            sim.check_invariants()
            self._flush_events()
        elif name == "flush":
            sim.flush_now(int(args[0]), int(args[1]) if len(args) > 1 else None)
            sim.check_invariants()
            self._flush_events()
        elif name in ("hold", "release"):
            sim.hold_disk(int(args[0]), name == "hold")
            self._flush_events()
        elif name == "purge":
            sim.purge(int(args[0]))
            sim.check_invariants()
            self._flush_events()
        elif name == "state":
            self._flush_events()
            for sid, server in sim.servers.items():
                delivered = " ".join(f"{zxid_str(z)}={t.decode()}" for z, t in server.app)
                self.lines.append(f"  s{sid} disk {server.disk.describe()}")
                self.lines.append(f"  s{sid} delivered [{delivered}]")
        elif name == "wait-role":
            sid, role = int(args[0]), Role[args[1]]
            ticks = int(args[2]) if len(args) > 2 else 60

            def has_role() -> bool:
                peer = sim.servers[sid].peer
                return peer is not None and peer.role is role

            self._run_until(has_role, ticks, command)
            self._flush_events()
        elif name == "wait-pending":
            sid, count = int(args[0]), int(args[1])
            ticks = int(args[2]) if len(args) > 2 else 60
            self._run_until(lambda: len(sim.servers[sid].disk.pending) >= count, ticks, command)
            self._flush_events()
        elif name == "expect-leader":
            if self.leader_id() != int(args[0]):
                raise ScriptError(sim.report(f"expected leader s{args[0]}, got s{self.leader_id()}"))
        elif name == "expect-delivered":
            server = sim.servers[int(args[0])]
            got = [txn.decode() for _, txn in server.app]
            if got != args[1:]:
                raise ScriptError(sim.report(f"s{args[0]} delivered {got}, expected {args[1:]}"))
        else:
            raise ScriptError(f"unknown command: {command}")
        self._status()

    def check_converged(self) -> None:
        """The end of every script: heal, settle, everyone equal (see ``heal_and_settle``)."""
        self.sim.heal_and_settle()


def parse_transcript(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Split a transcript file into its settings and its script.

    Returns:
        The ``# key: value`` lines before the first command (``servers``, ``config``), and
        the script as ``("comment", line)`` / ``("command", text)`` items in file order.
    """
    settings: dict[str, str] = {}
    script: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith("> "):
            script.append(("command", line[2:].strip()))
        elif line.startswith("# end:"):
            continue  # written by run_transcript
        elif line.startswith("#"):
            script.append(("comment", line))
            key, colon, value = line[1:].partition(":")
            if colon and not any(kind == "command" for kind, _ in script):
                settings[key.strip()] = value.strip()
    return settings, script


def run_transcript(text: str, peer_factory: PeerFactory | None = None) -> str:
    """Rerun the script of a transcript file; returns the new file text.

    Settings: ``# servers: N`` (default 3), ``# config: key=value ...`` (PeerConfig overrides).
    """
    settings, script = parse_transcript(text)
    config = tuple((key, int(value)) for key, value in (item.split("=") for item in settings.get("config", "").split()))
    scenario = Scenario(int(settings.get("servers", "3")), peer_factory=peer_factory, config=config)
    out: list[str] = []
    for kind, line in script:
        if kind == "comment":
            out.append(line)
            continue
        scenario.lines = []
        scenario.run(line)
        out.extend(scenario.lines)
    scenario.check_converged()
    out.append(f"# end: converged, {len(scenario.sim.checker.committed)} txns committed")
    return "\n".join(out) + "\n"
