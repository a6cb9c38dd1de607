"""The contract between the ZAB core, its shells and the simulator.

The core (:class:`coord.zab.peer.Peer`) is a sans-IO state machine: it never
touches sockets, disks or clocks. Its *inputs* are method calls:

- ``step(envelope)``: a message from another server arrived;
- ``tick()``: one tick of logical time passed (the shell: every ``tick_ms``;
  the simulator: when it says so);
- ``persisted(through_seq)``: every record of ``Output.persist`` with
  ``seq <= through_seq`` is durable (records are written strictly in seq order);
- ``propose(txn)``: the application wants a txn ordered (established leader only);
- ``send_app(target, payload)`` / ``app_to_leader(payload)``: application messages
  that travel on the peer links in order with ZAB's own messages;
- ``barrier()``: the leader confirms it still leads a quorum (for linearizable sync).

Its *outputs* accumulate in an :class:`Output`, taken with ``take_output()``:
messages to send, records to persist (in order), txns to deliver to the
application (committed AND durable locally, strictly in zxid order), a snapshot
to install, role changes, application messages received, barriers confirmed.

Shell rule: send at once, write in order, report completions, deliver in order.
All ordering rules (ACK only after durable, NEWLEADER ack only after the history
and currentEpoch are durable, ...) live inside the core.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

Zxid = int  # (epoch << 32) | counter


class Role(enum.Enum):
    LOOKING = "looking"
    FOLLOWING = "following"
    LEADING = "leading"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfig:
    """Static configuration of one server's ZAB core. Times are in ticks."""

    server_id: int
    voters: tuple[int, ...]  # every server id of the ensemble, including this one
    election_timeout_ticks: int = 4  # re-send notifications / give up on a silent leader candidate
    finalize_wait_ticks: int = 1  # after a quorum agrees, wait this long for a better vote
    init_limit_ticks: int = 10  # discovery + synchronisation must complete within this
    sync_limit_ticks: int = 4  # a leader that hears no quorum (a follower that hears no leader) this long gives up
    heartbeat_ticks: int = 1  # leader pings followers every this many ticks
    snap_threshold_txns: int = 100_000  # a follower further behind than this gets a SNAP, not a DIFF
    max_batch_txns: int = 1_000  # txns per Proposal message
    snap_chunk_bytes: int = 1 << 20  # a SNAP streams in chunks of at most this many bytes
    snap_window_chunks: int = 4  # chunks a leader sends beyond the follower's last SnapAck


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    source: int
    target: int
    message: Any  # one of coord.zab.messages.Message


# --- records to persist (one ordered write stream; each has a seq) -------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEntry:
    """Append txn ``txn`` at ``zxid`` to the log."""

    seq: int
    zxid: Zxid
    txn: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochRecord:
    """Durably set acceptedEpoch and/or currentEpoch (None: leave as is)."""

    seq: int
    accepted_epoch: int | None = None
    current_epoch: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TruncateRecord:
    """Remove every log entry after ``zxid`` (a TRUNC from the leader)."""

    seq: int
    zxid: Zxid


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotChunkRecord:
    """Part of a snapshot being received (a SNAP streams): ``data`` goes at ``offset``
    of the staged image of ``zxid``. Staged only: nothing counts until the
    :class:`SnapshotRecord` that completes it. ``offset`` 0 starts a new staging."""

    seq: int
    zxid: Zxid
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRecord:
    """Install the staged snapshot of ``zxid`` (``size`` bytes whose sha256 is
    ``digest``), replacing the whole log, atomically (a SNAP completed)."""

    seq: int
    zxid: Zxid
    size: int
    digest: bytes


Record = LogEntry | EpochRecord | TruncateRecord | SnapshotChunkRecord | SnapshotRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleChange:
    role: Role
    leader: int | None  # the leader's id when FOLLOWING/LEADING
    epoch: int  # the epoch being established / followed (0 while LOOKING)


@dataclass(slots=True)
class Output:
    """Everything the core produced since the last ``take_output()``."""

    send: list[Envelope] = field(default_factory=list)
    persist: list[Record] = field(default_factory=list)  # in seq order
    # Committed txns, durable locally, to apply in this order. When ``install``
    # is set, the application first replaces its state with the durable snapshot of
    # that zxid (which a SnapshotRecord just installed).
    install: Zxid | None = None
    deliver: list[tuple[Zxid, bytes]] = field(default_factory=list)
    roles: list[RoleChange] = field(default_factory=list)
    app: list[tuple[int, bytes]] = field(default_factory=list)  # (source, payload), in arrival order
    barriers: list[int] = field(default_factory=list)  # barrier ids confirmed by a quorum
    ready: bool | None = None  # True once established leader / synced follower: may serve clients; False when lost
    # Servers whose links the shell should close: followers this leader dropped. Closing
    # tells the follower at once (its link_down), as ZooKeeper's leader closing a
    # LearnerHandler's socket does, so it stops serving instead of serving on unheard.
    disconnect: list[int] = field(default_factory=list)


class DurableState(Protocol):
    """What the core reads of its own durable state at start-up and during sync.

    The shell implements it over the LMDB log and snapshot store, the simulator
    over its fake disk. The core never writes through it: writes are ``Output.persist``.
    """

    accepted_epoch: int
    current_epoch: int

    def last_zxid(self) -> Zxid: ...

    def entries_after(self, zxid: Zxid) -> list[tuple[Zxid, bytes]] | None:
        """Log entries with zxid > ``zxid`` in order, or None if some were purged."""
        ...

    def contains(self, zxid: Zxid) -> bool:
        """Whether ``zxid`` is in this server's history (log or covered by its snapshot)."""
        ...

    def applied_zxid(self) -> Zxid:
        """The zxid the application state loaded at start-up covers (its snapshot's).

        Log entries after it may or may not be committed — a follower's log can hold
        proposals a new leader truncates — so the application does not apply them at
        start-up: the core delivers them once synchronisation shows they are
        committed (docs/correctness.md, rule 4). The core's ``last_delivered_zxid`` starts here.
        """
        ...

    def snapshot(self) -> tuple[Zxid, Iterator[bytes]]:
        """The application state at the newest *delivered* zxid, serialised lazily in
        pieces of any size (for SNAP: the leader streams it in bounded chunks and never
        holds the whole image)."""
        ...
