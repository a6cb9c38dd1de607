"""Invariant checkers for the ZAB simulation.

The simulator tells the :class:`Checker` about every event that could break an
invariant, as it happens; the checks are incremental (O(1) per delivered txn, O(k)
per k entries removed from a disk), so they can run after every step of thousands of
seeds. :meth:`Checker.full_check` recomputes everything from scratch, for the end of a
run and as a cross-check of the incremental bookkeeping.

Invariants (numbered as in the brief; the rules of docs/correctness.md in brackets):

1. At most one leader is ever established per epoch; everyone that becomes ready in
   an epoch agrees on who leads it. A ready server has that epoch durable as its
   currentEpoch [rule 1].
2. Delivery order is identical everywhere: every server's application state is a
   prefix of one global committed sequence, across crashes and snapshot installs.
   A txn is delivered at one position only, and at the zxid it was proposed at.
3. Every delivered txn is durable (in the log or covered by a snapshot, with the same
   content) on a quorum of servers, at all times: checked when it is first delivered
   and again whenever a TRUNC or a SNAP removes it from some disk [rules 1-3].
4. Each server delivers strictly increasing zxids, and only what is durable locally
   [rule 4]; a snapshot install never takes its application state back.
5. Nothing invented: every delivered txn was proposed by the simulator's clients.
6. One txn per zxid: no two servers ever log different txns at the same zxid.

Violations are collected, not raised, so the simulator can attach the seed and trace.
"""

from __future__ import annotations

from dataclasses import dataclass

from coord.zab.types import Role, Zxid
from tests.sim.disk import AppState, FakeDisk
from tests.sim.trace import zxid_str


def _txn(txn: bytes) -> str:
    return txn.decode(errors="replace")


@dataclass(slots=True)
class Proposed:
    """A txn some leader accepted from a client."""

    server: int
    incarnation: int
    zxid: Zxid


class Checker:
    """Incremental invariant checks over a whole ensemble. See the module docstring."""

    def __init__(self, disks: dict[int, FakeDisk], quorum: int) -> None:
        self.disks = disks
        self.quorum = quorum
        self.committed: AppState = []  # the global delivery order
        self.position: dict[Zxid, int] = {}  # zxid -> index in committed
        self.txn_position: dict[bytes, int] = {}
        self.leaders: dict[int, int] = {}  # epoch -> the leader everyone ready in it followed
        self.proposed: dict[bytes, Proposed] = {}
        self.acknowledged: set[bytes] = set()  # delivered by the leader that accepted them
        self.logged: dict[Zxid, bytes] = {}  # every txn ever queued for a log, by zxid
        # Per server, the longest delivery sequence it ever had, across crashes: whatever it
        # delivers after a restart must continue it (implied by the global order, kept
        # separately so that a failure names the server's own earlier delivery).
        self.histories: dict[int, AppState] = {sid: [] for sid in disks}
        self.violations: list[str] = []

    def fail(self, message: str) -> None:
        """Record a violation."""
        self.violations.append(message)

    # --- events --------------------------------------------------------------------

    def on_propose(self, server: int, incarnation: int, txn: bytes, zxid: Zxid) -> None:
        """A leader accepted ``txn`` at ``zxid``."""
        if txn in self.proposed:
            self.fail(f"s{server}: txn {_txn(txn)} proposed twice")
        self.proposed[txn] = Proposed(server, incarnation, zxid)

    def on_log(self, server: int, zxid: Zxid, txn: bytes) -> None:
        """A server queued a log entry (invariant 6)."""
        known = self.logged.setdefault(zxid, txn)
        if known != txn:
            self.fail(f"s{server}: logs {zxid_str(zxid)}={_txn(txn)} but another server logged {_txn(known)} there")

    def on_deliver(self, server: int, incarnation: int, app: AppState, zxid: Zxid, txn: bytes) -> None:
        """``server`` delivers ``(zxid, txn)`` on top of ``app`` (its state before this txn)."""
        where = f"s{server}: deliver {zxid_str(zxid)}={_txn(txn)}"
        if app and zxid <= app[-1][0]:
            self.fail(f"{where} after {zxid_str(app[-1][0])} (invariant 4: zxids must increase)")
        if not self.disks[server].holds(zxid, txn):
            self.fail(f"{where} but it is not durable locally (invariant 4)")
        proposal = self.proposed.get(txn)
        if proposal is None:
            self.fail(f"{where}: never proposed (invariant 5)")
        elif proposal.zxid != zxid:
            self.fail(f"{where}: it was proposed at {zxid_str(proposal.zxid)} (invariant 2)")
        elif proposal.server == server and proposal.incarnation == incarnation:
            self.acknowledged.add(txn)
        self._at_position(server, len(app), zxid, txn, where)

    def on_install(self, server: int, app: AppState, zxid: Zxid, state: AppState) -> None:
        """``server`` replaced its application state ``app`` with a snapshot at ``zxid``."""
        top = state[-1][0] if state else 0
        if len(state) < len(app):
            self.fail(
                f"s{server}: installs a snapshot at {zxid_str(zxid)} over its state at {zxid_str(app[-1][0])}: "
                f"the application goes back {len(app) - len(state)} txns (invariant 4)"
            )
        if top != zxid:
            self.fail(f"s{server}: installs a snapshot said to be at {zxid_str(zxid)} holding up to {zxid_str(top)}")
        for index, (z, t) in enumerate(state):
            self._at_position(server, index, z, t, f"s{server}: install {zxid_str(zxid)} holds {zxid_str(z)}={_txn(t)}")

    def _at_position(self, server: int, index: int, zxid: Zxid, txn: bytes, where: str) -> None:
        history = self.histories[server]
        if index < len(history):
            if history[index] != (zxid, txn):
                earlier = history[index]
                self.fail(
                    f"{where} at position {index}, where it delivered {zxid_str(earlier[0])}={_txn(earlier[1])} "
                    f"before its restart (invariant 2)"
                )
        elif index == len(history):
            history.append((zxid, txn))
        if index < len(self.committed):
            expected = self.committed[index]
            if expected != (zxid, txn):
                self.fail(
                    f"{where} at position {index}, where {zxid_str(expected[0])}={_txn(expected[1])} "
                    f"was delivered before (invariant 2: delivery order differs)"
                )
            return
        if index > len(self.committed):  # pragma: no cover - app states are prefixes
            self.fail(f"{where} at position {index} beyond the committed sequence ({len(self.committed)})")
            return
        if txn in self.txn_position:
            self.fail(f"{where}: already delivered at position {self.txn_position[txn]} (invariant 2)")
        self.committed.append((zxid, txn))
        self.position[zxid] = index
        self.txn_position[txn] = index
        self._check_quorum(zxid, txn, where)

    def _check_quorum(self, zxid: Zxid, txn: bytes, where: str) -> None:
        holders = [sid for sid, disk in self.disks.items() if disk.holds(zxid, txn)]
        if len(holders) < self.quorum:
            self.fail(
                f"{where}: committed {zxid_str(zxid)}={_txn(txn)} durable only on {holders}, "
                f"quorum is {self.quorum} (invariant 3)"
            )

    def on_removed(self, server: int, removed: list[tuple[Zxid, bytes]]) -> None:
        """Durable writes on ``server`` removed these entries (TRUNC / SNAP)."""
        for zxid, txn in removed:
            index = self.position.get(zxid)
            if index is not None and self.committed[index] == (zxid, txn):
                self._check_quorum(zxid, txn, f"s{server}: removes {zxid_str(zxid)} from its disk")

    def on_ready(self, server: int, role: Role, leader: int | None, epoch: int) -> None:
        """``server`` says it may serve: an established leader or a synced follower."""
        where = f"s{server}: ready as {role.name} of s{leader} in epoch {epoch}"
        if role is Role.LOOKING or leader is None:
            self.fail(f"{where}: ready without a leader")
            return
        if role is Role.LEADING and leader != server:
            self.fail(f"{where}: LEADING but names another leader")
        known = self.leaders.setdefault(epoch, leader)
        if known != leader:
            self.fail(f"{where}, but s{known} was established in that epoch (invariant 1)")
        disk = self.disks[server]
        if disk.current_epoch != epoch:
            self.fail(f"{where} with durable currentEpoch {disk.current_epoch} (rule 1: persist before you promise)")

    def drain_disk_problems(self) -> None:
        """Move problems the disks noticed (bad appends, epochs going back) into violations."""
        for disk in self.disks.values():
            if disk.problems:
                self.violations.extend(disk.problems)
                disk.problems.clear()

    # --- from scratch -------------------------------------------------------------------

    def full_check(self, apps: dict[int, AppState]) -> None:
        """Recheck invariants 2, 3 and 5 over the whole history (O(n) per server)."""
        for server, app in apps.items():
            if app != self.committed[: len(app)]:
                self.fail(f"s{server}: application state is not a prefix of the committed sequence")
        for zxid, txn in self.committed:
            self._check_quorum(zxid, txn, "full check")
            if txn not in self.proposed:
                self.fail(f"full check: {_txn(txn)} never proposed")
        missing = [txn for txn in self.acknowledged if txn not in self.txn_position]
        if missing:
            self.fail(f"full check: acknowledged txns lost: {sorted(missing)[:5]}")
