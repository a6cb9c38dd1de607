"""The invariants of the whole-server simulator (:mod:`tests.sim.servers`), checked incrementally.

The checker sees every server's applied txns (through a recording
:class:`~coord.pipeline.Pipeline`), every tree state a server reaches, every
session-expiry decision a leader makes, and every frame a simulated client receives.
It keeps:

- ``canonical``: zxid -> the txn first applied at that zxid anywhere, and ``successor``:
  zxid -> the zxid applied right after it. Every later application must agree (the
  history is one sequence, whoever applies it).
- a *reference tree* that applies the canonical history once, in order, and an index
  of what each txn changed (``changes[path]``: the zxids and event types) and the data
  each create/set left (``data_at[(path, zxid)]``): the ground truth for reads and
  watches.
- ``digests``: zxid -> a digest of the tree at that zxid (recorded when a server's tree
  advances; every other server at that zxid must have the same one).

The invariants (numbers as in the failure messages):

1. Equal trees at equal zxids on every server, and one history: every server applies
   the same txn at a zxid and the same successor after it.
2. An acknowledged write (a reply with err 0 at zxid z) is the txn of that session and
   xid at z (and, by 1, every server that passes z has it; after healing every server
   passes every acknowledged zxid).
3. ``sync`` then read sees every write acknowledged, to any client, before the sync
   was sent (the read's zxid is at least the newest such write's).
4. Watches: an event matches a registration that has not fired yet (once per
   registration), for a change that happened at the event's zxid after the
   registration, and arrives before any reply (on that session) whose zxid is at or
   past that change. Every frame's zxid on a session is at least the last one seen
   (reads never go back in time).
5. No session expires early: a leader decides to expire a session only when the
   client was silent, on that leader's clock, for at least its timeout minus one
   session tick, counting every request, ping and reconnect that could have reached
   it (see :meth:`ServerChecker.on_expire_decision`; a touch report a network fault
   lost is not the core's fault, and is not counted).
6. Reads return the state at their zxid: a get's data is what the txn at the node's
   mzxid wrote, and no change to the node happened between that and the read's zxid;
   ``NoNode`` / ``exists`` -> None only when the node was absent at the read's zxid.
7. A follower serves clients only while its leader hears it: one that still hears its
   leader but whose own messages have not reached the leader for ``unheard_ms`` (the
   sync limit and two ticks, twice the longest delay, and how late a message from
   before a break may arrive) has stopped serving. Otherwise its clients' writes, syncs and session
   touches vanish while it answers reads (finding S2).

Violations are collected as strings; the simulator turns them into an
:class:`~tests.sim.servers.InvariantError` with the seed and the trace tail.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coord.protocol import EventType
from coord.tree import DataTree
from coord.txn import CreateSessionTxn, Txn
from tests.sim.trace import zxid_str

if TYPE_CHECKING:
    from tests.sim.servers import ServerSimulation

CREATED = EventType.NODE_CREATED
DELETED = EventType.NODE_DELETED
DATA_CHANGED = EventType.NODE_DATA_CHANGED
CHILDREN_CHANGED = EventType.NODE_CHILDREN_CHANGED

# Which one-shot watch kinds an event type fires (coord/watches.py, _FIRES_ON_PATH).
FIRES: dict[EventType, tuple[str, ...]] = {
    CREATED: ("data", "exist"),
    DATA_CHANGED: ("data", "exist"),
    DELETED: ("data", "exist", "child"),
    CHILDREN_CHANGED: ("child",),
}
# The event types that fire a kind.
FIRED_BY: dict[str, frozenset[EventType]] = {
    kind: frozenset(event for event, kinds in FIRES.items() if kind in kinds) for kind in ("data", "exist", "child")
}
NODE_EVENTS = frozenset({CREATED, DELETED, DATA_CHANGED})

ACTIVITY_KEPT = 24  # recent activity records kept per session


def tree_digest(tree: DataTree) -> int:
    """A digest of every node (all fields) and session: equal trees, equal digests (in one process)."""
    return hash((frozenset(tree.nodes.items()), frozenset(tree.sessions.items())))


@dataclass(slots=True)
class Stint:
    """One continuous period in which a server served clients under one leader."""

    server: int
    leader: int | None
    epoch: int
    start: int
    end: int | None = None  # global time it stopped serving (None: still serving)


Activity = tuple[int, int, int, "int | None", "Stint | None"]
"""(time, order, clock jumps so far, server (None: the session's creation), that server's stint)."""

Moment = tuple[int, int, int]
"""(time, order, clock jumps so far): when something happened, ordered within a millisecond."""


@dataclass(slots=True)
class Changes:
    """What the canonical history did to one path: parallel lists, in zxid order."""

    zxids: list[int] = field(default_factory=list)
    types: list[EventType] = field(default_factory=list)


class ServerChecker:
    """Incremental invariant checks; see the module docstring."""

    def __init__(self, sim: ServerSimulation) -> None:
        self.sim = sim
        self.violations: list[str] = []
        self.canonical: dict[int, Txn] = {}
        self.successor: dict[int, int] = {}
        self.digests: dict[int, tuple[int, int]] = {}  # zxid -> (digest, first server)
        self.ref = DataTree()
        self.ref_stuck: int | None = None  # set if the reference could not follow a server
        self.changes: dict[str, Changes] = {}
        self.data_at: dict[tuple[str, int], bytes] = {}
        self.session_timeout: dict[int, int] = {}
        # session -> recent (time, order, clock jumps so far, server (None: its creation), that server's stint)
        self.activity: dict[int, deque[Activity]] = {}
        self.order = 0  # orders activity and decisions within one millisecond
        self.acked: dict[int, tuple[int, int]] = {}  # zxid -> (session, xid) of acknowledged writes
        self.acked_max = 0
        self.expiries_checked = 0
        self.syncs_checked = 0
        self.events_checked = 0
        self.reads_checked = 0
        self.findings: Counter[str] = Counter()  # open findings seen (tolerated, see the simulation)

    def fail(self, message: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(f"t={self.sim.now}: {message}")

    # --- 1: one history, equal trees -------------------------------------------------------

    def on_apply(self, sid: int, previous: int, txns: list[Txn]) -> None:
        """Server ``sid`` applies ``txns`` (in order) on top of its tree at ``previous``."""
        canonical = self.canonical
        successor = self.successor
        for txn in txns:
            zxid = txn.zxid
            known = canonical.get(zxid)
            if known is None:
                canonical[zxid] = txn
                body = txn.body
                if type(body) is CreateSessionTxn:
                    self.session_timeout[zxid] = body.timeout_ms
                    self._activity(zxid).append((self.sim.now, self.next_order(), self.sim.jumps, None, None))
            elif known != txn:
                self.fail(f"s{sid} applies {txn!r} at {zxid_str(zxid)}, another server applied {known!r} (invariant 1)")
            after = successor.get(previous)
            if after is None:
                successor[previous] = zxid
            elif after != zxid:
                self.fail(
                    f"s{sid} applies {zxid_str(zxid)} after {zxid_str(previous)}, another server applied "
                    f"{zxid_str(after)} after it: the histories diverge (invariant 1)"
                )
            if self.ref.last_zxid == previous:
                self._ref_apply(txn)
            elif self.ref.last_zxid < previous and self.ref_stuck is None:
                self.ref_stuck = previous
                self.fail(
                    f"s{sid} applies {zxid_str(zxid)} on a tree at {zxid_str(previous)} that no server reached by "
                    f"applying txns (the reference is at {zxid_str(self.ref.last_zxid)}) (invariant 1)"
                )
            previous = zxid

    def _ref_apply(self, txn: Txn) -> None:
        result = self.ref.apply(txn)
        zxid = txn.zxid
        nodes = self.ref.nodes
        for event_type, path in result.events:
            changes = self.changes.get(path)
            if changes is None:
                changes = self.changes[path] = Changes()
            changes.zxids.append(zxid)
            changes.types.append(event_type)
            if event_type is CREATED or event_type is DATA_CHANGED:
                node = nodes.get(path)
                if node is not None:
                    self.data_at[(path, zxid)] = node.data

    def on_tree(self, sid: int, tree: DataTree) -> None:
        """Server ``sid``'s tree reached a new state (after applying, installing or restarting)."""
        zxid = tree.last_zxid
        digest = tree_digest(tree)
        known = self.digests.get(zxid)
        if known is None:
            self.digests[zxid] = (digest, sid)
        elif known[0] != digest:
            self.fail(
                f"s{sid}'s tree at {zxid_str(zxid)} differs from s{known[1]}'s at the same zxid "
                f"({len(tree.nodes)} nodes, {len(tree.sessions)} sessions) (invariant 1)"
            )

    # --- 2 and 3: acknowledged writes, sync -----------------------------------------------

    def on_ack(self, client: int, session_id: int, xid: int, zxid: int, what: str) -> None:
        txn = self.canonical.get(zxid)
        if txn is None:
            self.fail(f"c{client}: {what} acknowledged at {zxid_str(zxid)}, which no server applied (invariant 2)")
        elif txn.session_id != session_id or txn.xid != xid:
            self.fail(
                f"c{client}: {what} (session {session_id:#x}, xid {xid}) acknowledged at {zxid_str(zxid)}, "
                f"but the txn there is {txn!r} (invariant 2)"
            )
        self.acked[zxid] = (session_id, xid)
        if zxid > self.acked_max:
            self.acked_max = zxid

    def check_synced_read(self, client: int, required: int, zxid: int, what: str) -> None:
        self.syncs_checked += 1
        if zxid < required:
            self.fail(
                f"c{client}: {what} after sync read at {zxid_str(zxid)}, but a write at {zxid_str(required)} was "
                "acknowledged before the sync was sent (invariant 3)"
            )

    # --- 4 and 6: watches and reads -----------------------------------------------------

    def first_change(self, path: str, after: int, until: int, types: frozenset[EventType]) -> int | None:
        """The first zxid in (after, until] at which ``path`` had a change of one of ``types``."""
        changes = self.changes.get(path)
        if changes is None:
            return None
        zxids = changes.zxids
        index = bisect.bisect_right(zxids, after)
        kinds = changes.types
        while index < len(zxids) and zxids[index] <= until:
            if kinds[index] in types:
                return zxids[index]
            index += 1
        return None

    def changed_at(self, path: str, zxid: int, event_type: EventType) -> bool:
        changes = self.changes.get(path)
        if changes is None:
            return False
        zxids = changes.zxids
        index = bisect.bisect_left(zxids, zxid)
        while index < len(zxids) and zxids[index] == zxid:
            if changes.types[index] is event_type:
                return True
            index += 1
        return False

    def exists_at(self, path: str, zxid: int) -> bool | None:
        """Whether ``path`` existed in the tree at ``zxid`` (None: unknown, the reference is behind)."""
        if zxid > self.ref.last_zxid:
            return None
        changes = self.changes.get(path)
        if path in ("/", "/coord"):
            return True
        if changes is None:
            return False
        zxids = changes.zxids
        index = bisect.bisect_right(zxids, zxid) - 1
        while index >= 0:
            kind = changes.types[index]
            if kind is CREATED:
                return True
            if kind is DELETED:
                return False
            index -= 1
        return False

    def check_get(self, client: int, path: str, zxid: int, data: bytes | None, mzxid: int | None) -> None:
        """A read of ``path`` served at ``zxid``: ``data`` and ``mzxid`` (None: no node)."""
        if zxid > self.ref.last_zxid:
            return  # cannot happen while the reference follows (a failure says so already)
        self.reads_checked += 1
        if mzxid is None:
            if self.exists_at(path, zxid):
                self.fail(f"c{client}: {path} read as absent at {zxid_str(zxid)}, where it exists (invariant 6)")
            return
        if mzxid > zxid:
            self.fail(f"c{client}: {path} read at {zxid_str(zxid)} has mzxid {zxid_str(mzxid)} (invariant 6)")
            return
        later = self.first_change(path, mzxid, zxid, NODE_EVENTS)
        if later is not None:
            self.fail(
                f"c{client}: {path} read at {zxid_str(zxid)} shows its state of {zxid_str(mzxid)}, but it changed "
                f"at {zxid_str(later)} (invariant 6)"
            )
            return
        if data is not None:
            written = self.data_at.get((path, mzxid))
            if written is None:
                self.fail(f"c{client}: {path} read with mzxid {zxid_str(mzxid)}: no write there (invariant 6)")
            elif written != data:
                self.fail(
                    f"c{client}: {path} read {data!r} with mzxid {zxid_str(mzxid)}, where {written!r} was written "
                    "(invariant 6)"
                )

    # --- 5: session expiry -------------------------------------------------------------------

    def next_order(self) -> int:
        self.order += 1
        return self.order

    def _activity(self, session_id: int) -> deque[Activity]:
        found = self.activity.get(session_id)
        if found is None:
            found = self.activity[session_id] = deque(maxlen=ACTIVITY_KEPT)
        return found

    def on_activity(self, session_id: int, sid: int, stint: Stint) -> None:
        """A request, ping or accepted reconnect of ``session_id`` reached serving server ``sid``."""
        self._activity(session_id).append((self.sim.now, self.next_order(), self.sim.jumps, sid, stint))

    def on_expire_decision(self, leader: int, session_id: int, stint: Stint, leader_since: Moment) -> None:
        """Leader ``leader`` proposes now to expire ``session_id``: check that its client was silent.

        The client's activity counts when it reached the leader itself during this
        leadership, or a follower of this leader (in this epoch) whose touch report could
        reach the leader: the follower still followed at its next session tick, the report
        had ``forward_ms`` to arrive before the decision, and no message from that follower
        to the leader was lost meanwhile (a lost report is a network fault, not the
        core's). The leader's own start counts too: a new leader gives every session a
        fresh timeout (docs/correctness.md, rule 7). Silence is measured on the leader's
        clock (its clock jumps in between count).
        """
        sim = self.sim
        self.expiries_checked += 1
        timeout = self.session_timeout.get(session_id)
        if timeout is None:
            self.fail(f"s{leader} expires session {session_id:#x}, which was never created (invariant 5)")
            return
        time = sim.now
        forward_ms = sim.forward_ms
        credit, credit_order, credit_jumps = leader_since
        credit_from = "the leader's start"
        for at, order, jumps, server, where in self.activity.get(session_id, ()):
            if order <= credit_order:
                continue
            if server is None:
                counts = True  # the session's creation
            elif server == leader:
                counts = where is stint
            else:
                assert where is not None
                counts = (
                    where.leader == leader
                    and where.epoch == stint.epoch
                    and at + forward_ms <= time
                    and (where.end is None or where.end > at + sim.session_period_max)
                    and not sim.lost_between(server, leader, at, at + forward_ms)
                )
            if counts:
                credit, credit_order, credit_jumps = at, order, jumps
                credit_from = "its creation" if server is None else f"a request at s{server}"
        jumped = sim.clock_offset_at(leader, sim.jumps) - sim.clock_offset_at(leader, credit_jumps)
        silence = time - credit + jumped
        if silence < timeout - sim.session_tick_ms:
            self.fail(
                f"s{leader} expires session {session_id:#x} (timeout {timeout} ms) only {silence} ms (on its "
                f"clock) after {credit_from} at {credit} (invariant 5)"
            )

    # --- 7: a follower serves only while its leader hears it ----------------------------------

    def check_follower_heard(self, follower: int, stint: Stint, heard_by_leader: int, heard_leader: int) -> None:
        """``follower`` serves under ``stint``: its leader last received a message from it at
        ``heard_by_leader``, and it last received one from its leader at ``heard_leader``.

        Flagged when the follower still hears its leader (within ``recent_ms``) but the
        leader has not heard it for ``unheard_ms``: a one-way cut. (After a symmetric cut a
        follower stops within the sync limit of the last message it heard, which may be
        later than the last one its leader heard: that is not flagged.)
        """
        sim = self.sim
        since = max(stint.start, heard_by_leader)
        now = sim.now
        if now - since > sim.unheard_ms and now - heard_leader <= sim.recent_ms:
            self.fail(
                f"s{follower} still serves as a follower of s{stint.leader} (epoch {stint.epoch}) and hears it, "
                f"but s{stint.leader} has received nothing from it for {now - since} ms (invariant 7)"
            )
            stint.start = now  # report once per stretch

    # --- the end -----------------------------------------------------------------------------

    def final_check(self, trees: dict[int, DataTree]) -> None:
        """After healing: every server passed every acknowledged zxid, and all trees are equal."""
        top = max(self.acked) if self.acked else 0
        for sid, tree in trees.items():
            if tree.last_zxid < top:
                self.fail(
                    f"after healing, s{sid} is at {zxid_str(tree.last_zxid)}, before the acknowledged write at "
                    f"{zxid_str(top)} (invariant 2)"
                )
        digests = {tree_digest(tree) for tree in trees.values()}
        zxids = {tree.last_zxid for tree in trees.values()}
        if len(digests) != 1 or len(zxids) != 1:
            states = ", ".join(f"s{sid}@{zxid_str(tree.last_zxid)}" for sid, tree in trees.items())
            self.fail(f"after healing, the servers' trees differ: {states} (invariant 1)")

    def stats(self) -> dict[str, Any]:
        return {
            "txns": len(self.canonical),
            "acked": len(self.acked),
            "syncs_checked": self.syncs_checked,
            "events_checked": self.events_checked,
            "reads_checked": self.reads_checked,
            "expiries_checked": self.expiries_checked,
            **{f"finding_{name}": count for name, count in sorted(self.findings.items())},
        }
